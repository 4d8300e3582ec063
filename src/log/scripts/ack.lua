-- Acknowledges replica-confirmed entries and drops them from the read indexes in one step, so a
-- merged read never sees an event both missing from the indexes and missing from the replica.
--
-- KEYS[1] stream  KEYS[2] event index  KEYS[3] applied queue  KEYS[4] applied LSN hash
-- KEYS[5] attempts  KEYS[5 + 2i - 1] inflight list of record i  KEYS[5 + 2i] inflight aggregates set
-- ARGV[1] consumer group  ARGV[2 + ...] applied records "lsn entry_id event_id aggregate_id aggregate_type"
local acked = 0
for i = 2, #ARGV do
  local record = ARGV[i]
  if redis.call('LINDEX', KEYS[3], 0) ~= record then
    break
  end
  local entry_id, event_id, aggregate_id = string.match(record, '^%S+ (%S+) (%S+) (%S+)')
  acked = acked + redis.call('XACK', KEYS[1], ARGV[1], entry_id)
  redis.call('HDEL', KEYS[2], event_id)
  redis.call('HDEL', KEYS[4], entry_id)
  redis.call('HDEL', KEYS[5], entry_id)
  local inflight = 4 + 2 * (i - 1)
  redis.call('LREM', KEYS[inflight], 1, entry_id)
  if redis.call('LLEN', KEYS[inflight]) == 0 then
    redis.call('SREM', KEYS[inflight + 1], aggregate_id)
  end
  redis.call('LPOP', KEYS[3])
end
return acked
