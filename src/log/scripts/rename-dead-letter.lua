#!lua flags=allow-oom
-- Allowed past maxmemory, as the other start-up upkeep: it moves an index field, adding nothing.
-- Files a dead letter under the name this build gives it, if it is still under the name an
-- earlier build gave it (not retried or discarded since) and no letter holds the new name.
--
-- KEYS[1] the partition's dead index
-- ARGV[1] the earlier name  ARGV[2] this build's name  ARGV[3] the letter's dead-letter id
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[3] then
  return 0
end
if redis.call('HSETNX', KEYS[1], ARGV[2], ARGV[3]) == 0 then
  return 0
end
redis.call('HDEL', KEYS[1], ARGV[1])
return 1
