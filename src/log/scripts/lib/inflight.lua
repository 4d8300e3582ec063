-- The in-flight index, prepended to the scripts that use it: small hashes (buckets of a partition
-- and aggregate type, by aggregate id), aggregate id -> that aggregate's unacknowledged entry ids
-- in stream order, separated by spaces. One field per aggregate rather than a list key per
-- aggregate: a key costs its keyspace entry and object header, which made the per-aggregate lists
-- the largest avoidable part of the Redis memory a pending event takes. Buckets rather than one
-- hash per type: a hash of up to 128 short fields is a listpack, about half a hashtable's bytes.

local function inflight_add(key, aggregate_id, entry_id)
  local ids = redis.call('HGET', key, aggregate_id)
  redis.call('HSET', key, aggregate_id, ids and (ids .. ' ' .. entry_id) or entry_id)
end

-- Acknowledgements come in stream order, so the id is nearly always the first one.
local function inflight_remove(key, aggregate_id, entry_id)
  local ids = redis.call('HGET', key, aggregate_id)
  if not ids then
    return
  end
  if ids == entry_id then
    redis.call('HDEL', key, aggregate_id)
    return
  end
  local head = entry_id .. ' '
  if string.sub(ids, 1, #head) == head then
    redis.call('HSET', key, aggregate_id, string.sub(ids, #head + 1))
    return
  end
  local kept = {}
  for id in string.gmatch(ids, '%S+') do
    if id ~= entry_id then
      kept[#kept + 1] = id
    end
  end
  if #kept == 0 then
    redis.call('HDEL', key, aggregate_id)
  else
    redis.call('HSET', key, aggregate_id, table.concat(kept, ' '))
  end
end

local function inflight_ids(key, aggregate_id)
  local ids = {}
  for id in string.gmatch(redis.call('HGET', key, aggregate_id) or '', '%S+') do
    ids[#ids + 1] = id
  end
  return ids
end
