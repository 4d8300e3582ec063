-- The seqs an aggregate has are contiguous from 0: seqs that start past 0 are a gap too.
SELECT aggregate_id, min(seq) AS min_seq, max(seq) AS max_seq, count(*)::int AS events
  FROM events
 GROUP BY aggregate_id
HAVING min(seq) <> 0 OR max(seq)::bigint + 1 <> count(*)
