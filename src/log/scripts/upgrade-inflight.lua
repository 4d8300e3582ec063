#!lua flags=allow-oom
-- Allowed past maxmemory, so a full log does not keep the service from starting: it moves or
-- rebuilds what is there, adding nothing.
-- Folds one aggregate's in-flight list of an earlier build into the in-flight index, atomically,
-- so a read sees its pending entries in one place or the other, never in neither.
-- KEYS[1] legacy list  KEYS[2] legacy set of its type  KEYS[3] the aggregate's in-flight bucket
-- KEYS[4] its type's in-use in-flight buckets
-- ARGV[1] aggregate id
local ids = redis.call('LRANGE', KEYS[1], 0, -1)
for _, id in ipairs(ids) do
  inflight_add(KEYS[3], KEYS[4], ARGV[1], id)
end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[1])
return #ids
