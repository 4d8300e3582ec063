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

-- Letters are read a page at a time, so a scan that finds its letter early stops early; pages
-- start small, as that letter is usually the next, and grow to the size of the last.
local FIRST_PAGE, LAST_PAGE = 16, 1024

local function names_aggregate(entries, aggregate)
  for _, entry in ipairs(entries) do
    if letter_aggregate(entry[2]) == aggregate then
      return true
    end
  end
  return false
end

-- Reads `letters` a page at a time in one direction from entry `from`, exclusive (forward, '0-0'
-- reads from the start; backward, `from` must be an entry id). Each call reads the next page:
-- 'found' when one names `aggregate`, else 'more', or 'done' at the end.
local function page_reader(letters, aggregate, from, backward)
  local bound = from == '0-0' and '-' or '(' .. from
  local size = FIRST_PAGE
  return function()
    local entries
    if backward then
      entries = redis.call('XREVRANGE', letters, bound, '-', 'COUNT', size)
    else
      entries = redis.call('XRANGE', letters, bound, '+', 'COUNT', size)
    end
    if names_aggregate(entries, aggregate) then
      return 'found'
    end
    if #entries < size then
      return 'done'
    end
    bound = '(' .. entries[#entries][1]
    size = math.min(size * 2, LAST_PAGE)
    return 'more'
  end
end

-- Whether a dead letter of `aggregate` lies in `letters` after entry `after` ('0-0': anywhere).
local function has_letter_after(letters, aggregate, after)
  local read_page = page_reader(letters, aggregate, after, false)
  local outcome = 'more'
  while outcome == 'more' do
    outcome = read_page()
  end
  return outcome == 'found'
end

-- Whether a dead letter of `aggregate` is left in `letters`, looked for outward from entry
-- `around`, a page each way in turn. An aggregate's letters lie close together (its later events
-- follow its block into the letters as the projector reaches them), so an operator discarding
-- them one by one, oldest or newest first, finds the next within a page; reading every letter of
-- the partition on each discard held Redis up for 35–47 ms a discard with 8,500 letters. Only an
-- aggregate's last letter has them all read.
local function has_letter_around(letters, aggregate, around)
  local readers = {
    page_reader(letters, aggregate, around, false),
    page_reader(letters, aggregate, around, true),
  }
  while #readers > 0 do
    local i = 1
    while i <= #readers do
      local outcome = readers[i]()
      if outcome == 'found' then
        return true
      end
      if outcome == 'done' then
        table.remove(readers, i)
      else
        i = i + 1
      end
    end
  end
  return false
end
