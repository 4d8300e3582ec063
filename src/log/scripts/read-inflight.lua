-- The unacknowledged entries of one aggregate, in stream order, read atomically with their index.
-- KEYS[1] stream  KEYS[2..] in-flight indexes to look in (its type's, or every type's)
-- ARGV[1] aggregate id
local entries = {}
for i = 2, #KEYS do
  for _, id in ipairs(inflight_ids(KEYS[i], ARGV[1])) do
    local found = redis.call('XRANGE', KEYS[1], id, id)
    if found[1] then
      entries[#entries + 1] = found[1]
    end
  end
end
return entries
