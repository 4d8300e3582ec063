-- Deletes a key only while it holds the given value. It gives back an idempotency key's claim if
-- it is still this request's: a request the append refused (unknown unit, finished unit) appended
-- nothing under the key, and the client may send the corrected request with it. And a running
-- admin action frees its key with it, never one another process claimed since.
--
-- KEYS[1] the key  ARGV[1] the value it must hold
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
