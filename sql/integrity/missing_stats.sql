-- Every aggregate has exactly one stats row.
SELECT a.id AS aggregate_id, a.type AS aggregate_type, count(s.aggregate_id)::int AS stats_rows
  FROM aggregates a
  LEFT JOIN aggregate_stats s ON s.aggregate_id = a.id
 GROUP BY a.id, a.type
HAVING count(s.aggregate_id) <> 1
