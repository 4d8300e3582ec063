#!lua flags=allow-oom
-- Records an event's attempts. Allowed past maxmemory, as its dead-lettering is (see
-- record-applied.lua): a few hundred bytes for an event that is about to leave the queue.
--
-- KEYS[1] attempts  ARGV[1] entry id  ARGV[2] its attempts, JSON
return redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
