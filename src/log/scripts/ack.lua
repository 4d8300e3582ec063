-- Acknowledges replica-confirmed entries and drops them from the read indexes in one step, so a
-- merged read never sees an event both missing from the indexes and missing from the replica.
--
-- KEYS[1] stream  KEYS[2] earlier builds' event index  KEYS[3] applied queue
-- KEYS[4] applied LSN hash  KEYS[5] attempts
-- KEYS[4 + 2i] in-flight index of record i's aggregate type  KEYS[5 + 2i] its event index bucket
-- (record i is ARGV[1 + i])
-- ARGV[1] consumer group  ARGV[2 + ...] applied records "lsn entry_id event_id aggregate_id aggregate_type"
local acked = 0
-- Nearly always gone: checked once, not deleted from once per record.
local legacy_index = redis.call('EXISTS', KEYS[2]) == 1
for i = 2, #ARGV do
  local record = ARGV[i]
  if redis.call('LINDEX', KEYS[3], 0) ~= record then
    break
  end
  local entry_id, event_id, aggregate_id = string.match(record, '^%S+ (%S+) (%S+) (%S+)')
  local n = i - 1
  acked = acked + redis.call('XACK', KEYS[1], ARGV[1], entry_id)
  redis.call('HDEL', KEYS[5 + 2 * n], event_id)
  if legacy_index then
    -- An entry appended by an earlier build, after this process folded its index in.
    redis.call('HDEL', KEYS[2], event_id)
  end
  redis.call('HDEL', KEYS[4], entry_id)
  redis.call('HDEL', KEYS[5], entry_id)
  inflight_remove(KEYS[4 + 2 * n], aggregate_id, entry_id)
  redis.call('LPOP', KEYS[3])
end
return acked
