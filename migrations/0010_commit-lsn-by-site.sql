-- missing_commit_lsn names where each event came from: several sites share the main database, and
-- a link lost at one of them between a batch's commit and its LSN stamp shows in every site's
-- snapshot. Its rows carried only the event, the aggregate and the time, so an operator at another
-- site looked at a /health and a pending list that showed nothing. The view's query is
-- sql/integrity/missing_commit_lsn.sql.
DROP MATERIALIZED VIEW integrity_missing_commit_lsn;
--> statement-breakpoint
CREATE MATERIALIZED VIEW integrity_missing_commit_lsn AS
-- Every event applied over 5 minutes ago has its commit LSN.
SELECT event_id, aggregate_id, site, partition, stream_entry_id, applied_at
  FROM events
 WHERE commit_lsn IS NULL AND applied_at < now() - interval '5 minutes';
--> statement-breakpoint
CREATE UNIQUE INDEX integrity_missing_commit_lsn_key ON integrity_missing_commit_lsn (event_id);
