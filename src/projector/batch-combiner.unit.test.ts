import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { setImmediate as turn } from 'node:timers/promises';
import type { LogEntry } from '../log/codec.ts';
import type { BatchRequest, BatchResult } from './apply-batch.ts';
import { BatchCombiner } from './batch-combiner.ts';

/** A write the test finishes by hand, to hold it out while more batches arrive. */
type HeldWrite = {
  partitions: number[];
  finish: () => void;
  fail: (err: Error) => void;
};

/** The combiner over a stand-in for applyBatches that records each write and holds it open. */
const combinerOf = (fullBatch: number) => {
  const writes: HeldWrite[] = [];
  const combiner = new BatchCombiner(
    (requests) =>
      new Promise<BatchResult[]>((resolve, reject) => {
        writes.push({
          partitions: requests.map((r) => r.lease.partition),
          finish: () => resolve(requests.map(resultOf)),
          fail: reject,
        });
      }),
    fullBatch,
  );
  return { combiner, writes };
};

const resultOf = (request: BatchRequest): BatchResult => ({
  applied: [...request.entries],
  duplicates: [],
  failed: [],
  deferred: [],
  commitLsn: `0/${request.lease.partition}`,
});

/** A batch of `size` entries of `partition`. */
const batch = (partition: number, size = 1): BatchRequest => ({
  entries: Array.from(
    { length: size },
    (_, i) => ({ entryId: `${partition}-${i}`, event: {} }) as LogEntry,
  ),
  lease: { site: 'here', partition, consumer: 'unit', token: 1 },
});

void describe('BatchCombiner', () => {
  void it('writes a lone batch at once, and batches ready in the same turn together', async () => {
    const { combiner, writes } = combinerOf(500);
    const lone = combiner.apply(batch(0));
    await turn();
    assert.deepEqual(
      writes.map((w) => w.partitions),
      [[0]],
    );
    writes[0]?.finish();
    assert.equal((await lone).commitLsn, '0/0');

    const together = [combiner.apply(batch(1)), combiner.apply(batch(2))];
    await turn();
    assert.deepEqual(writes[1]?.partitions, [1, 2]);
    writes[1]?.finish();
    assert.deepEqual(
      (await Promise.all(together)).map((r) => r.commitLsn),
      ['0/1', '0/2'],
      'each partition its own result',
    );
  });

  void it('holds batches that arrive while a write is out, and writes them together after it', async () => {
    const { combiner, writes } = combinerOf(500);
    const first = combiner.apply(batch(0));
    await turn();
    const later = [combiner.apply(batch(1)), combiner.apply(batch(2, 499))];
    await turn();
    assert.equal(writes.length, 1, 'nothing more is written while the first write is out');
    writes[0]?.finish();
    await first;
    await turn();
    assert.deepEqual(writes[1]?.partitions, [1, 2]);
    writes[1]?.finish();
    await Promise.all(later);
  });

  void it('starts a second write beside the first for a full batch, and never a third', async () => {
    const { combiner, writes } = combinerOf(500);
    const first = combiner.apply(batch(0, 500));
    await turn();
    const second = combiner.apply(batch(1, 500));
    await turn();
    assert.deepEqual(
      writes.map((w) => w.partitions),
      [[0], [1]],
      'a backlog is written two at a time',
    );
    const third = combiner.apply(batch(2, 500));
    await turn();
    assert.equal(writes.length, 2, 'a third full batch waits for one of them');
    writes[1]?.finish();
    await second;
    await turn();
    assert.deepEqual(writes[2]?.partitions, [2]);
    writes[0]?.finish();
    writes[2]?.finish();
    await Promise.all([first, third]);
  });

  void it('writes each partition alone after a combined write failed, so each meets its own outcome', async () => {
    const { combiner, writes } = combinerOf(500);
    const outcomes = Promise.allSettled([combiner.apply(batch(0)), combiner.apply(batch(1))]);
    await turn();
    writes[0]?.fail(new Error('lease lapsed'));
    await turn();
    assert.deepEqual(
      writes.slice(1).map((w) => w.partitions),
      [[0], [1]],
    );
    writes[1]?.finish();
    writes[2]?.fail(new Error('partition 1 fenced'));
    const [zero, one] = await outcomes;
    assert.equal(zero?.status, 'fulfilled');
    assert.equal(one?.status, 'rejected');
    assert.match(one?.status === 'rejected' ? String(one.reason) : '', /partition 1 fenced/);

    // A lone batch that fails is not written again here: its consumer decides what comes next.
    const lone = combiner.apply(batch(3));
    await turn();
    writes[3]?.fail(new Error('refused'));
    await assert.rejects(lone, /refused/);
    assert.equal(writes.length, 4);
  });
});
