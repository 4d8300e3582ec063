import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  DRAIN_RESERVE,
  isLogFull,
  isLogPressed,
  isOutOfMemory,
  logFullReason,
  logMemoryOf,
  logMemoryRatio,
  READONLY_RECONNECT_MS,
  ReadOnlyWatch,
  writeRefusal,
  writeRefusedReason,
} from './capacity.ts';

const MB = 1024 * 1024;

void describe("the log's memory", () => {
  void it('reads used_memory and maxmemory from INFO memory, not their look-alikes', () => {
    const info = [
      '# Memory',
      'used_memory:2048000',
      'used_memory_human:1.95M',
      'used_memory_rss:9000000',
      'maxmemory:4096000',
      'maxmemory_human:3.91M',
      'maxmemory_policy:noeviction',
    ].join('\r\n');
    assert.deepEqual(logMemoryOf(info), { usedBytes: 2_048_000, maxBytes: 4_096_000 });
  });

  void it('is full where the drain reserve begins, pressed before, never without a limit', () => {
    const max = 100 * MB;
    const at = (share: number) => ({ usedBytes: Math.ceil(max * share), maxBytes: max });
    assert.equal(isLogFull(at(1 - DRAIN_RESERVE - 0.001)), false);
    assert.equal(isLogFull(at(1 - DRAIN_RESERVE)), true);
    assert.equal(isLogPressed(at(1 - 2 * DRAIN_RESERVE - 0.001)), false);
    assert.equal(isLogPressed(at(1 - 2 * DRAIN_RESERVE)), true);
    const unlimited = { usedBytes: 50 * MB, maxBytes: 0 };
    assert.equal(isLogFull(unlimited), false);
    assert.equal(isLogPressed(unlimited), false);
    assert.equal(logMemoryRatio(unlimited), 0);
    assert.equal(logMemoryRatio(at(0.5)), 0.5);
  });

  void it("tells Redis's refusal for memory from other failures", () => {
    assert.equal(
      isOutOfMemory(
        new Error(
          "append failed in Redis: OOM command not allowed when used memory > 'maxmemory'.",
        ),
      ),
      true,
    );
    assert.equal(isOutOfMemory(new Error('Connection is closed.')), false);
    assert.equal(isOutOfMemory(undefined), false);
  });

  void it("keeps Redis's own words when it refuses every write, and nothing else", () => {
    const misconf =
      "MISCONF Redis is configured to save RDB snapshots, but it's currently unable to persist to disk.";
    assert.equal(writeRefusal(new Error(misconf)), misconf);
    assert.equal(writeRefusal(new Error(`append failed in Redis: ${misconf}`)), misconf);
    const readOnly = "READONLY You can't write against a read only replica.";
    assert.equal(writeRefusal(new Error(readOnly)), readOnly);
    const noReplicas = 'NOREPLICAS Not enough good replicas to write.';
    assert.equal(writeRefusal(new Error(noReplicas)), noReplicas);
    for (const other of [
      new Error("OOM command not allowed when used memory > 'maxmemory'."),
      new Error('Connection is closed.'),
      new Error('ERR unknown command MISCONFIGURED'),
      undefined,
    ]) {
      assert.equal(writeRefusal(other), undefined, String(other));
    }
  });

  void it('says what frees a refusal of every write', () => {
    assert.match(
      writeRefusedReason('MISCONF Errors writing to the AOF file: No space left on device'),
      /^the local log cannot save writes: Redis refuses them \(MISCONF Errors writing to the AOF file: No space left on device\); free disk space/,
    );
    assert.match(
      writeRefusedReason("READONLY You can't write against a read only replica."),
      /REDIS_URL names a read-only replica .*point it at the primary$/,
    );
    assert.match(
      writeRefusedReason('NOREPLICAS Not enough good replicas to write.'),
      /fewer replicas connected than its min-replicas-to-write/,
    );
  });

  void it('says how full, and what frees it', () => {
    assert.match(
      logFullReason({ usedBytes: 97 * MB, maxBytes: 100 * MB }),
      /^the local log is full: Redis holds 97\.0 MB of its 100\.0 MB maxmemory, 97\.0 % .*raise maxmemory$/,
    );
    // Megabytes rounded say 2.9 of 3.1 (93.5 %) of a log refused at 95 %: the share is given too.
    assert.match(
      logFullReason({ usedBytes: 0.9535 * 3_200_000, maxBytes: 3_200_000 }),
      /Redis holds 2\.9 MB of its 3\.1 MB maxmemory, 95\.3 % \(the last 5 % is kept/,
    );
    assert.match(logFullReason(undefined), /^the local log is full: .*raise maxmemory$/);
  });
});

void describe('ReadOnlyWatch', () => {
  const readOnly = "READONLY You can't write against a read only replica.";

  void it('makes the connection again once READONLY has lasted, then at that pace', () => {
    const watch = new ReadOnlyWatch();
    assert.equal(watch.reconnectNow(readOnly, 0), false, 'not at the first refusal');
    assert.equal(watch.reconnectNow(readOnly, READONLY_RECONNECT_MS - 1), false);
    assert.equal(watch.reconnectNow(readOnly, READONLY_RECONNECT_MS), true);
    assert.equal(watch.reconnectNow(readOnly, READONLY_RECONNECT_MS + 1_000), false);
    assert.equal(watch.reconnectNow(readOnly, 2 * READONLY_RECONNECT_MS), true);
  });

  void it('starts again from a Redis that takes writes, and ignores other refusals', () => {
    const watch = new ReadOnlyWatch();
    watch.reconnectNow(readOnly, 0);
    assert.equal(watch.reconnectNow(undefined, 1_000), false);
    assert.equal(watch.reconnectNow(readOnly, READONLY_RECONNECT_MS), false, 'lasting anew');
    const misconf = 'MISCONF Redis is configured to save RDB snapshots';
    for (const at of [0, READONLY_RECONNECT_MS, 3 * READONLY_RECONNECT_MS]) {
      assert.equal(new ReadOnlyWatch().reconnectNow(misconf, at), false);
    }
  });
});
