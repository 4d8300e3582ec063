-- The aggregate a dead-letter entry names, as codec.ts's entryRecord reads it: the field
-- `aggregate_id` of an event written a field per property, or the second property of a packed
-- event's head; the first found wins. nil when the entry names none.
local function letter_aggregate(fields)
  for i = 1, #fields - 1, 2 do
    local name, value = fields[i], fields[i + 1]
    if name == 'aggregate_id' then
      return value
    end
    if name == 'event' then
      -- The head is all before the last newline (the data's JSON holds none); without one, none.
      local head = string.match(value, '^(.*)\n')
      local aggregate = head and string.match(head, '^[^|]*|([^|]*)|')
      if aggregate and aggregate ~= '' then
        return aggregate
      end
    end
  end
  return nil
end

-- Whether a dead letter of `aggregate` lies in `letters` after entry `after` ('0-0': anywhere).
local function has_letter_of(letters, aggregate, after)
  local from = after == '0-0' and '-' or '(' .. after
  for _, entry in ipairs(redis.call('XRANGE', letters, from, '+')) do
    if letter_aggregate(entry[2]) == aggregate then
      return true
    end
  end
  return false
end
