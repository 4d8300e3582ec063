-- Every event applied over 5 minutes ago has its commit LSN.
SELECT event_id, aggregate_id, site, partition, stream_entry_id, applied_at
  FROM events
 WHERE commit_lsn IS NULL AND applied_at < clock_timestamp() - interval '5 minutes'
