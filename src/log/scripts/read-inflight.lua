-- The unacknowledged entries of one aggregate, read atomically with their index: in stream order
-- within each index; the caller orders what several indexes answer.
-- KEYS[1] stream  KEYS[2..] in-flight indexes to look in: the aggregate's bucket of its type's
-- index (or of every type's), and an earlier build's one-hash index of each
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
