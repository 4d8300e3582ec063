#!lua flags=allow-oom
-- Records an event's attempts. Allowed past maxmemory, as its dead-lettering is (see
-- record-applied.lua): a few hundred bytes for an event that is about to leave the queue.
--
-- Only the consumer that holds the entry counts an attempt: one that stalled past its lease since
-- it read the entry would count against one the partition's new owner holds. Answers false then.
--
-- KEYS[1] attempts  KEYS[2] stream  ARGV[1] entry id  ARGV[2] its attempts, JSON  ARGV[3] group
-- ARGV[4] the consumer ('': anyone)
if not holds_entry(KEYS[2], ARGV[3], ARGV[1], ARGV[4]) then
  return false
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return true
