-- How many entries of a partition's stream the projector group has yet to be delivered.
--
-- Redis keeps that as the group's lag, from a counter of entries read that a restart can leave
-- wrong (Redis 7.0): the append-only file replays the deliveries as XCLAIMs, which do not count,
-- so after a restart the counter is unknown (no lag at all: read as 0, a backlog would look
-- empty) or, where the file was rewritten since, stale (a lag that never goes back to 0). So:
-- a group that has been delivered everything has nothing undelivered whatever the counter says,
-- and its counter is set right; an unknown counter is found by counting, up to ARGV[2] entries,
-- and set right from that count. Past that many, it is set to the most that can wait (the
-- stream's entries less those pending, which are all delivered), so that the count is not made
-- again on every look. A counter behind the stream's end that is stale, or set so, cannot be told
-- from a right one, and overstates until the group catches up: more, never less, than waits.
--
-- KEYS[1] the stream  ARGV[1] the projector group  ARGV[2] the most entries to count
-- Returns {the number undelivered, the group's last delivered id}: {0, '0-0'} without the stream
-- or the group, which hold nothing to deliver.
local group = group_info(KEYS[1], ARGV[1])
if not group then
  return { 0, '0-0' }
end
local stream = {}
local info = redis.call('XINFO', 'STREAM', KEYS[1])
for i = 1, #info, 2 do
  stream[info[i]] = info[i + 1]
end
local delivered = group['last-delivered-id']
-- Set right with a plain call that may fail: a Redis refusing writes (a failed save, the memory
-- limit) still answers the count.
local function correct_counter(entries_read)
  if group['entries-read'] ~= entries_read then
    redis.pcall('XGROUP', 'SETID', KEYS[1], ARGV[1], delivered, 'ENTRIESREAD', entries_read)
  end
end
if not below(delivered, stream['last-generated-id']) then
  correct_counter(stream['entries-added'])
  return { 0, delivered }
end
-- Never more than the stream holds less what is pending (all delivered), whatever the counter.
local most = stream['length'] - group['pending']
if type(group['lag']) == 'number' then
  return { math.min(group['lag'], most), delivered }
end
local limit = tonumber(ARGV[2])
local count = 0
local from = '(' .. delivered
while count <= limit do
  local entries = redis.call('XRANGE', KEYS[1], from, '+', 'COUNT', 1000)
  if #entries == 0 then
    break
  end
  count = count + #entries
  from = '(' .. entries[#entries][1]
end
if count > limit then
  count = most
end
correct_counter(stream['entries-added'] - count)
return { count, delivered }
