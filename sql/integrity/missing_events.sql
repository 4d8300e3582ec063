-- Every aggregate has at least one event.
SELECT a.id AS aggregate_id, a.type AS aggregate_type
  FROM aggregates a
 WHERE NOT EXISTS (SELECT 1 FROM events e WHERE e.aggregate_id = a.id)
