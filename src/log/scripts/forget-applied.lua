#!lua flags=allow-oom
-- Allowed past maxmemory, as it drains the backlog or frees room: see record-applied.lua.
-- Forgets that records heading the applied queue were applied, so the projector applies their
-- entries again: the replica passed their commit LSNs yet does not have their events, which the
-- main database lost (restored from an earlier backup, or a failover to a standby that had not
-- received them). The entries stay pending, in the read indexes, and in their consumer's pending
-- list, from where the projector's next re-read of its own pending entries takes them.
--
-- KEYS[1] applied queue  KEYS[2] applied LSN hash
-- ARGV[1 ...] applied records "lsn entry_id event_id aggregate_id aggregate_type"
-- Forgets the records that head the queue, up to the first that does not (another acker may have
-- settled them since they were read).
local n = applied_heading(KEYS[1], 1)
if n == 0 then
  return 0
end
local entry_ids = {}
for i = 1, n do
  local entry_id = string.match(ARGV[i], '^%S+ (%S+) ')
  if not entry_id then
    return redis.error_reply('malformed applied record: ' .. ARGV[i])
  end
  entry_ids[i] = entry_id
end
redis.call('HDEL', KEYS[2], unpack(entry_ids))
redis.call('LTRIM', KEYS[1], n, -1)
return n
