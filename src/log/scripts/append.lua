-- Appends the events of several requests to one partition stream; a refused request appends none.
-- The requests are the writes that arrived while the previous call for this partition was out
-- (group commit): one script call, one cjson decode and one propagated transaction for all.
-- Each request runs as it would alone, in arrival order: the idempotency check, the domain
-- guard and the XADDs of a request see what the requests before it in the batch wrote, so
-- concurrent duplicates append once and two racing finishes of one unit cannot both pass.
--
-- Each appended event is announced `accepted` on the live feed (lib/live.lua).
--
-- KEYS[1] stream  KEYS[2] live stream  KEYS[3] live listeners  KEYS[4] the site's recorded
-- partition count
-- then for each request of n events, from its `k` (index of its first key):
--   KEYS[k] idempotency key  KEYS[k + 1] unit state key  KEYS[k + 1 + i] in-flight bucket of event i
--   KEYS[k + 1 + n + i] event index bucket of event i
--   KEYS[k + 1 + 2n + i] the in-use buckets of event i's in-flight index
--   KEYS[k + 2 + 3n] the guarded request's run record (its entry ids, kept a minute)
-- ARGV[1] JSON [{k, idem?:{hash,response,ttl}, guard?:{allowed?,next,seed?,require,ttl,run_ttl},
--               events:[{fields,event_id,aggregate_id,aggregate_type,type}]}]
-- ARGV[2] live stream max length  ARGV[3] when the events were accepted, ISO-8601  ARGV[4] partition
-- ARGV[5] the caller's partition count
-- Answers one reply per request: {'appended', entry ids...} | {'replayed', response} |
-- {'idempotency_conflict'} | {'unknown'} | {'conflict', state} | {'failed', message};
-- or, for the whole call, {{'count_moved', recorded count}}.

-- An aggregate's partition follows from the count. A caller whose count is no longer the site's
-- (its listing lapsed while Redis was away and a process with another count took the change)
-- would append where the site's processes do not look: nothing is appended, in the same call
-- that would have, rather than from the caller's next renewal of its listing, seconds later.
local recorded_count = redis.call('GET', KEYS[4])
if recorded_count and recorded_count ~= ARGV[5] then
  return {{'count_moved', recorded_count}}
end

local live = live_context(KEYS[2], KEYS[3], ARGV[2], ARGV[3], ARGV[4])

local function append_one(req)
  local idem_key, unit_key = KEYS[req.k], KEYS[req.k + 1]
  if req.idem then
    local previous = redis.call('GET', idem_key)
    if previous then
      local sep = string.find(previous, '\n', 1, true)
      if string.sub(previous, 1, sep - 1) == req.idem.hash then
        return {'replayed', string.sub(previous, sep + 1)}
      end
      return {'idempotency_conflict'}
    end
  end

  -- Events already in the event index were appended and are not yet acknowledged: this very
  -- request ran already (ioredis re-sends a script call that was out when its connection
  -- dropped, and Redis may have run it), or a replay racing another names some of them again.
  -- Those are answered with their entries, not appended twice; and a request that ran is not
  -- guarded again, or a finish would meet the status its own first run set (409 for a finish
  -- that was accepted).
  local n = #req.events
  local indexed = {}
  local ran = false
  for i, event in ipairs(req.events) do
    indexed[i] = redis.call('HGET', KEYS[req.k + 1 + n + i], event.event_id)
    if indexed[i] then ran = true end
  end

  -- Acknowledged events have left the index: a guarded request re-sent after some or all of its
  -- events were applied and acknowledged is known by its run record instead, so a finish is not
  -- answered 409 and a start does not set its unit running again. The record is kept a minute,
  -- one per guarded write: ioredis re-sends within its reconnect attempts (a few seconds), and
  -- past its command timeout (5 s) the request's client has been answered 503 anyway.
  local run_key = KEYS[req.k + 2 + 3 * n]
  if req.guard then
    local run = redis.call('GET', run_key)
    if run then
      ran = true
      local i = 0
      for id in string.gmatch(run, '%S+') do
        i = i + 1
        indexed[i] = indexed[i] or id
      end
    end
  end

  if req.guard and not ran then
    local state = redis.call('GET', unit_key)
    local seeded = false
    if not state then
      if req.guard.seed then
        state = req.guard.seed
        seeded = true
      elseif req.guard.require then
        return {'unknown'}
      end
    end
    if req.guard.allowed then
      local ok = false
      for _, allowed in ipairs(req.guard.allowed) do
        if allowed == state then ok = true end
      end
      if not ok then return {'conflict', state} end
    end
    local next_state = req.guard.next
    if next_state == '=' then next_state = state end
    -- A status recorded here for a unit another site started would let this site finish it.
    if not (seeded and req.guard.recordSeed == false) then
      redis.call('SET', unit_key, next_state, 'EX', req.guard.ttl)
    end
  end

  local reply = {'appended'}
  for i, event in ipairs(req.events) do
    local id = indexed[i]
    if not id then
      id = redis.call('XADD', KEYS[1], '*', unpack(event.fields))
      redis.call('HSET', KEYS[req.k + 1 + n + i], event.event_id, id)
      inflight_add(KEYS[req.k + 1 + i], KEYS[req.k + 1 + 2 * n + i], event.aggregate_id, id)
      live_publish(live, 'accepted', event.event_id, event.aggregate_id, event.aggregate_type,
        event.type, id)
    end
    reply[i + 1] = id
  end
  if req.guard and not ran then
    redis.call('SET', run_key, table.concat(reply, ' ', 2), 'EX', req.guard.run_ttl)
  end

  if req.idem then
    redis.call('SET', idem_key, req.idem.hash .. '\n' .. req.idem.response, 'EX', req.idem.ttl)
  end
  return reply
end

local replies = {}
for n, req in ipairs(cjson.decode(ARGV[1])) do
  -- A request that fails (a key of the wrong type, say) fails alone: the requests batched with it
  -- are answered as if each had been its own call.
  local ok, reply = pcall(append_one, req)
  if ok then
    replies[n] = reply
  else
    replies[n] = {'failed', tostring(type(reply) == 'table' and reply.err or reply)}
  end
end
return replies
