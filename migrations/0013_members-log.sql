-- Two logs (two sites' Redis, or two namespaces) run under one site name would share its
-- partition leases, each applying only its own streams: the partitions each held were the
-- other's to wait for, for good. The roster now says which log each process applies, and since
-- when, so the log that came first keeps the site and the other applies nothing, saying why.
-- Rows of earlier builds have neither and count as the site's own.
-- Re-runnable: the migration tests run later migrations again.
ALTER TABLE "projector_members" ADD COLUMN IF NOT EXISTS "log" text;--> statement-breakpoint
ALTER TABLE "projector_members" ADD COLUMN IF NOT EXISTS "joined_at" timestamp with time zone;
