-- Gives back an idempotency key's claim, if it is still this request's: a request the append
-- refused (unknown unit, finished unit) appended nothing under the key, and the client may send
-- the corrected request with it.
--
-- KEYS[1] the claim  ARGV[1] the request's hash
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
