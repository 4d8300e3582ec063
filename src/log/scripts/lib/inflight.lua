-- The in-flight index, prepended to the scripts that use it: small hashes (buckets of a partition
-- and aggregate type, by aggregate id), aggregate id -> that aggregate's unacknowledged entry ids
-- in stream order, separated by spaces. One field per aggregate rather than a list key per
-- aggregate: a key costs its keyspace entry and object header, which made the per-aggregate lists
-- the largest avoidable part of the Redis memory a pending event takes. Buckets rather than one
-- hash per type: a hash of up to 128 short fields is a listpack, about half a hashtable's bytes.
--
-- `in_use` is the set of the numbers of the type's buckets that hold anything (a bucket's key
-- ends with its number), so the merged list reads those alone. It is nil for an earlier build's
-- one hash per type, which has no number.

local function bucket_number(key)
  return string.match(key, ':(%d+)$')
end

local function inflight_add(key, in_use, aggregate_id, entry_id)
  local ids = redis.call('HGET', key, aggregate_id)
  redis.call('HSET', key, aggregate_id, ids and (ids .. ' ' .. entry_id) or entry_id)
  if in_use and not ids then
    redis.call('SADD', in_use, bucket_number(key))
  end
end

-- Redis deletes a hash with its last field: the bucket is then no longer in use.
local function forget_if_empty(key, in_use)
  if in_use and redis.call('EXISTS', key) == 0 then
    redis.call('SREM', in_use, bucket_number(key))
  end
end

-- Acknowledgements come in stream order, so the id is nearly always the first one.
local function inflight_remove(key, in_use, aggregate_id, entry_id)
  local ids = redis.call('HGET', key, aggregate_id)
  if not ids then
    return
  end
  if ids == entry_id then
    redis.call('HDEL', key, aggregate_id)
    forget_if_empty(key, in_use)
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
    forget_if_empty(key, in_use)
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
