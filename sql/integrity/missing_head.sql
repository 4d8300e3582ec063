-- Every aggregate has exactly one 'head' row: none, or more than one, is a problem.
SELECT a.id AS aggregate_id, a.type AS aggregate_type, count(h.aggregate_id)::int AS head_rows
  FROM aggregates a
  LEFT JOIN aggregate_heads h ON h.aggregate_id = a.id AND h.ref = 'head'
 GROUP BY a.id, a.type
HAVING count(h.aggregate_id) <> 1
