#!lua flags=allow-oom
-- Queues applied entries for the acker with their commit LSN, and publishes their `applied`
-- messages on the live feed in the same step, so `confirmed` cannot pass `applied` there.
--
-- Allowed past maxmemory (flags=allow-oom), as are the other scripts that drain the backlog
-- (acknowledging, dead-lettering, forgetting): a log filled to its limit must still record what
-- the projector applied, or nothing is ever acknowledged and the log stays full. What it adds is
-- taken away again by the acknowledgement, with the entries' index fields. Writes of new events
-- (the append, a dead-letter retry) are not allowed past it.
--
-- KEYS[1] applied queue  KEYS[2] applied LSN hash  KEYS[3] live stream
-- ARGV[1] n records  ARGV[2 .. n + 1] applied records  ARGV[n + 2 .. 3n + 1] entry id, LSN pairs
-- ARGV[3n + 2] live stream max length  ARGV[3n + 3 ...] live messages
-- Answers how many live messages could not be published (a failed XADD fails only itself).

-- In slices: unpack has a limit on the values it returns, which a large batch would pass.
local SLICE = 1000
local n = tonumber(ARGV[1])
-- This very call ran already (ioredis sends a call again when its connection dropped before the
-- answer came): its first entry is recorded at its LSN. Queued twice, its records would announce
-- `confirmed` twice and count twice end to end, and forgetting them would find only one copy.
if n > 0 and redis.call('HGET', KEYS[2], ARGV[n + 2]) == ARGV[n + 3] then
  return 0
end
for first = 2, n + 1, SLICE do
  redis.call('RPUSH', KEYS[1], unpack(ARGV, first, math.min(first + SLICE - 1, n + 1)))
end
for first = n + 2, 3 * n + 1, 2 * SLICE do
  redis.call('HSET', KEYS[2], unpack(ARGV, first, math.min(first + 2 * SLICE - 1, 3 * n + 1)))
end
local max_len = ARGV[3 * n + 2]
local unpublished = 0
for i = 3 * n + 3, #ARGV do
  local reply = redis.pcall('XADD', KEYS[3], 'MAXLEN', '~', max_len, '*', 'm', ARGV[i])
  if type(reply) == 'table' and reply.err then
    unpublished = unpublished + 1
  end
end
return unpublished
