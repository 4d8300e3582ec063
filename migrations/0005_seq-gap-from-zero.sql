-- seq_gap holds an aggregate's seqs to the contract's own words, contiguous from 0: seqs that
-- start past 0 are a gap too, not only bad_first_event's concern as 0002 had it.
DROP MATERIALIZED VIEW integrity_seq_gap;
--> statement-breakpoint
CREATE MATERIALIZED VIEW integrity_seq_gap AS
SELECT aggregate_id, min(seq) AS min_seq, max(seq) AS max_seq, count(*)::int AS events
  FROM events
 GROUP BY aggregate_id
HAVING min(seq) <> 0 OR max(seq) + 1 <> count(*);
--> statement-breakpoint
CREATE UNIQUE INDEX integrity_seq_gap_key ON integrity_seq_gap (aggregate_id);
