-- Of every aggregate with events, seq 0 exists and is the event that creates an aggregate of its
-- type (an aggregate of a type this build does not know has none).
SELECT a.id AS aggregate_id, a.type AS aggregate_type, first.type AS first_event_type
  FROM aggregates a
  LEFT JOIN events first ON first.aggregate_id = a.id AND first.seq = 0
 WHERE EXISTS (SELECT 1 FROM events e WHERE e.aggregate_id = a.id)
   AND (first.event_id IS NULL OR first.type IS DISTINCT FROM (CASE a.type
         WHEN 'executed_obs_unit' THEN 'ExecutedObsUnitStarted'
         WHEN 'raw_data_file' THEN 'RawDataFileRegistered'
         WHEN 'raw_data_package' THEN 'RawDataPackageCreated'
         WHEN 'instrument_configuration' THEN 'InstrumentConfigurationCreated'
       END))
