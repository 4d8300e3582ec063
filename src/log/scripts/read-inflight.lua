-- The unacknowledged entries of one aggregate, in stream order, read atomically with their index.
-- KEYS[1] inflight list  KEYS[2] stream
local ids = redis.call('LRANGE', KEYS[1], 0, -1)
local entries = {}
for _, id in ipairs(ids) do
  local found = redis.call('XRANGE', KEYS[2], id, id)
  if found[1] then
    entries[#entries + 1] = found[1]
  end
end
return entries
