-- Puts a dead-lettered event back at the end of its partition stream, same event_id (so it still
-- applies at most once), and lifts the block on its aggregate. All or nothing. The event is
-- announced `accepted` again on the live feed (lib/live.lua).
--
-- KEYS[1] stream  KEYS[2] dead letters  KEYS[3] the event's event index bucket  KEYS[4] dead index
-- KEYS[5] blocked aggregates  KEYS[6] in-flight index bucket  KEYS[7] its type's in-use in-flight buckets
-- KEYS[8] live stream  KEYS[9] live listeners
-- ARGV[1] dead-letter id  ARGV[2] event id  ARGV[3] aggregate id  ARGV[4] aggregate type
-- ARGV[5] event type  ARGV[6] live stream max length  ARGV[7] now, ISO-8601  ARGV[8] partition
-- ARGV[9..] the event's fields
local found = redis.call('XRANGE', KEYS[2], ARGV[1], ARGV[1])
if not found[1] then
  return false
end
local id = redis.call('XADD', KEYS[1], '*', unpack(ARGV, 9))
redis.call('HSET', KEYS[3], ARGV[2], id)
inflight_add(KEYS[6], KEYS[7], ARGV[3], id)
redis.call('XDEL', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[2])
redis.call('SREM', KEYS[5], ARGV[3])
live_publish(live_context(KEYS[8], KEYS[9], ARGV[6], ARGV[7], ARGV[8]), 'accepted', ARGV[2],
  ARGV[3], ARGV[4], ARGV[5], id)
return id
