-- The applied queue (records "lsn entry_id event_id aggregate_id aggregate_type", in commit
-- order), shared by the scripts that settle records off its head: the acknowledgement and the
-- hand-back of records whose events the replica lacks.

-- How many of the records in ARGV[first..] head the queue, in order: another acker may have
-- settled some since they were read, and only records still at the head are settled.
local function applied_heading(queue, first)
  local offered = #ARGV - first + 1
  if offered < 1 then
    return 0
  end
  local queued = redis.call('LRANGE', queue, 0, offered - 1)
  local n = 0
  while n < offered and queued[n + 1] == ARGV[first + n] do
    n = n + 1
  end
  return n
end
