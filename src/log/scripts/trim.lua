#!lua flags=allow-oom
-- Trims a partition's acknowledged history below an edge, and marks how far it went, in one step.
-- Allowed past maxmemory: trimming frees memory.
--
-- XTRIM itself ignores the pending list (Redis 7), so the floor here is the only guard: never at
-- or past the oldest entry some group has pending, nor past what a group has yet to be delivered.
-- Read in one script, the groups cannot change under the floor: read by separate calls, a group
-- re-created from 0-0 between them (NOGROUP after its loss) left the floor at the edge alone and
-- trimmed what the new group was about to deliver. Without the projector group nothing is known
-- delivered, so nothing is trimmed.
--
-- The mark moves forward only: two trims of one partition (the retention's and the memory
-- pressure's, or two owners during a lease handover) may run in either order, and a mark gone
-- back would tell a replay that entries in its range are still there.
--
-- KEYS[1] the stream  KEYS[2] the trimmed-through mark
-- ARGV[1] the projector group  ARGV[2] the edge: an entry id, nothing at or after it goes
-- Returns the number of entries removed.
local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', KEYS[1])
if not ok then
  return 0
end
local floor = ARGV[2]
local has_projector_group = false
for _, group in ipairs(groups) do
  local fields = {}
  for i = 1, #group, 2 do
    fields[group[i]] = group[i + 1]
  end
  has_projector_group = has_projector_group or fields['name'] == ARGV[1]
  if below(fields['last-delivered-id'], floor) then
    floor = fields['last-delivered-id']
  end
  local lowest_pending = redis.call('XPENDING', KEYS[1], fields['name'])[2]
  if lowest_pending and below(lowest_pending, floor) then
    floor = lowest_pending
  end
end
-- Nothing delivered yet (a new or idle partition): nothing is below, and Redis refuses a range
-- that ends before 0-0.
if not has_projector_group or floor == '0-0' then
  return 0
end

local last_below = redis.call('XREVRANGE', KEYS[1], '(' .. floor, '-', 'COUNT', 1)[1]
if last_below == nil then
  return 0
end
local mark = redis.call('GET', KEYS[2])
if not mark or below(mark, last_below[1]) then
  redis.call('SET', KEYS[2], last_below[1])
end
return redis.call('XTRIM', KEYS[1], 'MINID', floor)
