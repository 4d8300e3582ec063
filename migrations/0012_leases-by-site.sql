-- Sites sharing one main database each lease their own partitions 0..n-1. Keyed by the partition
-- alone, the leases let one site's projectors hold part of another's partitions, whose streams
-- nothing then read: their events waited, unapplied, for good. Rows of earlier builds keep site
-- '': a build of this one does not take a partition whose '' lease is still live (acquireLeases).
-- Re-runnable: the migration tests run later migrations again.
ALTER TABLE "partition_leases" ADD COLUMN IF NOT EXISTS "site" text DEFAULT '' NOT NULL;--> statement-breakpoint
ALTER TABLE "projector_members" ADD COLUMN IF NOT EXISTS "site" text DEFAULT '' NOT NULL;--> statement-breakpoint
ALTER TABLE "partition_leases" DROP CONSTRAINT IF EXISTS "partition_leases_pkey";--> statement-breakpoint
ALTER TABLE "partition_leases" DROP CONSTRAINT IF EXISTS "partition_leases_site_partition_pk";--> statement-breakpoint
ALTER TABLE "partition_leases" ADD CONSTRAINT "partition_leases_site_partition_pk" PRIMARY KEY("site","partition");--> statement-breakpoint
ALTER TABLE "projector_members" DROP CONSTRAINT IF EXISTS "projector_members_pkey";--> statement-breakpoint
ALTER TABLE "projector_members" DROP CONSTRAINT IF EXISTS "projector_members_site_consumer_pk";--> statement-breakpoint
ALTER TABLE "projector_members" ADD CONSTRAINT "projector_members_site_consumer_pk" PRIMARY KEY("site","consumer");
