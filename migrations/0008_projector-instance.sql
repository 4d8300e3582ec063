-- Which process beat last under each consumer name: two live processes sharing one name (a
-- scaled-out service with a fixed OUTPOST_CONSUMER) overwrite each other's, and each notices.
-- IF NOT EXISTS: the migration tests run later migrations again, and so does every database that
-- had it under its first journal date (before 0006's and 0007's): drizzle applies only what is
-- dated after the last migration it recorded, so it was skipped where 0007 came first.
ALTER TABLE "projector_members" ADD COLUMN IF NOT EXISTS "instance" uuid;
