-- The head names the newest event, by seq and id, and the stats count every event and end at the
-- newest one's time.
WITH per_aggregate AS (
  SELECT aggregate_id, max(seq) AS max_seq, count(*)::int AS events FROM events GROUP BY aggregate_id
), newest AS (
  SELECT p.aggregate_id, p.max_seq, p.events, e.event_id, e.occurred_at
    FROM per_aggregate p JOIN events e ON e.aggregate_id = p.aggregate_id AND e.seq = p.max_seq
)
SELECT n.aggregate_id, n.max_seq, n.events,
       (SELECT max(h.seq) FROM aggregate_heads h WHERE h.aggregate_id = n.aggregate_id AND h.ref = 'head') AS head_seq,
       (SELECT max(s.event_count) FROM aggregate_stats s WHERE s.aggregate_id = n.aggregate_id) AS stats_count,
       n.event_id AS newest_event_id,
       (SELECT min(h.event_id::text) FROM aggregate_heads h WHERE h.aggregate_id = n.aggregate_id AND h.ref = 'head') AS head_event_id,
       n.occurred_at AS newest_at,
       (SELECT min(s.last_event_at) FROM aggregate_stats s WHERE s.aggregate_id = n.aggregate_id) AS stats_last_event_at
  FROM newest n
 WHERE EXISTS (SELECT 1 FROM aggregate_heads h
                WHERE h.aggregate_id = n.aggregate_id AND h.ref = 'head'
                  AND (h.seq <> n.max_seq OR h.event_id IS DISTINCT FROM n.event_id))
    OR EXISTS (SELECT 1 FROM aggregate_stats s
                WHERE s.aggregate_id = n.aggregate_id
                  AND (s.event_count <> n.events OR s.last_event_at IS DISTINCT FROM n.occurred_at))
