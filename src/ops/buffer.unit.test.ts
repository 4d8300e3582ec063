import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { type PartitionBuffer, totalsOf } from './buffer.ts';

const partition = (oldestAcceptedMs: number | undefined, delivered = 1): PartitionBuffer => ({
  partition: 0,
  delivered,
  undelivered: 0,
  awaitingReplica: 0,
  deadLetters: 0,
  oldestAcceptedMs,
});

void describe('buffer totals', () => {
  void it("ages the oldest pending event on Redis's clock, whatever this host's says", () => {
    // Entry ids are Redis milliseconds: a host clock hours off must not move the age.
    const redisNow = Date.now() - 3 * 3_600_000;
    const totals = totalsOf({
      partitions: [partition(redisNow - 90_000), partition(redisNow - 30_000)],
      nowMs: redisNow,
    });
    assert.equal(totals.oldestPendingSeconds, 90);
    assert.equal(totals.pending, 2);
  });

  void it('ages nothing when nothing is pending', () => {
    const totals = totalsOf({ partitions: [partition(undefined, 0)], nowMs: Date.now() });
    assert.deepEqual(totals, {
      pending: 0,
      undelivered: 0,
      partitionsHolding: 0,
      awaitingReplica: 0,
      deadLetters: 0,
      oldestPendingSeconds: 0,
    });
  });
});
