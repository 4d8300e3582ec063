#!lua flags=allow-oom
-- Allowed past maxmemory, so a full log does not keep the service from starting: it moves or
-- rebuilds what is there, adding nothing.
-- Moves aggregates of an earlier build's in-flight index (one hash per partition and type) into
-- the buckets this build reads. Each is read and moved in this one step, so an entry acknowledged
-- meanwhile is not brought back; its earlier entries go before any this build appended since.
--
-- KEYS[1] earlier builds' in-flight index of a type  KEYS[2] the type's in-use buckets
-- KEYS[2 + i] the bucket of aggregate i
-- ARGV[i] aggregate id i
local moved = 0
for i, aggregate_id in ipairs(ARGV) do
  local earlier = redis.call('HGET', KEYS[1], aggregate_id)
  if earlier then
    local bucket = KEYS[2 + i]
    local later = inflight_take(bucket, aggregate_id)
    for _, id in ipairs(split_ids(earlier)) do
      inflight_add(bucket, KEYS[2], aggregate_id, id)
    end
    for _, id in ipairs(later) do
      inflight_add(bucket, KEYS[2], aggregate_id, id)
    end
    redis.call('HDEL', KEYS[1], aggregate_id)
    moved = moved + 1
  end
end
return moved
