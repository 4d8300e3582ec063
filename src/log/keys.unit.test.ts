import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { newIdInPartition } from '../domain/ids.ts';
import {
  EVENT_INDEX_BUCKETS,
  eventIndexBucket,
  INFLIGHT_BUCKETS,
  idBucket,
  partitionKeys,
} from './keys.ts';

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

void describe('the in-flight index buckets', () => {
  void it('puts an aggregate in the bucket of its id, one of the type’s buckets, in its slot', () => {
    const keys = partitionKeys('outpost:site', 5);
    const id = '01a231cc-e2e8-7118-ae12-0ff595ab4dbc';
    assert.equal(
      keys.inflight('raw_data_file', id),
      `outpost:site:{p5}:inflight-ids:raw_data_file:${0x0ff % INFLIGHT_BUCKETS}`,
    );
    const buckets = Array.from({ length: INFLIGHT_BUCKETS }, (_, n) =>
      keys.inflightBucket('raw_data_file', n),
    );
    assert.equal(new Set(buckets).size, INFLIGHT_BUCKETS);
    assert.ok(buckets.includes(keys.inflight('raw_data_file', newIdInPartition(5, 8))));
    assert.ok(!buckets.includes(keys.legacyInflightIndex('raw_data_file')));
    // The scripts read a bucket's number off the end of its key.
    assert.ok(buckets.every((key, n) => key.endsWith(`:${n}`)));
    const all = [
      ...buckets,
      keys.legacyInflightIndex('raw_data_file'),
      keys.inflightBucketsInUse('raw_data_file'),
    ];
    assert.ok(all.every((k) => k.includes('{p5}')));
  });

  void it('spreads aggregates evenly enough that each bucket stays a compact hash', () => {
    const counts = new Map<number, number>();
    for (let i = 0; i < 20_000; i++) {
      const bucket = idBucket(newIdInPartition(1, 8), INFLIGHT_BUCKETS);
      counts.set(bucket, (counts.get(bucket) ?? 0) + 1);
    }
    assert.equal(counts.size, INFLIGHT_BUCKETS, 'every bucket used');
    // ≈ 78 a bucket on average: under the 128 fields of a listpack hash.
    assert.ok(Math.max(...counts.values()) < 128);
  });
});
