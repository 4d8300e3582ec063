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

  void it('says how full, and what frees it', () => {
    assert.match(
      logFullReason({ usedBytes: 97 * MB, maxBytes: 100 * MB }),
      /^the local log is full: Redis holds 97\.0 MB of its 100\.0 MB maxmemory .*raise maxmemory$/,
    );
    assert.match(logFullReason(undefined), /^the local log is full: .*raise maxmemory$/);
  });
});
