-- Partition leases with fencing tokens, and projector membership for fair sharing of partitions.

CREATE TABLE "partition_leases" (
	"partition" integer PRIMARY KEY NOT NULL,
	"owner" text,
	"token" bigint NOT NULL,
	"expires_at" timestamp with time zone NOT NULL,
	"acquired_at" timestamp with time zone NOT NULL
);
--> statement-breakpoint
CREATE TABLE "projector_members" (
	"consumer" text PRIMARY KEY NOT NULL,
	"heartbeat_at" timestamp with time zone NOT NULL
);
