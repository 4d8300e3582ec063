#!lua flags=allow-oom
-- Allowed past maxmemory, as it drains the backlog or frees room: see record-applied.lua.
-- Acknowledges replica-confirmed entries and drops them from the read indexes in one step, so a
-- merged read never sees an event both missing from the indexes and missing from the replica.
-- What applies to every record (XACK, the applied LSNs, the attempts, the applied queue) is one
-- command for all of them: during a drain this script was three quarters of Redis's CPU when each
-- record paid eight calls of its own, each write also copied to the AOF.
--
-- KEYS[1] stream  KEYS[2] earlier builds' event index  KEYS[3] applied queue
-- KEYS[4] applied LSN hash  KEYS[5] attempts  KEYS[6] acknowledged-through mark
-- KEYS[3 + 4i] in-flight index bucket of record i's aggregate  KEYS[4 + 4i] its event index bucket
-- KEYS[5 + 4i] earlier builds' in-flight index of its type  KEYS[6 + 4i] its type's in-use buckets
-- (record i is ARGV[1 + i])
-- ARGV[1] consumer group  ARGV[2 + ...] applied records "lsn entry_id event_id aggregate_id aggregate_type"
-- Acknowledges the records that head the applied queue, up to the first that does not.
local n = applied_heading(KEYS[3], 2)
if n == 0 then
  return 0
end
-- Every record is read before anything is written, so a malformed one changes nothing.
local entry_ids, event_ids, aggregate_ids = {}, {}, {}
local through = ''
for i = 1, n do
  local lsn, entry_id, event_id, aggregate_id = string.match(ARGV[i + 1], '^(%S+) (%S+) (%S+) (%S+)')
  if not aggregate_id then
    return redis.error_reply('malformed applied record: ' .. ARGV[i + 1])
  end
  entry_ids[i], event_ids[i], aggregate_ids[i] = entry_id, event_id, aggregate_id
  -- As sixteen hex digits, so that LSNs compare as strings.
  local hi, lo = string.match(lsn, '^(%x+)/(%x+)$')
  if hi and #hi <= 8 and #lo <= 8 then
    local padded = string.format('%08X%08X', tonumber(hi, 16), tonumber(lo, 16))
    if padded > through then
      through = padded
    end
  end
end
for i = 1, n do
  redis.call('HDEL', KEYS[4 + 4 * i], event_ids[i])
  inflight_remove(KEYS[3 + 4 * i], KEYS[6 + 4 * i], aggregate_ids[i], entry_ids[i])
  -- Nearly always absent: an entry an earlier build appended after this process folded its
  -- in-flight index in.
  inflight_remove(KEYS[5 + 4 * i], nil, aggregate_ids[i], entry_ids[i])
end
-- What a replica must have replayed to show every event acknowledged here: a replica that comes
-- back at an earlier point is not read from until it passes it (src/read/acknowledged-replay.ts).
local before = redis.call('GET', KEYS[6])
if through ~= '' and (not before or through > before) then
  redis.call('SET', KEYS[6], through)
end
-- Nearly always gone: an entry appended by an earlier build, after this process folded its
-- index in, is still listed there.
if redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('HDEL', KEYS[2], unpack(event_ids))
end
redis.call('XACK', KEYS[1], ARGV[1], unpack(entry_ids))
redis.call('HDEL', KEYS[4], unpack(entry_ids))
if redis.call('EXISTS', KEYS[5]) == 1 then
  redis.call('HDEL', KEYS[5], unpack(entry_ids))
end
redis.call('LTRIM', KEYS[3], n, -1)
-- How many of the offered records this call settled: the caller announces only those.
return n
