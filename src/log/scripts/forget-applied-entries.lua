#!lua flags=allow-oom
-- Allowed past maxmemory, as it drains the backlog or frees room: see record-applied.lua.
-- Forgets applied records wherever they stand in the queue, by entry id: a projector re-reading its
-- own pending entries found their events missing from the main database (restored from an earlier
-- backup, or failed over to a standby that never received them), or their records at LSNs it has
-- not written, and records them anew at their new commit LSN. The rest of the queue keeps its
-- order.
--
-- KEYS[1] applied queue  KEYS[2] applied LSN hash
-- ARGV[1 ...] entry ids
--
-- Lost commits are the last ones, so their records sit at the queue's tail, behind records a
-- lagging replica may have left by the million: the queue is searched from the tail, a page at a
-- time, until every entry is found, and only the part from the first one on is rewritten.
local PAGE = 1000
-- Only entries still recorded (the queue and the hash are written and cleared together): one the
-- acker settled meanwhile would otherwise send the search through the whole queue.
local forget, wanted = {}, 0
for i = 1, #ARGV do
  if not forget[ARGV[i]] and redis.call('HEXISTS', KEYS[2], ARGV[i]) == 1 then
    forget[ARGV[i]] = true
    wanted = wanted + 1
  end
end
if wanted == 0 then
  return 0
end
local entry_of = function(record)
  return string.match(record, '^%S+ (%S+)')
end

local from, seen, found = redis.call('LLEN', KEYS[1]), {}, 0
while found < wanted and from > 0 do
  local first = math.max(0, from - PAGE)
  for _, record in ipairs(redis.call('LRANGE', KEYS[1], first, from - 1)) do
    local entry_id = entry_of(record)
    if forget[entry_id] and not seen[entry_id] then
      seen[entry_id] = true
      found = found + 1
    end
  end
  from = first
end

for first = 1, #ARGV, PAGE do
  redis.call('HDEL', KEYS[2], unpack(ARGV, first, math.min(first + PAGE - 1, #ARGV)))
end
if found == 0 then
  return 0
end
-- `from` is at or before the first record to forget: keep the queue up to it, rewrite the rest.
local kept, removed = {}, 0
for _, record in ipairs(redis.call('LRANGE', KEYS[1], from, -1)) do
  if forget[entry_of(record)] then
    removed = removed + 1
  else
    kept[#kept + 1] = record
  end
end
if from == 0 then
  redis.call('DEL', KEYS[1])
else
  redis.call('LTRIM', KEYS[1], 0, from - 1)
end
for first = 1, #kept, PAGE do
  redis.call('RPUSH', KEYS[1], unpack(kept, first, math.min(first + PAGE - 1, #kept)))
end
return removed
