#!lua flags=allow-oom
-- Allowed past maxmemory, as the other start-up upkeep: it moves an index field, adding nothing.
-- Files a dead letter under the name this build gives it, if it is still under the name an
-- earlier build gave it and still a letter (not retried or discarded since it was read), and no
-- letter holds the new name.
--
-- KEYS[1] the partition's dead index  KEYS[2] its dead letters
-- ARGV[1] the earlier name  ARGV[2] this build's name  ARGV[3] the letter's dead-letter id
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[3] then
  return 0
end
if #redis.call('XRANGE', KEYS[2], ARGV[3], ARGV[3]) == 0 then
  return 0
end
if redis.call('HSETNX', KEYS[1], ARGV[2], ARGV[3]) == 0 then
  return 0
end
redis.call('HDEL', KEYS[1], ARGV[1])
return 1
