-- Moves an event aside after its last failed attempt: the dead-letter entry is written and the
-- original acknowledged in one step, so the event is never both lost and never in two places.
--
-- KEYS[1] stream  KEYS[2] dead letters  KEYS[3] event index  KEYS[4] attempts
-- KEYS[5] inflight list  KEYS[6] inflight aggregates set
-- ARGV[1] group  ARGV[2] entry id  ARGV[3] event id  ARGV[4] aggregate id  ARGV[5..] dead-letter fields
local dead_id = redis.call('XADD', KEYS[2], '*', unpack(ARGV, 5))
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('HDEL', KEYS[3], ARGV[3])
redis.call('HDEL', KEYS[4], ARGV[2])
redis.call('LREM', KEYS[5], 1, ARGV[2])
if redis.call('LLEN', KEYS[5]) == 0 then
  redis.call('SREM', KEYS[6], ARGV[4])
end
return dead_id
