-- The seqs an aggregate has are contiguous (where they start is bad_first_event's concern).
SELECT aggregate_id, min(seq) AS min_seq, max(seq) AS max_seq, count(*)::int AS events
  FROM events
 GROUP BY aggregate_id
HAVING max(seq) - min(seq) + 1 <> count(*)
