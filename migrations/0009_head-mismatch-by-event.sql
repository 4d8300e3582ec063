-- head_mismatch compares what rebuild-projections --verify compares: 0002 checked only the head's
-- seq and the stats' count, so a head at the newest seq naming another event, or stats ending at
-- another time (a restore, a hand edit), passed the view while --verify listed them. The view's
-- query is sql/integrity/head_mismatch.sql.
DROP MATERIALIZED VIEW integrity_head_mismatch;
--> statement-breakpoint
CREATE MATERIALIZED VIEW integrity_head_mismatch AS
WITH per_aggregate AS (
  SELECT aggregate_id, max(seq) AS max_seq, count(*)::int AS events FROM events GROUP BY aggregate_id
)
SELECT p.aggregate_id, p.max_seq, p.events,
       (SELECT max(h.seq) FROM aggregate_heads h WHERE h.aggregate_id = p.aggregate_id AND h.ref = 'head') AS head_seq,
       (SELECT max(s.event_count) FROM aggregate_stats s WHERE s.aggregate_id = p.aggregate_id) AS stats_count
  FROM per_aggregate p
 WHERE EXISTS (SELECT 1 FROM aggregate_heads h
                WHERE h.aggregate_id = p.aggregate_id AND h.ref = 'head'
                  AND NOT EXISTS (SELECT 1 FROM events e
                                   WHERE e.aggregate_id = p.aggregate_id AND e.seq = p.max_seq
                                     AND e.seq = h.seq AND e.event_id = h.event_id))
    OR EXISTS (SELECT 1 FROM aggregate_stats s
                WHERE s.aggregate_id = p.aggregate_id
                  AND (s.event_count <> p.events
                       OR NOT EXISTS (SELECT 1 FROM events e
                                       WHERE e.aggregate_id = p.aggregate_id AND e.seq = p.max_seq
                                         AND e.occurred_at = s.last_event_at)));
--> statement-breakpoint
CREATE UNIQUE INDEX integrity_head_mismatch_key ON integrity_head_mismatch (aggregate_id);
