-- The aggregates of some in-flight index buckets of one partition that may match a list's filter on
-- a field their creation event sets for good (a unit's obs_unit_id, a file's
-- executed_obs_unit_id), so that such a list merges those alone instead of every aggregate with
-- events in flight. An aggregate whose first in-flight entry is its creation event, packed and of
-- the version the caller names, may match only when that event's data holds the needle: the field
-- and its value as JSON.stringify writes them, which is how the event's data was written. Any
-- other aggregate may match, and the merge decides: one whose creation was acknowledged has its
-- row on the replica, and an entry of an earlier build's format or of another version is not
-- searched. The needle found elsewhere in the data (a nested field of the same name) only keeps an
-- aggregate the merge then leaves out.
-- KEYS[1] stream, KEYS[2..] buckets of the type's in-flight index
-- ARGV[1] creation event type  ARGV[2] its version  ARGV[3] needle
-- Returns the ids of the aggregates that may match.
local creation, version, needle = ARGV[1], ARGV[2], ARGV[3]
local EVENT_FIELD = 'event'

local function may_match(first)
  local entry = redis.call('XRANGE', KEYS[1], first, first)[1]
  if not entry or #entry[2] ~= 2 or entry[2][1] ~= EVENT_FIELD then return true end
  local packed = entry[2][2]
  local newline = string.find(packed, '\n', 1, true)
  if not newline then return true end
  -- event_id|aggregate_id|type|version|...
  local _, _, event_type, event_version =
    string.find(string.sub(packed, 1, newline - 1), '^[^|]*|[^|]*|([^|]*)|([^|]*)|')
  if event_type ~= creation or event_version ~= version then return true end
  return string.find(packed, needle, newline + 1, true) ~= nil
end

local kept = {}
for k = 2, #KEYS do
  local fields = redis.call('HGETALL', KEYS[k])
  for i = 1, #fields, 2 do
    local aggregate_id, ids = fields[i], fields[i + 1]
    local first
    if ids == SPILLED then
      first = redis.call('LINDEX', spill_key(KEYS[k], aggregate_id), 0)
    else
      first = string.match(ids, '^%S+')
    end
    if not first or may_match(first) then
      kept[#kept + 1] = aggregate_id
    end
  end
end
return kept
