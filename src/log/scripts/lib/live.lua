-- The live feed's message for a step of an event, prepended to the scripts that take that step:
-- `accepted` by the append and the dead-letter retry, `dead` by the dead-lettering. Written in
-- the same script, so no later state of the event (written by another process, once it sees this
-- step) can reach the feed before it. Only while the site has live clients (the listeners key
-- exists). Nothing here can fail the script: the feed is a view of the log, so a failure is
-- logged by Redis and the step goes on.

local function live_context(stream, listeners, max_len, at, partition)
  local listening = redis.pcall('EXISTS', listeners)
  if listening ~= 1 then
    return nil
  end
  return {stream = stream, max_len = max_len, at = at, partition = tonumber(partition)}
end

local function live_publish(live, state, event_id, aggregate_id, aggregate_type, event_type, entry_id)
  if not live then
    return
  end
  local ok, reply = pcall(function()
    return redis.pcall('XADD', live.stream, 'MAXLEN', '~', live.max_len, '*', 'm', cjson.encode({
      event_id = event_id,
      aggregate_id = aggregate_id,
      aggregate_type = aggregate_type,
      type = event_type,
      state = state,
      partition = live.partition,
      entry_id = entry_id,
      at = live.at,
    }))
  end)
  local err = (not ok and tostring(reply)) or (type(reply) == 'table' and reply.err)
  if err then
    redis.log(redis.LOG_WARNING, 'outpost live feed: ' .. state .. ' of ' .. event_id .. ' not published: ' .. err)
  end
end
