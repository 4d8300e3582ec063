-- The unacknowledged entries of some aggregates of one partition, read atomically with their
-- indexes: in stream order within each index; the caller orders what several indexes answer.
-- KEYS[1] stream, then ARGV[1] in-flight indexes per aggregate, in the order of the aggregate ids:
-- each aggregate's bucket of its type's index (or of every type's), and an earlier build's
-- one-hash index of each
-- ARGV[1] indexes per aggregate  ARGV[2..] aggregate ids
-- Returns one array of entries per aggregate id.
local per_aggregate = tonumber(ARGV[1])
local found = {}
for a = 2, #ARGV do
  local entries = {}
  local first = 2 + (a - 2) * per_aggregate
  for i = first, first + per_aggregate - 1 do
    for _, id in ipairs(inflight_ids(KEYS[i], ARGV[a])) do
      local entry = redis.call('XRANGE', KEYS[1], id, id)
      if entry[1] then
        entries[#entries + 1] = entry[1]
      end
    end
  end
  found[#found + 1] = entries
end
return found
