import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { Queryable } from '../client.ts';
import { replicaReached } from './replica.ts';

/** A replica whose every query answers `rows`, or never answers (a link dropping packets). */
const replicaAnswering = (rows: unknown[] | 'never') =>
  ({
    query: () => (rows === 'never' ? new Promise(() => undefined) : Promise.resolve({ rows })),
  }) as unknown as Queryable;

const standbyAt = (replay: string) => [{ standby: true, replay, flush: null, lag: 0 }];

void describe('waiting for the replica to reach a position', () => {
  void it('answers at once when it is there, and no when it stays behind', async () => {
    assert.equal(
      await replicaReached(replicaAnswering(standbyAt('0/500')), false, '0/4FF', 1_000),
      true,
    );
    assert.equal(
      await replicaReached(replicaAnswering(standbyAt('0/500')), false, '0/501', 100),
      false,
    );
  });

  void it('keeps to its time limit when the replica never answers', async () => {
    const started = performance.now();
    assert.equal(await replicaReached(replicaAnswering('never'), false, '0/1', 150), false);
    const took = performance.now() - started;
    assert.ok(took < 1_000, `took ${took} ms`);
  });
});
