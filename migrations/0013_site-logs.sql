-- Two Redis logs run under one site name (a second site given the first's OUTPOST_SITE) shared
-- its partition leases, each applying only its own streams: the partitions each held of the
-- other's waited unapplied for good while every tool showed them held. A site name is now
-- claimed by one log, which keeps it while any of its projectors renews the claim.
-- Re-runnable: the migration tests run later migrations again.
CREATE TABLE IF NOT EXISTS "site_logs" (
	"site" text PRIMARY KEY NOT NULL,
	"log" text NOT NULL,
	"seen_at" timestamp with time zone NOT NULL,
	"refused_consumer" text,
	"refused_at" timestamp with time zone
);
