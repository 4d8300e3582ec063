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
    local later = redis.call('HGET', bucket, aggregate_id)
    redis.call('HSET', bucket, aggregate_id, later and (earlier .. ' ' .. later) or earlier)
    redis.call('SADD', KEYS[2], bucket_number(bucket))
    redis.call('HDEL', KEYS[1], aggregate_id)
    moved = moved + 1
  end
end
return moved
