import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { newIdInPartition } from '../domain/ids.ts';
import { EVENT_INDEX_BUCKETS, eventIndexBucket, partitionKeys } from './keys.ts';

void describe('eventIndexBucket', () => {
  void it('reads three hex digits of the random part, whatever their case', () => {
    assert.equal(eventIndexBucket('01a231cc-e2e8-7118-ae12-0ff595ab4dbc'), 0x0ff);
    assert.equal(
      eventIndexBucket('01a231cc-e2e8-7118-ae12-FFF595ab4dbc'),
      0xfff % EVENT_INDEX_BUCKETS,
    );
    assert.equal(
      eventIndexBucket('01A231CC-E2E8-7118-AE12-ABC595AB4DBC'),
      0xabc % EVENT_INDEX_BUCKETS,
    );
  });

  void it('puts ids without hex digits there in bucket 0', () => {
    assert.equal(eventIndexBucket(''), 0);
    assert.equal(eventIndexBucket('not-a-uuid'), 0);
    assert.equal(eventIndexBucket('01a231cc-e2e8-7118-ae12-1g2595ab4dbc'), 0);
  });

  void it('spreads the ids of one partition over the buckets', () => {
    const counts = new Map<number, number>();
    for (let i = 0; i < 20_000; i++) {
      const bucket = eventIndexBucket(newIdInPartition(3, 8));
      assert.ok(bucket >= 0 && bucket < EVENT_INDEX_BUCKETS);
      counts.set(bucket, (counts.get(bucket) ?? 0) + 1);
    }
    assert.equal(counts.size, EVENT_INDEX_BUCKETS, 'every bucket used');
    // 20,000 / 1,024 ≈ 19.5 a bucket: none anywhere near the 128 fields of a compact hash.
    assert.ok(Math.max(...counts.values()) < 64);
  });

  void it('keeps every bucket of a partition in its hash slot', () => {
    const keys = partitionKeys('outpost:site', 5);
    assert.match(
      keys.eventIndex('01a231cc-e2e8-7118-ae12-0ff595ab4dbc'),
      /^outpost:site:\{p5\}:event-index:255$/,
    );
    assert.match(keys.legacyEventIndex, /\{p5\}/);
  });
});
