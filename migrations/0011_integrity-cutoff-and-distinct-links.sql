-- missing_commit_lsn's cutoff is the time of the refresh, not the start of its transaction: a
-- refresh that waited for the lock behind another (20 minutes behind a long scheduled one, say)
-- read now() from before its wait, and left out events applied in the minutes between, so its
-- snapshot said 0 while they still lacked their LSN. missing_link names each missing edge once: a
-- package row naming a file twice (written past the API, which refuses that) gave two equal rows,
-- which REFRESH ... CONCURRENTLY refuses, and with it the whole refresh, snapshot and all, until
-- the stale alert hours later. The views' queries are sql/integrity/missing_commit_lsn.sql and
-- sql/integrity/missing_link.sql.
DROP MATERIALIZED VIEW integrity_missing_commit_lsn;
--> statement-breakpoint
CREATE MATERIALIZED VIEW integrity_missing_commit_lsn AS
-- Every event applied over 5 minutes ago has its commit LSN.
SELECT event_id, aggregate_id, site, partition, stream_entry_id, applied_at
  FROM events
 WHERE commit_lsn IS NULL AND applied_at < clock_timestamp() - interval '5 minutes';
--> statement-breakpoint
CREATE UNIQUE INDEX integrity_missing_commit_lsn_key ON integrity_missing_commit_lsn (event_id);
--> statement-breakpoint
DROP MATERIALIZED VIEW integrity_missing_link;
--> statement-breakpoint
CREATE MATERIALIZED VIEW integrity_missing_link AS
-- Derived aggregates have their upstream edges: file -> its executed obs unit, package -> each file.
SELECT f.id AS downstream_id, f.executed_obs_unit_id AS upstream_id, 'recorded_in' AS kind
  FROM raw_data_files f
 WHERE NOT EXISTS (SELECT 1 FROM aggregate_links l
                    WHERE l.downstream_id = f.id AND l.upstream_id = f.executed_obs_unit_id
                      AND l.kind = 'recorded_in')
UNION
SELECT p.id, file_id, 'packages'
  FROM raw_data_packages p, unnest(p.file_ids) AS file_id
 WHERE NOT EXISTS (SELECT 1 FROM aggregate_links l
                    WHERE l.downstream_id = p.id AND l.upstream_id = file_id AND l.kind = 'packages');
--> statement-breakpoint
CREATE UNIQUE INDEX integrity_missing_link_key ON integrity_missing_link (downstream_id, upstream_id, kind);
