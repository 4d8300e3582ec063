import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { describe, it } from 'node:test';
import {
  isUuid,
  newIdInPartition,
  partitionForText,
  partitionOf,
  partitionOfScopeHash,
} from './ids.ts';

void describe('ids', () => {
  void it('mints UUIDv7 ids that name the requested partition for any partition count', () => {
    for (const partitions of [1, 3, 8, 13, 1024]) {
      for (let partition = 0; partition < partitions; partition += Math.ceil(partitions / 7)) {
        const id = newIdInPartition(partition, partitions);
        assert.ok(isUuid(id), id);
        assert.equal(id[14], '7', `version nibble of ${id}`);
        assert.match(id[19] ?? '', /[89ab]/, `variant of ${id}`);
        assert.equal(partitionOf(id, partitions), partition);
      }
    }
  });

  void it('orders ids by creation time', () => {
    const first = newIdInPartition(0, 8);
    const second = newIdInPartition(5, 8);
    assert.ok(first.slice(0, 13) <= second.slice(0, 13));
  });

  void it('orders the ids one process mints within a millisecond, whatever their partitions', () => {
    const ids = Array.from({ length: 2000 }, (_, n) => newIdInPartition(n % 8, 8));
    const sameMillisecond = ids.filter(
      (id, n) => n > 0 && id.slice(0, 13) === ids[n - 1]?.slice(0, 13),
    );
    assert.ok(sameMillisecond.length > 0, 'some ids share a millisecond');
    assert.deepEqual([...ids].sort(), ids);
  });

  void it('chooses the same partition for the same text', () => {
    assert.equal(partitionForText('POST /x key-1', 8), partitionForText('POST /x key-1', 8));
    const spread = new Set(Array.from({ length: 64 }, (_, i) => partitionForText(`k${i}`, 8)));
    assert.ok(spread.size > 4, 'texts spread over partitions');
  });

  void it("tells a scope's partition from its hash as from its text, as builds before did", () => {
    for (const scope of ['POST /executed_obs_units/start k1', 'PATCH /executed_obs_units/x k2']) {
      const digest = createHash('sha256').update(scope).digest();
      for (const partitions of [4, 8, 13]) {
        const before = digest.readUInt32BE(0) % partitions;
        assert.equal(partitionForText(scope, partitions), before);
        assert.equal(partitionOfScopeHash(digest.toString('hex'), partitions), before);
      }
    }
  });
});
