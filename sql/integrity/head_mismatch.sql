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
                WHERE s.aggregate_id = p.aggregate_id AND s.event_count <> p.events)
