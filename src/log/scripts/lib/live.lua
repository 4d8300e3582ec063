-- The live feed's `accepted` message, prepended to the scripts that give the projector an event
-- (append, dead-letter retry). Written in the same script, so no later state of the event (the
-- projector's `applied`) can reach the feed before it. Only while the site has live clients (the
-- listeners key exists); a failure here never fails the append: the feed is a view of the log.

local function live_context(stream, listeners, max_len, at, partition)
  if redis.call('EXISTS', listeners) == 0 then
    return nil
  end
  return {stream = stream, max_len = max_len, at = at, partition = tonumber(partition)}
end

local function live_accepted(live, event_id, aggregate_id, aggregate_type, event_type, entry_id)
  if not live then
    return
  end
  redis.pcall('XADD', live.stream, 'MAXLEN', '~', live.max_len, '*', 'm', cjson.encode({
    event_id = event_id,
    aggregate_id = aggregate_id,
    aggregate_type = aggregate_type,
    type = event_type,
    state = 'accepted',
    partition = live.partition,
    entry_id = entry_id,
    at = live.at,
  }))
end
