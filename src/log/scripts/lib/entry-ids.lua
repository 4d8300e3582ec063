-- Stream entry ids compared as Redis orders them: milliseconds, then sequence (as text, "9-0"
-- sorts after "10-0").
local function entry_id_parts(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local function below(a, b)
  local a_ms, a_seq = entry_id_parts(a)
  local b_ms, b_seq = entry_id_parts(b)
  return a_ms < b_ms or (a_ms == b_ms and a_seq < b_seq)
end
