-- Discards a dead-lettered event for good, leaving an audit record of who said why.
--
-- A unit's status for the append guard was set when the event was accepted: a discarded finish
-- would leave it `success` for ever (every later finish or patch 409), a discarded start
-- `running` (files accepted for a unit that never was). It is dropped, and the next write seeds
-- it again from the replica and the unit's events in flight.
--
-- KEYS[1] dead letters  KEYS[2] dead index  KEYS[3] discarded (audit stream)
-- KEYS[4] blocked aggregates  KEYS[5] the unit's status, with an executed obs unit's last letter
-- ARGV[1] dead-letter id  ARGV[2] its id in the dead index  ARGV[3] an aggregate to unblock, or ''
-- ARGV[4] with an aggregate to unblock, the partition's newest letter when its caller found this
-- one the aggregate's last ('0-0': none); answers 'letters_changed', changing nothing, when that
-- is no longer so (a later event may have followed it into the dead letters meanwhile)
-- ARGV[5..] audit fields
local found = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if not found[1] then
  return false
end
if ARGV[3] ~= '' and ARGV[4] ~= '' then
  local newest = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)[1]
  if (newest and newest[1] or '0-0') ~= ARGV[4] then
    return 'letters_changed'
  end
end
local audit = redis.call('XADD', KEYS[3], '*', unpack(ARGV, 5))
redis.call('XDEL', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[2])
if ARGV[3] ~= '' then
  redis.call('SREM', KEYS[4], ARGV[3])
end
if KEYS[5] then
  redis.call('DEL', KEYS[5])
end
return audit
