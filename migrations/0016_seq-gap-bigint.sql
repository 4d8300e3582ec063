-- seq_gap compares max(seq) + 1 with the count in bigint: in integer, one row whose seq is
-- 2147483647 (written past the API, or edited by hand) raised "integer out of range", and the
-- whole refresh failed with it, every count frozen, where the views exist to find such rows. The
-- view's query is sql/integrity/seq_gap.sql.
DROP MATERIALIZED VIEW integrity_seq_gap;
--> statement-breakpoint
CREATE MATERIALIZED VIEW integrity_seq_gap AS
-- The seqs an aggregate has are contiguous from 0: seqs that start past 0 are a gap too.
SELECT aggregate_id, min(seq) AS min_seq, max(seq) AS max_seq, count(*)::int AS events
  FROM events
 GROUP BY aggregate_id
HAVING min(seq) <> 0 OR max(seq)::bigint + 1 <> count(*);
--> statement-breakpoint
CREATE UNIQUE INDEX integrity_seq_gap_key ON integrity_seq_gap (aggregate_id);
