-- Sets a key held by one holder: only while it still holds the value that holder set, or while
-- the key is gone (it expired, or Redis lost it), never over a value another holder set since.
-- A running admin action renews its claim with it and stores its outcome with it.
--
-- KEYS[1] the key  ARGV[1] the value the holder set  ARGV[2] the new value  ARGV[3] seconds
local current = redis.call('GET', KEYS[1])
if current ~= false and current ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
return 1
