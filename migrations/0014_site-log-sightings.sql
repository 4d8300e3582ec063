-- A site name stayed with the log that claimed it however long its projectors stopped, so a site
-- whose Redis was replaced by an empty one (a new log id) applied nothing until an operator freed
-- the name. A log refused a name is now recorded when first seen, and a holder's last projector
-- stopping gracefully releases the name: a log first seen after the holder last renewed the claim
-- may take it once the holder released it or went silent; one seen while it ran (a copy) never.
-- Re-runnable: the migration tests run later migrations again.
CREATE TABLE IF NOT EXISTS "site_log_sightings" (
	"site" text NOT NULL,
	"log" text NOT NULL,
	"first_seen_at" timestamp with time zone NOT NULL,
	CONSTRAINT "site_log_sightings_site_log_pk" PRIMARY KEY("site","log")
);
--> statement-breakpoint
ALTER TABLE "site_logs" ADD COLUMN IF NOT EXISTS "released_at" timestamp with time zone;--> statement-breakpoint
-- The holder's lease TTL: a claimer with a shorter one would take a silence of a few of its own
-- TTLs for a stop, between two rounds of a holder that renews every third of a longer one.
ALTER TABLE "site_logs" ADD COLUMN IF NOT EXISTS "ttl_ms" integer;--> statement-breakpoint
-- A log refused under 0013 was not recorded, so which one is unknown: at such a site no log takes
-- the name by itself (as under 0013) until an operator frees it. Only where the column is new: run
-- again, it would bar the sites whose refusals since were recorded.
DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM information_schema.columns
                  WHERE table_name = 'site_logs' AND column_name = 'takeover_barred') THEN
    ALTER TABLE "site_logs" ADD COLUMN "takeover_barred" boolean DEFAULT false NOT NULL;
    UPDATE "site_logs" SET "takeover_barred" = true WHERE "refused_at" IS NOT NULL;
  END IF;
END $$;
