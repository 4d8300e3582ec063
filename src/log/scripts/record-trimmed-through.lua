#!lua flags=allow-oom
-- Allowed past maxmemory: it writes one small key, and the trim it marks frees memory.
-- Moves a partition's trimmed-through mark forward to an entry id, never back: two trims of one
-- partition at once (the retention's and the memory pressure's, or two owners during a lease
-- handover) may finish in either order, and a mark gone back would tell a replay that entries
-- in its range are still there.
--
-- KEYS[1] the mark  ARGV[1] the newest entry id a trim removed
local function parts(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local current = redis.call('GET', KEYS[1])
if current then
  local current_ms, current_seq = parts(current)
  local ms, seq = parts(ARGV[1])
  if current_ms and (ms < current_ms or (ms == current_ms and seq <= current_seq)) then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[1])
return 1
