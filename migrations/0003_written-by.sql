-- Which API token wrote each event (issue 8): nullable, because events written while the API
-- was open, and every event applied before this migration, have no writer. Adding a nullable
-- column without a default is a catalog-only change: no rewrite of the events table.

ALTER TABLE "events" ADD COLUMN "written_by" text;
