-- Whether `consumer` holds `entry` in the group's pending list, or no consumer is named (''):
-- a projector that stalled past its lease since it read the entry no longer holds it once the
-- partition's new owner has claimed it, or applied and acknowledged it.
local function holds_entry(stream, group, entry, consumer)
  if consumer == '' then
    return true
  end
  local holder = redis.call('XPENDING', stream, group, entry, entry, 1)[1]
  return holder ~= nil and holder[2] == consumer
end
