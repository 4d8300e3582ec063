-- Creates a partition's consumer group from the stream's first entry, unless it is there.
-- Created over entries the stream already holds (the group lost, its stream kept), the group
-- delivers them again, those acknowledged before too: the newest of them is kept, in the same
-- step, as how far. Set in a separate call, a process that died or lost its connection between
-- the two left the group without the mark for good (every later creation finds the group there),
-- and a projector reading in between found none: events an operator discarded would apply
-- (src/projector/partition-consumer.ts leaves them out up to the mark).
--
-- KEYS[1] stream  KEYS[2] redelivered-through  ARGV[1] group
-- Answers 1 when it created the group, 0 when the group was there.
local newest = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)[1]
local created = redis.pcall('XGROUP', 'CREATE', KEYS[1], ARGV[1], '0', 'MKSTREAM')
if type(created) == 'table' and created.err then
  if string.find(created.err, 'BUSYGROUP', 1, true) then
    return 0
  end
  return redis.error_reply(created.err)
end
if newest then
  redis.call('SET', KEYS[2], newest[1])
end
return 1
