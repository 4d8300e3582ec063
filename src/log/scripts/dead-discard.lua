-- Discards a dead-lettered event for good, leaving an audit record of who said why.
--
-- KEYS[1] dead letters  KEYS[2] dead index  KEYS[3] discarded (audit stream)
-- ARGV[1] dead-letter id  ARGV[2] event id  ARGV[3..] audit fields
local found = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if not found[1] then
  return false
end
local audit = redis.call('XADD', KEYS[3], '*', unpack(ARGV, 3))
redis.call('XDEL', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[2])
return audit
