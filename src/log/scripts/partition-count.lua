-- Lists a process in the site's roster under its partition count, taking that count as the
-- site's when it differs from the one recorded and no other listed process runs with another.
-- One call checks and lists, so two processes with different counts starting together cannot
-- both pass: whichever comes second sees the first listed, or the count it recorded.
--
-- KEYS[1] the recorded count  KEYS[2] the roster (member "<count> <name>", score: listed until)
-- ARGV[1] this process's count  ARGV[2] the count it found recorded ('' for none)
-- ARGV[3] its member  ARGV[4] milliseconds it stays listed without another call
-- Returns {'listed'}; {'moved', count} when the recorded count is no longer the one it found;
-- {'running', member...} for the listed processes that run with another count.
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local recorded = redis.call('GET', KEYS[1]) or ''
if recorded ~= ARGV[2] then
  return { 'moved', recorded }
end
if recorded ~= ARGV[1] then
  local others = { 'running' }
  for _, member in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
    if member ~= ARGV[3] and string.match(member, '^%d+') ~= ARGV[1] then
      others[#others + 1] = member
    end
  end
  if #others > 1 then
    return others
  end
  redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[4]), ARGV[3])
return { 'listed' }
