-- Derived aggregates have their upstream edges: file -> its executed obs unit, package -> each file.
SELECT f.id AS downstream_id, f.executed_obs_unit_id AS upstream_id, 'recorded_in' AS kind
  FROM raw_data_files f
 WHERE NOT EXISTS (SELECT 1 FROM aggregate_links l
                    WHERE l.downstream_id = f.id AND l.upstream_id = f.executed_obs_unit_id
                      AND l.kind = 'recorded_in')
UNION
SELECT p.id, file_id, 'packages'
  FROM raw_data_packages p, unnest(p.file_ids) AS file_id
 WHERE NOT EXISTS (SELECT 1 FROM aggregate_links l
                    WHERE l.downstream_id = p.id AND l.upstream_id = file_id AND l.kind = 'packages')
