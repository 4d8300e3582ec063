#!lua flags=allow-oom
-- Allowed past maxmemory, as it drains the backlog or frees room: see record-applied.lua.
-- Discards a dead-lettered event for good, leaving an audit record of who said why.
--
-- The aggregate's block is lifted once none of its events is left in the dead letters: its next
-- events then apply (the operator chose to go on without the discarded one); kept blocked, they
-- would follow it into the dead letters, behind an event no list shows any more. Whether this
-- was the last is decided here, not by the caller's earlier read: two operators discarding an
-- aggregate's last two letters at once would each have seen the other's, and left the aggregate
-- blocked with no letters; a follower filed after such a read would have been left dead with the
-- block lifted.
--
-- A unit's status for the append guard was set when the event was accepted: a discarded finish
-- would leave it `success` for ever (every later finish or patch 409), a discarded start
-- `running` (files accepted for a unit that never was). It is dropped with the unit's start or
-- finish, whatever letters of the unit are left (a unit has one of each: no other dead event
-- set a terminal status), and with its last letter (while another of its events, a finish, is
-- still dead, the status it set still stands); the next write seeds it again from the replica
-- and the unit's events in flight.
--
-- KEYS[1] dead letters  KEYS[2] dead index  KEYS[3] discarded (audit stream)
-- KEYS[4] blocked aggregates  KEYS[5] with an executed obs unit's letter, the unit's status
-- ARGV[1] dead-letter id  ARGV[2] its id in the dead index
-- ARGV[3] the aggregate the letter blocks  ARGV[4] 'last': lift the block (and drop the status)
-- once no letter of that aggregate is left; 'always': lift it (a stand-in named after an
-- undecodable entry, which nothing else blocks)
-- ARGV[5] 'status': drop the unit's status now (the letter is its start or finish)
-- ARGV[6..] audit fields
local found = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if not found[1] then
  return false
end
local audit = redis.call('XADD', KEYS[3], '*', unpack(ARGV, 6))
redis.call('XDEL', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[2])
local drop_status = ARGV[5] == 'status'
if ARGV[4] == 'always' or not has_letter_around(KEYS[1], ARGV[3], ARGV[1]) then
  redis.call('SREM', KEYS[4], ARGV[3])
  drop_status = true
end
if drop_status and KEYS[5] then
  redis.call('DEL', KEYS[5])
end
return audit
