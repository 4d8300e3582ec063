-- Every projection row has its aggregate (of the right type), and every aggregate its row.
WITH projections AS (
  SELECT id, 'executed_obs_unit' AS type FROM executed_obs_units
  UNION ALL SELECT id, 'raw_data_file' FROM raw_data_files
  UNION ALL SELECT id, 'raw_data_package' FROM raw_data_packages
  UNION ALL SELECT id, 'instrument_configuration' FROM instrument_configurations
)
SELECT p.id, p.type, 'projection_without_aggregate' AS side
  FROM projections p
 WHERE NOT EXISTS (SELECT 1 FROM aggregates a WHERE a.id = p.id AND a.type = p.type)
UNION ALL
SELECT a.id, a.type, 'aggregate_without_projection'
  FROM aggregates a
 WHERE NOT EXISTS (SELECT 1 FROM projections p WHERE p.id = a.id AND p.type = a.type)
