-- Every event applied over 5 minutes before the refresh began has its commit LSN. The cutoff is a
-- subquery so it is taken once: in the filter itself, clock_timestamp() moves on as the scan does.
SELECT event_id, aggregate_id, site, partition, stream_entry_id, applied_at
  FROM events
 WHERE commit_lsn IS NULL AND applied_at < (SELECT clock_timestamp() - interval '5 minutes')
