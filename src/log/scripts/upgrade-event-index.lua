#!lua flags=allow-oom
-- Allowed past maxmemory, so a full log does not keep the service from starting: it moves or
-- rebuilds what is there, adding nothing.
-- Moves entries of an earlier build's event index (one hash per partition) into the buckets this
-- build reads. Each field is read and moved in this one step, so an entry acknowledged meanwhile
-- (deleted from the old hash by an earlier build still running) is not brought back.
--
-- KEYS[1] earlier builds' event index  KEYS[1 + i] the bucket of event i
-- ARGV[i] event id i
local moved = 0
for i, event_id in ipairs(ARGV) do
  local entry_id = redis.call('HGET', KEYS[1], event_id)
  if entry_id then
    redis.call('HSET', KEYS[1 + i], event_id, entry_id)
    redis.call('HDEL', KEYS[1], event_id)
    moved = moved + 1
  end
end
return moved
