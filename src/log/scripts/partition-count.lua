-- Lists a process in the site's roster under its partition count, taking that count as the
-- site's when it differs from the one recorded and no other listed process runs with another.
-- One call checks and lists, so two processes with different counts starting together cannot
-- both pass: whichever comes second sees the first listed, or the count it recorded.
--
-- KEYS[1] the recorded count  KEYS[2] the roster (member "<count> <name>", score: listed until)
-- KEYS[3..] when this call would change the count: each partition's stream and dead letters
-- under the recorded one
-- ARGV[1] this process's count  ARGV[2] the count it found recorded ('' for none)
-- ARGV[3] its member  ARGV[4] milliseconds it stays listed without another call
-- ARGV[5] the projector's consumer group
-- Returns {'listed'}; {'moved', count} when the recorded count is no longer the one it found;
-- {'running', member...} for the listed processes that run with another count; {'held'} when a
-- partition of the recorded count holds an event still to apply, or a dead letter.
--
-- The caller looked at the log before this call; a process with the old count whose listing
-- lapsed (Redis away) may have appended since, and its event would be left in a partition the new
-- count never reads. The append script refuses a count not recorded, and this call looks again in
-- the same step as it records: between the two, no event slips through.

local function holds_work(stream, dead_letters)
  if redis.call('XLEN', dead_letters) > 0 then
    return true
  end
  local newest = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)[1]
  if not newest then
    return false
  end
  -- As the buffer counts it (undelivered.lua): a stream without the projector's group holds
  -- nothing to deliver.
  local group = group_info(stream, ARGV[5])
  return group ~= nil
    and (tonumber(group['pending']) > 0 or below(group['last-delivered-id'], newest[1]))
end

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
  for i = 3, #KEYS, 2 do
    if holds_work(KEYS[i], KEYS[i + 1]) then
      return { 'held' }
    end
  end
  redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[4]), ARGV[3])
return { 'listed' }
