-- Appends all events of one request to a partition stream, or nothing.
-- Idempotency check, domain guard and the XADDs run in this one script, so concurrent duplicates
-- append once and two racing finishes of one unit cannot both pass the guard.
--
-- KEYS[1] stream  KEYS[2] event index  KEYS[3] idempotency key  KEYS[4] unit state key
-- KEYS[4 + i] in-flight index (of event i's aggregate type)
-- ARGV[1] JSON {idem?:{hash,response,ttl}, guard?:{allowed?,next,seed?,require,ttl}, events:[{fields,event_id,aggregate_id}]}
local req = cjson.decode(ARGV[1])

if req.idem then
  local previous = redis.call('GET', KEYS[3])
  if previous then
    local sep = string.find(previous, '\n', 1, true)
    if string.sub(previous, 1, sep - 1) == req.idem.hash then
      return {'replayed', string.sub(previous, sep + 1)}
    end
    return {'idempotency_conflict'}
  end
end

if req.guard then
  local state = redis.call('GET', KEYS[4])
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
  local next_state = req.guard.next
  if next_state == '=' then next_state = state end
  redis.call('SET', KEYS[4], next_state, 'EX', req.guard.ttl)
end

local reply = {'appended'}
for i, event in ipairs(req.events) do
  local id = redis.call('XADD', KEYS[1], '*', unpack(event.fields))
  redis.call('HSET', KEYS[2], event.event_id, id)
  inflight_add(KEYS[4 + i], event.aggregate_id, id)
  reply[i + 1] = id
end

if req.idem then
  redis.call('SET', KEYS[3], req.idem.hash .. '\n' .. req.idem.response, 'EX', req.idem.ttl)
end
return reply
