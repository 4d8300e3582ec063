-- A site name stayed with the log that claimed it however long its projectors stopped, so a site
-- whose Redis was replaced by an empty one (a new log id) applied nothing until an operator freed
-- the name. A log refused a name is now recorded when first seen: one first seen after the
-- holder's projectors stopped may take the name; one seen while they ran (a copy) never does.
-- Re-runnable: the migration tests run later migrations again.
CREATE TABLE IF NOT EXISTS "site_log_sightings" (
	"site" text NOT NULL,
	"log" text NOT NULL,
	"first_seen_at" timestamp with time zone NOT NULL,
	CONSTRAINT "site_log_sightings_site_log_pk" PRIMARY KEY("site","log")
);
