-- missing_commit_lsn's cutoff is taken once, as the refresh's scan starts. clock_timestamp() in
-- the filter itself is evaluated again for each row, while the refresh reads the table as it was
-- when it began: on a table whose scan outlasts 5 minutes, an event whose batch had committed
-- just before the refresh and whose LSN stamp just after it was seen without its LSN, and its
-- applied_at fell behind the moving cutoff by the time the scan reached it (new rows come last).
-- A busy site would then never read 0. The view's query is sql/integrity/missing_commit_lsn.sql.
DROP MATERIALIZED VIEW integrity_missing_commit_lsn;
--> statement-breakpoint
CREATE MATERIALIZED VIEW integrity_missing_commit_lsn AS
-- Every event applied over 5 minutes before the refresh began has its commit LSN.
SELECT event_id, aggregate_id, site, partition, stream_entry_id, applied_at
  FROM events
 WHERE commit_lsn IS NULL AND applied_at < (SELECT clock_timestamp() - interval '5 minutes');
--> statement-breakpoint
CREATE UNIQUE INDEX integrity_missing_commit_lsn_key ON integrity_missing_commit_lsn (event_id);
