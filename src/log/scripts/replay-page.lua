#!lua flags=no-writes
-- One page of a partition's stream and its trim mark, read in one step: a trim records the mark
-- before it removes anything, so entries gone before this read are always seen by it.
-- A MULTI did the same, but Redis 7 refuses every command queued in a transaction while it is
-- past its maxmemory (EXECABORT), and a replay's dry run, which writes nothing, must answer then.
-- KEYS[1] stream, KEYS[2] trim mark; ARGV[1] from, ARGV[2] to (XRANGE's forms), ARGV[3] count.
return { redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[2], 'COUNT', ARGV[3]), redis.call('GET', KEYS[2]) }
