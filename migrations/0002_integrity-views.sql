-- Integrity invariants (DESIGN §5) as one materialized view per problem, each with the unique
-- index REFRESH MATERIALIZED VIEW CONCURRENTLY needs, so a refresh never blocks reads or scrapes.
-- The view bodies are the queries in sql/integrity/, kept identical by a unit test.
-- outpost_refresh_integrity() refreshes them all under one advisory lock and records the counts;
-- gauges read only that record. pg_cron runs it where the extension is preloaded and this is
-- cron.database_name; elsewhere the service's own scheduler does.
CREATE MATERIALIZED VIEW integrity_missing_head AS
-- Every aggregate has exactly one 'head' row: none, or more than one, is a problem.
SELECT a.id AS aggregate_id, a.type AS aggregate_type, count(h.aggregate_id)::int AS head_rows
  FROM aggregates a
  LEFT JOIN aggregate_heads h ON h.aggregate_id = a.id AND h.ref = 'head'
 GROUP BY a.id, a.type
HAVING count(h.aggregate_id) <> 1;
--> statement-breakpoint
CREATE UNIQUE INDEX integrity_missing_head_key ON integrity_missing_head (aggregate_id);
--> statement-breakpoint
CREATE MATERIALIZED VIEW integrity_missing_stats AS
-- Every aggregate has exactly one stats row.
SELECT a.id AS aggregate_id, a.type AS aggregate_type, count(s.aggregate_id)::int AS stats_rows
  FROM aggregates a
  LEFT JOIN aggregate_stats s ON s.aggregate_id = a.id
 GROUP BY a.id, a.type
HAVING count(s.aggregate_id) <> 1;
--> statement-breakpoint
CREATE UNIQUE INDEX integrity_missing_stats_key ON integrity_missing_stats (aggregate_id);
--> statement-breakpoint
CREATE MATERIALIZED VIEW integrity_missing_events AS
-- Every aggregate has at least one event.
SELECT a.id AS aggregate_id, a.type AS aggregate_type
  FROM aggregates a
 WHERE NOT EXISTS (SELECT 1 FROM events e WHERE e.aggregate_id = a.id);
--> statement-breakpoint
CREATE UNIQUE INDEX integrity_missing_events_key ON integrity_missing_events (aggregate_id);
--> statement-breakpoint
CREATE MATERIALIZED VIEW integrity_bad_first_event AS
-- Of every aggregate with events, seq 0 exists and is the event that creates the aggregate.
SELECT a.id AS aggregate_id, a.type AS aggregate_type, first.type AS first_event_type
  FROM aggregates a
  LEFT JOIN events first ON first.aggregate_id = a.id AND first.seq = 0
 WHERE EXISTS (SELECT 1 FROM events e WHERE e.aggregate_id = a.id)
   AND (first.event_id IS NULL OR first.type NOT IN (
         'ExecutedObsUnitStarted', 'RawDataFileRegistered',
         'RawDataPackageCreated', 'InstrumentConfigurationCreated'));
--> statement-breakpoint
CREATE UNIQUE INDEX integrity_bad_first_event_key ON integrity_bad_first_event (aggregate_id);
--> statement-breakpoint
CREATE MATERIALIZED VIEW integrity_seq_gap AS
-- The seqs an aggregate has are contiguous (where they start is bad_first_event's concern).
SELECT aggregate_id, min(seq) AS min_seq, max(seq) AS max_seq, count(*)::int AS events
  FROM events
 GROUP BY aggregate_id
HAVING max(seq) - min(seq) + 1 <> count(*);
--> statement-breakpoint
CREATE UNIQUE INDEX integrity_seq_gap_key ON integrity_seq_gap (aggregate_id);
--> statement-breakpoint
CREATE MATERIALIZED VIEW integrity_head_mismatch AS
-- The head points at the newest event and the stats count every event.
WITH per_aggregate AS (
  SELECT aggregate_id, max(seq) AS max_seq, count(*)::int AS events FROM events GROUP BY aggregate_id
)
SELECT p.aggregate_id, p.max_seq, p.events,
       (SELECT max(h.seq) FROM aggregate_heads h WHERE h.aggregate_id = p.aggregate_id AND h.ref = 'head') AS head_seq,
       (SELECT max(s.event_count) FROM aggregate_stats s WHERE s.aggregate_id = p.aggregate_id) AS stats_count
  FROM per_aggregate p
 WHERE EXISTS (SELECT 1 FROM aggregate_heads h
                WHERE h.aggregate_id = p.aggregate_id AND h.ref = 'head' AND h.seq <> p.max_seq)
    OR EXISTS (SELECT 1 FROM aggregate_stats s
                WHERE s.aggregate_id = p.aggregate_id AND s.event_count <> p.events);
--> statement-breakpoint
CREATE UNIQUE INDEX integrity_head_mismatch_key ON integrity_head_mismatch (aggregate_id);
--> statement-breakpoint
CREATE MATERIALIZED VIEW integrity_missing_link AS
-- Derived aggregates have their upstream edges: file -> its executed obs unit, package -> each file.
SELECT f.id AS downstream_id, f.executed_obs_unit_id AS upstream_id, 'recorded_in' AS kind
  FROM raw_data_files f
 WHERE NOT EXISTS (SELECT 1 FROM aggregate_links l
                    WHERE l.downstream_id = f.id AND l.upstream_id = f.executed_obs_unit_id
                      AND l.kind = 'recorded_in')
UNION ALL
SELECT p.id, file_id, 'packages'
  FROM raw_data_packages p, unnest(p.file_ids) AS file_id
 WHERE NOT EXISTS (SELECT 1 FROM aggregate_links l
                    WHERE l.downstream_id = p.id AND l.upstream_id = file_id AND l.kind = 'packages');
--> statement-breakpoint
CREATE UNIQUE INDEX integrity_missing_link_key ON integrity_missing_link (downstream_id, upstream_id, kind);
--> statement-breakpoint
CREATE MATERIALIZED VIEW integrity_orphan_projection AS
-- Every projection row has its aggregate (of the right type), and every aggregate its row.
WITH projections AS (
  SELECT id, 'executed_obs_unit' AS type FROM executed_obs_units
  UNION ALL SELECT id, 'raw_data_file' FROM raw_data_files
  UNION ALL SELECT id, 'raw_data_package' FROM raw_data_packages
  UNION ALL SELECT id, 'instrument_configuration' FROM instrument_configurations
)
SELECT p.id, p.type, 'projection_without_aggregate' AS side
  FROM projections p
 WHERE NOT EXISTS (SELECT 1 FROM aggregates a WHERE a.id = p.id AND a.type = p.type)
UNION ALL
SELECT a.id, a.type, 'aggregate_without_projection'
  FROM aggregates a
 WHERE NOT EXISTS (SELECT 1 FROM projections p WHERE p.id = a.id AND p.type = a.type);
--> statement-breakpoint
CREATE UNIQUE INDEX integrity_orphan_projection_key ON integrity_orphan_projection (id, type, side);
--> statement-breakpoint
CREATE MATERIALIZED VIEW integrity_missing_commit_lsn AS
-- Every event applied over 5 minutes ago has its commit LSN.
SELECT event_id, aggregate_id, applied_at
  FROM events
 WHERE commit_lsn IS NULL AND applied_at < now() - interval '5 minutes';
--> statement-breakpoint
CREATE UNIQUE INDEX integrity_missing_commit_lsn_key ON integrity_missing_commit_lsn (event_id);
--> statement-breakpoint
CREATE TABLE integrity_refreshes (
  id bigserial PRIMARY KEY,
  started_at timestamptz NOT NULL,
  finished_at timestamptz NOT NULL,
  duration_ms double precision NOT NULL,
  mode text NOT NULL,
  counts jsonb NOT NULL
);
--> statement-breakpoint
CREATE FUNCTION outpost_refresh_integrity(p_mode text DEFAULT 'manual', p_wait boolean DEFAULT true)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
  started timestamptz := clock_timestamp();
  found jsonb;
BEGIN
  -- One refresh at a time, whoever asks (pg_cron, a scheduler, an operator): concurrent refreshes
  -- of the same views would only queue behind each other and double the load.
  IF p_wait THEN
    PERFORM pg_advisory_xact_lock(7246002);
  ELSIF NOT pg_try_advisory_xact_lock(7246002) THEN
    RETURN NULL;
  END IF;
  REFRESH MATERIALIZED VIEW CONCURRENTLY integrity_missing_head;
  REFRESH MATERIALIZED VIEW CONCURRENTLY integrity_missing_stats;
  REFRESH MATERIALIZED VIEW CONCURRENTLY integrity_missing_events;
  REFRESH MATERIALIZED VIEW CONCURRENTLY integrity_bad_first_event;
  REFRESH MATERIALIZED VIEW CONCURRENTLY integrity_seq_gap;
  REFRESH MATERIALIZED VIEW CONCURRENTLY integrity_head_mismatch;
  REFRESH MATERIALIZED VIEW CONCURRENTLY integrity_missing_link;
  REFRESH MATERIALIZED VIEW CONCURRENTLY integrity_orphan_projection;
  REFRESH MATERIALIZED VIEW CONCURRENTLY integrity_missing_commit_lsn;
  found := jsonb_build_object(
    'missing_head', (SELECT count(*) FROM integrity_missing_head),
    'missing_stats', (SELECT count(*) FROM integrity_missing_stats),
    'missing_events', (SELECT count(*) FROM integrity_missing_events),
    'bad_first_event', (SELECT count(*) FROM integrity_bad_first_event),
    'seq_gap', (SELECT count(*) FROM integrity_seq_gap),
    'head_mismatch', (SELECT count(*) FROM integrity_head_mismatch),
    'missing_link', (SELECT count(*) FROM integrity_missing_link),
    'orphan_projection', (SELECT count(*) FROM integrity_orphan_projection),
    'missing_commit_lsn', (SELECT count(*) FROM integrity_missing_commit_lsn)
  );
  INSERT INTO integrity_refreshes (started_at, finished_at, duration_ms, mode, counts)
  VALUES (started, clock_timestamp(), extract(epoch FROM clock_timestamp() - started) * 1000, p_mode, found);
  RETURN found;
END
$$;
--> statement-breakpoint
-- pg_cron runs in this database where this is its cron.database_name. That setting and
-- shared_preload_libraries are a superuser's to read: current_setting() refused any other role,
-- and failed the whole migration on a server with pg_cron installed. A role that may not read
-- them goes by the extension a DBA created here instead. A role that may not create the
-- extension or schedule, or a server where pg_cron is not loaded, leaves the refresh to the
-- service's own scheduler.
DO $$
BEGIN
  IF EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'pg_cron')
     -- In parentheses: PL/pgSQL ends an IF's condition at the first THEN outside them.
     AND (CASE WHEN pg_has_role('pg_read_all_settings', 'USAGE')
               THEN coalesce(current_database() =
                             (SELECT setting FROM pg_settings WHERE name = 'cron.database_name'), false)
               ELSE EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_cron') END) THEN
    BEGIN
      CREATE EXTENSION IF NOT EXISTS pg_cron;
      -- The service re-schedules this job by name with OUTPOST_INTEGRITY_SCHEDULE at start-up.
      PERFORM cron.schedule('outpost-integrity', '*/30 * * * *',
                            $job$SELECT outpost_refresh_integrity('pg_cron', false)$job$);
    EXCEPTION WHEN OTHERS THEN
      RAISE WARNING 'pg_cron not set up (%): the service refreshes the integrity views itself', SQLERRM;
    END;
  END IF;
END
$$;
