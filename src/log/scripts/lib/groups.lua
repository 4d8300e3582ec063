-- A stream's consumer group as XINFO GROUPS reports it, its fields by name ('pending',
-- 'last-delivered-id', 'entries-read', 'lag'); nil without the stream or the group.
local function group_info(stream, name)
  local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', stream)
  if not ok then
    return nil
  end
  for _, candidate in ipairs(groups) do
    local fields = {}
    for i = 1, #candidate, 2 do
      fields[candidate[i]] = candidate[i + 1]
    end
    if fields['name'] == name then
      return fields
    end
  end
  return nil
end
