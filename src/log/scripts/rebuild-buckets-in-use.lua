#!lua flags=allow-oom
-- Allowed past maxmemory, so a full log does not keep the service from starting: it moves or
-- rebuilds what is there, adding nothing.
-- Sets a type's in-use set to the numbers of its in-flight buckets that hold anything.
--
-- KEYS[1] the type's in-use buckets  KEYS[2..] every bucket of the type's in-flight index
redis.call('DEL', KEYS[1])
local in_use = 0
for i = 2, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    redis.call('SADD', KEYS[1], bucket_number(KEYS[i]))
    in_use = in_use + 1
  end
end
return in_use
