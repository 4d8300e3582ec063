-- Appends the events of several requests to one partition stream; a refused request appends none.
-- The requests are the writes that arrived while the previous call for this partition was out
-- (group commit): one script call, one cjson decode and one propagated transaction for all.
-- Each request runs as it would alone, in arrival order: the idempotency check, the domain
-- guard and the XADDs of a request see what the requests before it in the batch wrote, so
-- concurrent duplicates append once and two racing finishes of one unit cannot both pass.
--
-- Each appended event is announced `accepted` on the live feed (lib/live.lua).
--
-- KEYS[1] stream  KEYS[2] live stream  KEYS[3] live listeners
-- then for each request of n events, from its `k` (index of its first key):
--   KEYS[k] idempotency key  KEYS[k + 1] unit state key  KEYS[k + 1 + i] in-flight bucket of event i
--   KEYS[k + 1 + n + i] event index bucket of event i
--   KEYS[k + 1 + 2n + i] the in-use buckets of event i's in-flight index
-- ARGV[1] JSON [{k, idem?:{hash,response,ttl}, guard?:{allowed?,next,seed?,require,ttl},
--               events:[{fields,event_id,aggregate_id,aggregate_type,type}]}]
-- ARGV[2] live stream max length  ARGV[3] when the events were accepted, ISO-8601  ARGV[4] partition
-- Answers one reply per request: {'appended', entry ids...} | {'replayed', response} |
-- {'idempotency_conflict'} | {'unknown'} | {'conflict', state} | {'failed', message}.

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

  -- A re-sent guarded request whose events were applied and acknowledged before it came back
  -- is no longer in the event index; the unit's status names the last guarded request that set
  -- it ('<status> <first event id> <entry ids...>'; earlier builds wrote the status alone), so
  -- it is still answered with its entries instead of a 409 or a second copy.
  local state
  if req.guard then
    state = redis.call('GET', unit_key)
    if state then
      local words = {}
      for word in string.gmatch(state, '%S+') do words[#words + 1] = word end
      state = words[1]
      if not ran and words[2] == req.events[1].event_id then
        ran = true
        for i = 1, n do indexed[i] = indexed[i] or words[i + 2] end
      end
    end
  end

  local next_status
  if req.guard and not ran then
    if not state then
      if req.guard.seed then
        state = req.guard.seed
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
    next_status = req.guard.next
    if next_status == '=' then next_status = state end
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
  if next_status then
    local setter = {next_status, req.events[1].event_id}
    for i = 2, #reply do setter[i + 1] = reply[i] end
    redis.call('SET', unit_key, table.concat(setter, ' '), 'EX', req.guard.ttl)
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
