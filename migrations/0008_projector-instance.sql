-- Which process beat last under each consumer name: two live processes sharing one name (a
-- scaled-out service with a fixed OUTPOST_CONSUMER) overwrite each other's, and each notices.
-- IF NOT EXISTS: the migration tests run later migrations again.
ALTER TABLE "projector_members" ADD COLUMN IF NOT EXISTS "instance" uuid;
