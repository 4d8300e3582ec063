-- The in-flight index, prepended to the scripts that use it: small hashes (buckets of a partition
-- and aggregate type, by aggregate id), aggregate id -> that aggregate's unacknowledged entry ids
-- in stream order, separated by spaces. One field per aggregate rather than a list key per
-- aggregate: a key costs its keyspace entry and object header, which made the per-aggregate lists
-- the largest avoidable part of the Redis memory a pending event takes. Buckets rather than one
-- hash per type: a hash of up to 128 short fields is a listpack, about half a hashtable's bytes.
--
-- An aggregate with more pending entries than fit in FIELD_MAX_BYTES (a unit patched all night
-- while the link was down) moves them to a list key of its own, and its field says SPILLED. A
-- field is rewritten whole, and a script's writes reach the append-only file as their effects, so
-- a growing field cost each append and each acknowledgement the whole list again: quadratic disk
-- and CPU (8,000 appends to one unit wrote ≈ 64 KB of AOF each). A list takes RPUSH and LPOP.
-- 64 bytes is Redis's `hash-max-listpack-value`: a longer field would also turn its whole bucket
-- into a hashtable for good.
--
-- `in_use` is the set of the numbers of the type's buckets that hold anything (a bucket's key
-- ends with its number), so the merged list reads those alone. It is nil for an earlier build's
-- one hash per type, which has no number and never holds SPILLED.

local FIELD_MAX_BYTES = 64
local SPILLED = 'spilled'

local function bucket_number(key)
  return string.match(key, ':(%d+)$')
end

-- `<prefix>:inflight-ids:<type>:<bucket>` -> `<prefix>:inflight-list:<type>:<aggregate id>`, as
-- keys.ts names it. Derived here rather than passed in, as every caller already names the bucket.
local function spill_key(key, aggregate_id)
  local prefix, aggregate_type = string.match(key, '^(.*):inflight%-ids:([^:]+):%d+$')
  return prefix .. ':inflight-list:' .. aggregate_type .. ':' .. aggregate_id
end

local function split_ids(ids)
  local list = {}
  for id in string.gmatch(ids, '%S+') do
    list[#list + 1] = id
  end
  return list
end

local function inflight_add(key, in_use, aggregate_id, entry_id)
  local ids = redis.call('HGET', key, aggregate_id)
  if ids == SPILLED then
    redis.call('RPUSH', spill_key(key, aggregate_id), entry_id)
    return
  end
  if not ids then
    redis.call('HSET', key, aggregate_id, entry_id)
    if in_use then
      redis.call('SADD', in_use, bucket_number(key))
    end
    return
  end
  local joined = ids .. ' ' .. entry_id
  if #joined <= FIELD_MAX_BYTES then
    redis.call('HSET', key, aggregate_id, joined)
    return
  end
  local spilled = split_ids(ids)
  spilled[#spilled + 1] = entry_id
  redis.call('RPUSH', spill_key(key, aggregate_id), unpack(spilled))
  redis.call('HSET', key, aggregate_id, SPILLED)
end

-- Redis deletes a hash with its last field: the bucket is then no longer in use.
local function forget_if_empty(key, in_use)
  if in_use and redis.call('EXISTS', key) == 0 then
    redis.call('SREM', in_use, bucket_number(key))
  end
end

local function forget_aggregate(key, in_use, aggregate_id)
  redis.call('HDEL', key, aggregate_id)
  forget_if_empty(key, in_use)
end

-- Acknowledgements come in stream order, so the id is nearly always the first one.
local function inflight_remove(key, in_use, aggregate_id, entry_id)
  local ids = redis.call('HGET', key, aggregate_id)
  if not ids then
    return
  end
  if ids == SPILLED then
    local list = spill_key(key, aggregate_id)
    if redis.call('LINDEX', list, 0) == entry_id then
      redis.call('LPOP', list)
    else
      redis.call('LREM', list, 1, entry_id)
    end
    -- Redis deletes a list with its last element.
    if redis.call('EXISTS', list) == 0 then
      forget_aggregate(key, in_use, aggregate_id)
    end
    return
  end
  if ids == entry_id then
    forget_aggregate(key, in_use, aggregate_id)
    return
  end
  local head = entry_id .. ' '
  if string.sub(ids, 1, #head) == head then
    redis.call('HSET', key, aggregate_id, string.sub(ids, #head + 1))
    return
  end
  local kept = {}
  for _, id in ipairs(split_ids(ids)) do
    if id ~= entry_id then
      kept[#kept + 1] = id
    end
  end
  if #kept == 0 then
    forget_aggregate(key, in_use, aggregate_id)
  else
    redis.call('HSET', key, aggregate_id, table.concat(kept, ' '))
  end
end

local function inflight_ids(key, aggregate_id)
  local ids = redis.call('HGET', key, aggregate_id)
  if ids == SPILLED then
    return redis.call('LRANGE', spill_key(key, aggregate_id), 0, -1)
  end
  return split_ids(ids or '')
end

-- Takes an aggregate out of its bucket whole, answering its ids; the caller adds them back.
local function inflight_take(key, aggregate_id)
  local ids = inflight_ids(key, aggregate_id)
  redis.call('HDEL', key, aggregate_id)
  redis.call('DEL', spill_key(key, aggregate_id))
  return ids
end
