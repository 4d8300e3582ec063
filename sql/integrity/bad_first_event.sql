-- Of every aggregate with events, seq 0 exists and is the event that creates the aggregate.
SELECT a.id AS aggregate_id, a.type AS aggregate_type, first.type AS first_event_type
  FROM aggregates a
  LEFT JOIN events first ON first.aggregate_id = a.id AND first.seq = 0
 WHERE EXISTS (SELECT 1 FROM events e WHERE e.aggregate_id = a.id)
   AND (first.event_id IS NULL OR first.type NOT IN (
         'ExecutedObsUnitStarted', 'RawDataFileRegistered',
         'RawDataPackageCreated', 'InstrumentConfigurationCreated'))
