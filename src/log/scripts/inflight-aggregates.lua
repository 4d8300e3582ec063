-- The aggregates of one type with unacknowledged entries in one partition: the fields of every
-- bucket of its in-flight index, in one call instead of a round trip's worth of commands each.
-- An aggregate may be named twice (a bucket and an earlier build's index); the caller dedupes.
--
-- KEYS every bucket of the type's in-flight index, then an earlier build's one-hash index
local ids = {}
for i = 1, #KEYS do
  for _, id in ipairs(redis.call('HKEYS', KEYS[i])) do
    ids[#ids + 1] = id
  end
end
return ids
