#!lua flags=allow-oom
-- Allowed past maxmemory, as it drains the backlog or frees room: see record-applied.lua.
-- Moves an event aside after its last failed attempt: the dead-letter entry is written and the
-- original acknowledged in one step, so the event is never lost and never in two places. The
-- aggregate is marked blocked, so its later events follow it instead of applying out of order.
-- The event is announced `dead` on the live feed (lib/live.lua).
--
-- An event already among the dead letters (the same event_id appended twice, by two replays
-- racing, say) keeps its one letter: a second would be out of the index's reach, so no one could
-- show or discard it by id, and it would hold the aggregate blocked after the first was discarded.
--
-- KEYS[1] stream  KEYS[2] dead letters  KEYS[3] the event's event index bucket  KEYS[4] attempts
-- KEYS[5] in-flight index bucket  KEYS[6] dead index  KEYS[7] blocked aggregates
-- KEYS[8] earlier builds' event index  KEYS[9] earlier builds' in-flight index of its type
-- KEYS[10] its type's in-use in-flight buckets  KEYS[11] live stream  KEYS[12] live listeners
-- KEYS[13..] for an entry whose aggregate type this build cannot tell: each known type's in-flight
-- bucket of its aggregate, then that type's in-use buckets
-- ARGV[1] group  ARGV[2] entry id  ARGV[3] event id  ARGV[4] aggregate id  ARGV[5] aggregate type
-- ARGV[6] event type  ARGV[7] live stream max length  ARGV[8] now, ISO-8601  ARGV[9] partition
-- ARGV[10] the consumer filing it ('': anyone)
-- ARGV[11] n: how many aggregates' blocks the event follows (0: it failed on its own)
-- ARGV[12..11+n] those aggregates  ARGV[12+n..] dead-letter fields
--
-- Only the consumer that holds the entry files it: one that stalled past its lease since it read
-- the entry would file one the partition's new owner holds, or has applied and acknowledged.
-- Then nothing changes and the answer is {'not_owner'}.
--
-- An event that only follows a block is filed only while one of those aggregates is still
-- blocked: the projector read the blocks with its batch, and an operator who discarded or retried
-- their last letter since has lifted them. Filed anyway, it would block its aggregate again behind
-- no letter. Then nothing changes and the answer is false: the entry stays pending, to apply.
if not holds_entry(KEYS[1], ARGV[1], ARGV[2], ARGV[10]) then
  return {'not_owner'}
end
local follows = tonumber(ARGV[11])
if follows > 0 then
  local still_blocked = false
  for i = 12, 11 + follows do
    if redis.call('SISMEMBER', KEYS[7], ARGV[i]) == 1 then
      still_blocked = true
    end
  end
  if not still_blocked then
    return false
  end
end
local dead_id = redis.call('HGET', KEYS[6], ARGV[3])
if not (dead_id and redis.call('XRANGE', KEYS[2], dead_id, dead_id)[1]) then
  dead_id = redis.call('XADD', KEYS[2], '*', unpack(ARGV, 12 + follows))
end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('HDEL', KEYS[3], ARGV[3])
redis.call('HDEL', KEYS[8], ARGV[3])
redis.call('HDEL', KEYS[4], ARGV[2])
inflight_remove(KEYS[5], KEYS[10], ARGV[4], ARGV[2])
inflight_remove(KEYS[9], nil, ARGV[4], ARGV[2])
-- Its appender (a newer build, say) knew the type and filed it in that type's bucket: left there,
-- the field would outlive the entry, and a retry of the aggregate's letters would wait for it.
for i = 13, #KEYS, 2 do
  inflight_remove(KEYS[i], KEYS[i + 1], ARGV[4], ARGV[2])
end
redis.call('HSET', KEYS[6], ARGV[3], dead_id)
redis.call('SADD', KEYS[7], ARGV[4])
live_publish(live_context(KEYS[11], KEYS[12], ARGV[7], ARGV[8], ARGV[9]), 'dead', ARGV[3], ARGV[4],
  ARGV[5], ARGV[6], ARGV[2])
return dead_id
