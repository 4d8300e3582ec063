-- Puts an aggregate's dead-lettered events back at the end of its partition stream, in the order
-- they were accepted, and only then lifts the block on the aggregate: retried one at a time, a
-- later event of the aggregate could slip in between them and apply before the older ones. Each
-- keeps its event_id (so it still applies at most once) and is announced `accepted` again on the
-- live feed (lib/live.lua). All or nothing.
--
-- KEYS[1] stream  KEYS[2] dead letters  KEYS[3] dead index  KEYS[4] blocked aggregates
-- KEYS[5] the aggregate's in-flight index bucket  KEYS[6] its type's in-use in-flight buckets
-- KEYS[7] live stream  KEYS[8] live listeners  KEYS[9] an earlier build's in-flight index of the
-- type (one hash; such a build may still be appending beside this one, or have left entries
-- behind)  KEYS[9 + i] letter i's event index bucket
-- ARGV[1] aggregate id  ARGV[2] aggregate type  ARGV[3] live stream max length
-- ARGV[4] now, ISO-8601  ARGV[5] partition  ARGV[6] the letters' oldest original entry id
-- ARGV[7] the partition's newest letter when the letters were read ('0-0': none)
-- ARGV[8] number of letters
-- then per letter: dead-letter id, event id, event type, number of fields, the event's fields
-- Answers the new entry id of each letter, in order, or false for one no longer there (each, when
-- none is: checked first); or
-- {'in_flight', n} and changes nothing while n later events of the aggregate are still in the
-- stream unprocessed: put back after them, the letters would apply after events accepted later.
-- (Processed, those follow the block into the dead letters, and a retry then takes them along.)
-- Or {'letters_changed'}, changing nothing, when a letter of this aggregate was filed since the
-- read: left behind, it would stay dead with the block lifted. (Letters of other aggregates filed
-- meanwhile do not matter: while a unit's files keep following it into the dead letters, a
-- partition-wide check could refuse every retry of another aggregate.)

if has_letter_after(KEYS[2], ARGV[1], ARGV[7]) then
  return {'letters_changed'}
end

local letters = {}
local at = 9
for i = 1, tonumber(ARGV[8]) do
  local count = tonumber(ARGV[at + 3])
  letters[i] = { dead_id = ARGV[at], event_id = ARGV[at + 1], type = ARGV[at + 2],
    first = at + 4, last = at + 3 + count }
  at = at + 4 + count
end

-- Letters all gone since the read (another operator retried or discarded them) are answered as
-- gone, not as held back by the entries that retry put back.
local left = false
for _, letter in ipairs(letters) do
  if redis.call('XRANGE', KEYS[2], letter.dead_id, letter.dead_id)[1] then
    left = true
  end
end
if #letters > 0 and not left then
  local gone = {}
  for i = 1, #letters do
    gone[i] = false
  end
  return gone
end

local function entry_after(a, b)
  local a_ms, a_seq = string.match(a, '^(%d+)-(%d+)$')
  local b_ms, b_seq = string.match(b, '^(%d+)-(%d+)$')
  a_ms, b_ms = tonumber(a_ms), tonumber(b_ms)
  return a_ms > b_ms or (a_ms == b_ms and tonumber(a_seq) > tonumber(b_seq))
end

local later = 0
for _, index in ipairs({KEYS[5], KEYS[9]}) do
  for _, id in ipairs(inflight_ids(index, ARGV[1])) do
    if entry_after(id, ARGV[6]) then
      later = later + 1
    end
  end
end
if later > 0 then
  return {'in_flight', later}
end

local live = live_context(KEYS[7], KEYS[8], ARGV[3], ARGV[4], ARGV[5])
local ids = {}
for i, letter in ipairs(letters) do
  if redis.call('XRANGE', KEYS[2], letter.dead_id, letter.dead_id)[1] then
    local id = redis.call('XADD', KEYS[1], '*', unpack(ARGV, letter.first, letter.last))
    redis.call('HSET', KEYS[9 + i], letter.event_id, id)
    inflight_add(KEYS[5], KEYS[6], ARGV[1], id)
    redis.call('XDEL', KEYS[2], letter.dead_id)
    redis.call('HDEL', KEYS[3], letter.event_id)
    live_publish(live, 'accepted', letter.event_id, ARGV[1], ARGV[2], letter.type, id)
    ids[i] = id
  else
    ids[i] = false
  end
end
redis.call('SREM', KEYS[4], ARGV[1])
return ids
