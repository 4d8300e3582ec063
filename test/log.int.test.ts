import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { setTimeout as delay } from 'node:timers/promises';
import { Redis as IORedis, type Redis } from 'ioredis';
import { parseLsn } from '../src/db/lsn.ts';
import type { AggregateType, Envelope } from '../src/domain/events.ts';
import { newIdInPartition } from '../src/domain/ids.ts';
import { LiveFeed } from '../src/live/live-feed.ts';
import {
  decodeLive,
  encodeLive,
  type LiveItem,
  type LiveMessage,
} from '../src/live/live-message.ts';
import { decodeEntry, encodeFieldPerProperty } from '../src/log/codec.ts';
import {
  type DeadLetter,
  DeadLetters,
  failedEntryOf,
  failedEntryOfEvent,
  LaterEventsInFlightError,
  type LetterReads,
  LettersStillArrivingError,
  NotHolderError,
  type RetriedLetter,
  UndecodableLetterOfAggregateError,
} from '../src/log/dead-letters.ts';
import { compareEntryIds, timeMs } from '../src/log/entry-id.ts';
import {
  type AppendRequest,
  type AppendResult,
  AppendsClosedError,
  type AppliedRecord,
  type CreationFilter,
  EventLog,
} from '../src/log/event-log.ts';
import {
  CONSUMER_GROUP,
  INFLIGHT_BUCKETS,
  liveListenersKey,
  liveStreamKey,
  partitionCountKey,
  processRosterKey,
} from '../src/log/keys.ts';
import { createRedis, dropLateResends } from '../src/log/redis.ts';
import { replayReachMs, trimHalfHistory, trimPartition } from '../src/log/retention.ts';
import { createLogger } from '../src/observability/logger.ts';
import { createMetrics } from '../src/observability/metrics.ts';
import { readBuffer, totalsOf } from '../src/ops/buffer.ts';
import {
  checkPartitionCount,
  PartitionCountError,
  recordedPartitions,
} from '../src/ops/partition-count.ts';
import { inspectPending, stillPendingAfter } from '../src/ops/pending.ts';
import { replay } from '../src/ops/replay.ts';
import { CircuitBreaker } from '../src/projector/circuit-breaker.ts';
import { type ConsumerDeps, PartitionConsumer } from '../src/projector/partition-consumer.ts';
import { readEvent } from '../src/read/events.ts';
import { Harness, testStack, waitFor, withField } from './harness/harness.ts';
import { BlackholeProxy } from './harness/proxy.ts';

const fileEvent = (aggregateId: string, n: number): Envelope =>
  ({
    event_id: newIdInPartition(0, 4),
    aggregate_id: aggregateId,
    aggregate_type: 'raw_data_file',
    type: 'RawDataFileRegistered',
    version: 1,
    site: 'log-test',
    accepted_at: Date.now(),
    data: { n },
  }) as unknown as Envelope;

/**
 * Checks that the in-use set of a partition's file buckets names exactly the buckets holding
 * anything (the merged list reads only those), and answers it.
 */
const bucketsInUse = async (
  redis: Redis,
  log: EventLog,
  partition: number,
  type: AggregateType = 'raw_data_file',
) => {
  const keys = log.keys(partition);
  const inUse = (await redis.smembers(keys.inflightBucketsInUse(type)))
    .map(Number)
    .sort((x, y) => x - y);
  const holding: number[] = [];
  for (let n = 0; n < INFLIGHT_BUCKETS; n += 1) {
    if (await redis.exists(keys.inflightBucket(type, n))) {
      holding.push(n);
    }
  }
  assert.deepEqual(inUse, holding, 'the in-use set names exactly the buckets holding anything');
  return inUse;
};

/** Delivers a partition's new entries to a consumer, as the projector would: XACK then has them. */
const deliver = (redis: Redis, stream: string) =>
  redis.xreadgroup('GROUP', CONSUMER_GROUP, 'c', 'COUNT', 1000, 'STREAMS', stream, '>');

/** What the projector records for an applied file event, as the acker reads it back. */
const appliedRecord = (event: Envelope, entryId: string, lsn = '0/1'): AppliedRecord => ({
  lsn,
  entryId,
  eventId: event.event_id,
  aggregateId: event.aggregate_id,
  aggregateType: 'raw_data_file',
});

void describe('the local log', () => {
  let h: Harness;
  let redis: Redis;
  let log: EventLog;
  before(async () => {
    h = await Harness.start({ role: 'none' });
    redis = h.serviceRedis();
    await redis.connect();
    log = new EventLog(redis, h.config.namespace, h.config.partitions);
    await log.ensureGroups();
  });
  after(async () => {
    redis.disconnect();
    await h?.close();
  });

  /** `work` with this site's log reached through a proxy the test controls, as a service reaches it. */
  const throughProxy = async (
    work: (proxied: EventLog, proxy: BlackholeProxy) => Promise<void>,
  ): Promise<void> => {
    const proxy = await BlackholeProxy.start(testStack().redisPort);
    const client = createRedis({ ...h.config, redisUrl: `redis://127.0.0.1:${proxy.port}` });
    client.on('error', () => undefined);
    try {
      await client.connect();
      await work(new EventLog(client, h.config.namespace, h.config.partitions), proxy);
    } finally {
      client.disconnect();
      await proxy.close();
    }
  };

  void describe('the in-flight index', () => {
    /** A file event in a partition's stream as an earlier build wrote it, a field per property. */
    const earlierEntry = async (partition: number, aggregateId: string, n: number) => {
      const event = { ...fileEvent(aggregateId, n), event_id: newIdInPartition(partition, 4) };
      const entryId = (await redis.xadd(
        log.keys(partition).stream,
        '*',
        ...encodeFieldPerProperty(event),
      )) as string;
      return { event, entryId };
    };

    void it('keeps each aggregate’s pending entries in stream order and forgets them once acknowledged', async () => {
      const [a, b] = [newIdInPartition(0, 4), newIdInPartition(0, 4)];
      const appended: string[] = [];
      for (const [i, id] of [a, b, a, a].entries()) {
        const result = await log.append({ partition: 0, events: [fileEvent(id as string, i)] });
        assert.equal(result.kind, 'appended');
        appended.push(result.kind === 'appended' ? (result.entryIds[0] ?? '') : '');
      }
      assert.ok((await bucketsInUse(redis, log, 0)).length > 0);
      const ofA = await log.readInflight(a as string, 0);
      assert.deepEqual(
        ofA.map((e) => e.entryId),
        [appended[0], appended[2], appended[3]],
      );
      assert.deepEqual(
        (await log.inflightAggregateIds('raw_data_file')).map((x) => x.id).sort(),
        [a, b].sort(),
      );
      // Delivered to a consumer, as the projector would, so that XACK has something to acknowledge.
      await redis.xreadgroup(
        'GROUP',
        CONSUMER_GROUP,
        'c',
        'COUNT',
        10,
        'STREAMS',
        log.keys(0).stream,
        '>',
      );
      // Acknowledge A's middle entry first, then the rest: order of removal does not matter.
      const record = (entryId: string) => {
        const entry = ofA.find((e) => e.entryId === entryId);
        assert.ok(entry, `entry ${entryId} is A's`);
        return appliedRecord(entry.event, entryId);
      };
      await log.recordApplied(0, [record(appended[2] as string)]);
      assert.equal(await log.ack(0, [record(appended[2] as string)]), 1);
      assert.deepEqual(
        (await log.readInflight(a as string, 0, 'raw_data_file')).map((e) => e.entryId),
        [appended[0], appended[3]],
      );
      const rest = [record(appended[0] as string), record(appended[3] as string)];
      await log.recordApplied(0, rest);
      assert.equal(await log.ack(0, rest), 2);
      assert.deepEqual(await log.readInflight(a as string, 0), []);
      assert.deepEqual(
        (await log.inflightAggregateIds('raw_data_file')).map((x) => x.id),
        [b],
      );
      assert.equal((await bucketsInUse(redis, log, 0)).length, 1, 'only B’s bucket is in use');
    });

    void it("keeps a hot aggregate's pending entries in a list of its own: appends and acks stay constant work", async () => {
      const keys = log.keys(1);
      const hot = newIdInPartition(1, 4);
      const bucket = keys.inflight('raw_data_file', hot);
      const appendOne = async (aggregateId: string, n: number) => {
        const event = { ...fileEvent(aggregateId, n), event_id: newIdInPartition(1, 4) };
        const result = await log.append({ partition: 1, events: [event] });
        assert.equal(result.kind, 'appended');
        return { event, entryId: result.kind === 'appended' ? (result.entryIds[0] ?? '') : '' };
      };
      const appended: { event: Envelope; entryId: string }[] = [];
      for (let n = 0; n < 200; n += 1) {
        appended.push(await appendOne(hot, n));
      }
      // Some in one request, as a batch of a unit's files would come.
      const batch = Array.from({ length: 5 }, (_, n) => ({
        ...fileEvent(hot, 200 + n),
        event_id: newIdInPartition(1, 4),
      }));
      const batchResult = await log.append({ partition: 1, events: batch });
      assert.equal(batchResult.kind, 'appended');
      if (batchResult.kind === 'appended') {
        appended.push(
          ...batch.map((event, i) => ({ event, entryId: batchResult.entryIds[i] ?? '' })),
        );
      }
      const entryIds = appended.map((a) => a.entryId);
      assert.equal(await redis.hget(bucket, hot), 'spilled');
      assert.deepEqual(
        await redis.lrange(keys.inflightList('raw_data_file', hot), 0, -1),
        entryIds,
      );
      assert.equal(
        await redis.object('ENCODING', bucket),
        'listpack',
        'no field of the bucket outgrows a listpack',
      );
      assert.deepEqual(
        (await log.readInflight(hot, 1)).map((e) => e.entryId),
        entryIds,
      );

      // What an append writes to the append-only file does not grow with the aggregate's backlog:
      // 20 more appends to it against 20 appends to aggregates of their own.
      const aofBytesOf = async (append: (n: number) => Promise<unknown>) => {
        for (;;) {
          const info = async () => {
            const text = await redis.info('persistence');
            const field = (name: string) => Number(new RegExp(`${name}:(\\d+)`).exec(text)?.[1]);
            return { size: field('aof_current_size'), rewrites: field('aof_rewrites') };
          };
          const before = await info();
          for (let n = 0; n < 20; n += 1) {
            await append(n);
          }
          const after = await info();
          if (after.rewrites === before.rewrites) {
            return after.size - before.size;
          }
        }
      };
      const toOwn: typeof appended = [];
      const toOwnAggregates = await aofBytesOf(async (n) =>
        toOwn.push(await appendOne(newIdInPartition(1, 4), n)),
      );
      const toHot: typeof appended = [];
      const toHotAggregate = await aofBytesOf(async (n) => toHot.push(await appendOne(hot, n)));
      appended.push(...toHot);
      assert.ok(toOwnAggregates > 0);
      assert.ok(
        toHotAggregate < 1.5 * toOwnAggregates,
        `20 appends to an aggregate with 205 pending wrote ${toHotAggregate} AOF bytes, to new ones ${toOwnAggregates}`,
      );

      await deliver(redis, keys.stream);
      // One from the middle first, then the rest in stream order, as the acker sends them.
      const [middle] = appended.splice(100, 1);
      assert.ok(middle);
      const records = (entries: typeof appended) =>
        entries.map(({ event, entryId }) => appliedRecord(event, entryId));
      await log.recordApplied(1, records([middle]));
      assert.equal(await log.ack(1, records([middle])), 1);
      assert.deepEqual(
        await redis.lrange(keys.inflightList('raw_data_file', hot), 0, -1),
        appended.map((a) => a.entryId),
      );
      for (let i = 0; i < appended.length; i += 50) {
        const chunk = records(appended.slice(i, i + 50));
        await log.recordApplied(1, chunk);
        assert.equal(await log.ack(1, chunk), chunk.length);
      }
      await log.recordApplied(1, records(toOwn));
      assert.equal(await log.ack(1, records(toOwn)), toOwn.length);
      assert.deepEqual(await log.readInflight(hot, 1), []);
      assert.equal(await redis.exists(keys.inflightList('raw_data_file', hot)), 0);
      assert.equal(await redis.hexists(bucket, hot), 0);
      await bucketsInUse(redis, log, 1);
    });

    void it("folds an earlier build's one-hash index of a type into the buckets at start", async () => {
      const keys = log.keys(2);
      const legacy = keys.legacyInflightIndex('raw_data_file');
      const [a, b] = [newIdInPartition(2, 4), newIdInPartition(2, 4)];
      // What an earlier build left behind: A's two entries and B's one, in the one hash.
      const [a1, a2, b1] = [
        await earlierEntry(2, a, 1),
        await earlierEntry(2, a, 2),
        await earlierEntry(2, b, 3),
      ];
      await redis.hset(legacy, a, `${a1.entryId} ${a2.entryId}`, b, b1.entryId);
      // This build appends A's third entry to A's bucket.
      const third = { ...fileEvent(a, 4), event_id: newIdInPartition(2, 4) };
      const appended = await log.append({ partition: 2, events: [third] });
      assert.equal(appended.kind, 'appended');
      const a3 = appended.kind === 'appended' ? (appended.entryIds[0] ?? '') : '';
      assert.equal(await redis.hget(keys.inflight('raw_data_file', a), a), a3);
      const inPartition = async () =>
        (await log.inflightAggregateIds('raw_data_file'))
          .filter((x) => x.partition === 2 && (x.id === a || x.id === b))
          .map((x) => x.id)
          .sort();

      const expectedA = [a1.entryId, a2.entryId, a3];
      assert.deepEqual(
        (await log.readInflight(a, 2)).map((e) => e.entryId),
        expectedA,
        'both indexes read before the upgrade, in stream order',
      );
      assert.deepEqual(await inPartition(), [a, b].sort(), 'each listed once');
      await deliver(redis, keys.stream);
      const record = appliedRecord(b1.event, b1.entryId);
      await log.recordApplied(2, [record]);
      assert.equal(await log.ack(2, [record]), 1);
      assert.equal(await redis.hexists(legacy, b), 0, 'acknowledged out of the old hash too');
      assert.deepEqual(await inPartition(), [a]);

      await log.ensureGroups();
      assert.equal(await redis.exists(legacy), 0);
      await bucketsInUse(redis, log, 2);
      assert.equal(await redis.hget(keys.inflight('raw_data_file', a), a), expectedA.join(' '));
      assert.deepEqual(
        (await log.readInflight(a, 2, 'raw_data_file')).map((e) => e.entryId),
        expectedA,
      );
      await log.ensureGroups();
      assert.equal(
        await redis.hget(keys.inflight('raw_data_file', a), a),
        expectedA.join(' '),
        'a second start moves nothing twice',
      );
      const rest = [
        appliedRecord(a1.event, a1.entryId),
        appliedRecord(a2.event, a2.entryId),
        appliedRecord(third, a3),
      ];
      await log.recordApplied(2, rest);
      assert.equal(await log.ack(2, rest), 3);
      assert.deepEqual(await log.readInflight(a, 2), []);
      await bucketsInUse(redis, log, 2);
      assert.equal(await redis.hexists(keys.inflight('raw_data_file', a), a), 0);
    });

    void it("folds an earlier build's long id list of an aggregate into a list of its own", async () => {
      const keys = log.keys(2);
      const aggregateId = newIdInPartition(2, 4);
      const earlier: { event: Envelope; entryId: string }[] = [];
      for (let n = 0; n < 6; n += 1) {
        earlier.push(await earlierEntry(2, aggregateId, n));
      }
      await redis.hset(
        keys.legacyInflightIndex('raw_data_file'),
        aggregateId,
        earlier.map((e) => e.entryId).join(' '),
      );
      const later = { ...fileEvent(aggregateId, 6), event_id: newIdInPartition(2, 4) };
      const appended = await log.append({ partition: 2, events: [later] });
      assert.equal(appended.kind, 'appended');
      const all = [
        ...earlier,
        { event: later, entryId: appended.kind === 'appended' ? (appended.entryIds[0] ?? '') : '' },
      ];

      await log.ensureGroups();
      const bucket = keys.inflight('raw_data_file', aggregateId);
      const list = keys.inflightList('raw_data_file', aggregateId);
      assert.equal(await redis.hget(bucket, aggregateId), 'spilled');
      assert.deepEqual(
        await redis.lrange(list, 0, -1),
        all.map((e) => e.entryId),
        "the earlier build's ids first, then this build's",
      );
      assert.equal(await redis.object('ENCODING', bucket), 'listpack');
      assert.deepEqual(
        (await log.readInflight(aggregateId, 2)).map((e) => e.entryId),
        all.map((e) => e.entryId),
      );

      await deliver(redis, keys.stream);
      const records = all.map(({ event, entryId }) => appliedRecord(event, entryId));
      await log.recordApplied(2, records);
      assert.equal(await log.ack(2, records), records.length);
      assert.deepEqual(await log.readInflight(aggregateId, 2), []);
      assert.equal(await redis.exists(list), 0);
      assert.equal(await redis.hexists(bucket, aggregateId), 0);
      await bucketsInUse(redis, log, 2);
    });

    void it('folds the per-aggregate lists of an earlier build into the index at start', async () => {
      const keys = log.keys(1);
      const aggregateId = newIdInPartition(1, 4);
      const event = { ...fileEvent(aggregateId, 9), event_id: newIdInPartition(1, 4) };
      // What an earlier build left behind: the entry, its list and its type's set.
      const entryId = (await redis.xadd(
        keys.stream,
        '*',
        ...encodeFieldPerProperty(event),
      )) as string;
      await redis.rpush(keys.legacyInflight(aggregateId), entryId);
      await redis.sadd(keys.legacyInflightAggregates('raw_data_file'), aggregateId);
      assert.deepEqual(await log.readInflight(aggregateId, 1), [], 'invisible before the upgrade');

      await log.ensureGroups();
      const entries = await log.readInflight(aggregateId, 1);
      assert.deepEqual(
        entries.map((e) => [e.entryId, e.event.event_id]),
        [[entryId, event.event_id]],
      );
      assert.equal(await redis.exists(keys.legacyInflight(aggregateId)), 0);
      assert.equal(await redis.exists(keys.legacyInflightAggregates('raw_data_file')), 0);
      await bucketsInUse(redis, log, 1);
      assert.ok(
        (await log.inflightAggregateIds('raw_data_file')).some((x) => x.id === aggregateId),
        'listed from its bucket',
      );
      await log.ensureGroups();
      assert.equal(
        (await log.readInflight(aggregateId, 1)).length,
        1,
        'a second start moves nothing twice',
      );
    });

    void it("folds an earlier build's one hash page by page, however large", async () => {
      const keys = log.keys(1);
      const legacy = keys.legacyInflightIndex('raw_data_package');
      // Large enough to be a hashtable, whose HSCAN answers a page at a time.
      const aggregates = Array.from({ length: 1200 }, (_, n) => [
        newIdInPartition(1, 4),
        `${n + 1}-0`,
      ]);
      await redis.hset(legacy, ...aggregates.flat());
      assert.equal(await redis.call('OBJECT', 'ENCODING', legacy), 'hashtable');

      await log.ensureGroups();
      assert.equal(await redis.exists(legacy), 0);
      for (const [id, entryId] of aggregates) {
        assert.equal(
          await redis.hget(keys.inflight('raw_data_package', id as string), id as string),
          entryId,
        );
      }
      const listed = new Set((await log.inflightAggregateIds('raw_data_package')).map((x) => x.id));
      assert.ok(aggregates.every(([id]) => listed.has(id as string)));
      await bucketsInUse(redis, log, 1, 'raw_data_package');
      const inUse = await redis.smembers(keys.inflightBucketsInUse('raw_data_package'));
      const encodings = await Promise.all(
        inUse.map((n) =>
          redis.call('OBJECT', 'ENCODING', keys.inflightBucket('raw_data_package', Number(n))),
        ),
      );
      assert.deepEqual(new Set(encodings), new Set(['listpack']), 'each bucket a compact listpack');
      await redis.del(
        ...Array.from({ length: INFLIGHT_BUCKETS }, (_, n) =>
          keys.inflightBucket('raw_data_package', n),
        ),
        keys.inflightBucketsInUse('raw_data_package'),
      );
    });

    void it('keeps a bucket in use while another aggregate is in it, and heals the set at start', async () => {
      const keys = log.keys(0);
      // A bucket no earlier test left an aggregate in (one in 256 would share it).
      const taken = new Set(await bucketsInUse(redis, log, 0));
      let a = newIdInPartition(0, 4);
      while (taken.has(Number(keys.inflight('raw_data_file', a).split(':').at(-1)))) {
        a = newIdInPartition(0, 4);
      }
      // B shares A's bucket: the same digits 24-26, its own partition digits at the end.
      const other = newIdInPartition(0, 4);
      const b = `${other.slice(0, 24)}${a.slice(24, 27)}${other.slice(27)}`;
      assert.equal(keys.inflight('raw_data_file', a), keys.inflight('raw_data_file', b));
      const bucket = Number(keys.inflight('raw_data_file', a).split(':').at(-1));
      const records: AppliedRecord[] = [];
      for (const id of [a, b]) {
        const event = fileEvent(id, 0);
        const result = await log.append({ partition: 0, events: [event] });
        assert.equal(result.kind, 'appended');
        records.push(
          appliedRecord(event, result.kind === 'appended' ? (result.entryIds[0] ?? '') : ''),
        );
      }
      await deliver(redis, keys.stream);
      await log.recordApplied(0, records);
      assert.equal(await log.ack(0, records.slice(0, 1)), 1);
      assert.ok((await bucketsInUse(redis, log, 0)).includes(bucket), 'B is still in it');

      // A set that drifted, by hand: the bucket left out, an empty one named.
      await redis.srem(keys.inflightBucketsInUse('raw_data_file'), String(bucket));
      await redis.sadd(
        keys.inflightBucketsInUse('raw_data_file'),
        String((bucket + 1) % INFLIGHT_BUCKETS),
      );
      assert.ok(
        !(await log.inflightAggregateIds('raw_data_file')).some((x) => x.id === b),
        'hidden from the list by the drift',
      );
      await log.ensureGroups();
      assert.ok((await bucketsInUse(redis, log, 0)).includes(bucket), 'healed at start');
      assert.ok((await log.inflightAggregateIds('raw_data_file')).some((x) => x.id === b));

      assert.equal(await log.ack(0, records.slice(1)), 1);
      assert.ok(!(await bucketsInUse(redis, log, 0)).includes(bucket), 'empty, no longer in use');
    });

    void it('drops a dead-lettered event from its bucket, and from an earlier build’s hash', async () => {
      const keys = log.keys(3);
      const deadLetters = new DeadLetters(log);
      const viaBucket = fileEvent(newIdInPartition(3, 4), 0);
      const appended = await log.append({ partition: 3, events: [viaBucket] });
      assert.equal(appended.kind, 'appended');
      const bucketEntry = appended.kind === 'appended' ? (appended.entryIds[0] ?? '') : '';
      // The other as an earlier build left it: in the stream and its one hash.
      const viaLegacy = {
        ...fileEvent(newIdInPartition(3, 4), 1),
        event_id: newIdInPartition(3, 4),
      };
      const legacyEntry = (await redis.xadd(
        keys.stream,
        '*',
        ...encodeFieldPerProperty(viaLegacy),
      )) as string;
      await redis.hset(
        keys.legacyInflightIndex('raw_data_file'),
        viaLegacy.aggregate_id,
        legacyEntry,
      );
      const listed = async () =>
        (await log.inflightAggregateIds('raw_data_file'))
          .map((x) => x.id)
          .filter((id) => id === viaBucket.aggregate_id || id === viaLegacy.aggregate_id)
          .sort();
      assert.deepEqual(await listed(), [viaBucket.aggregate_id, viaLegacy.aggregate_id].sort());

      await deliver(redis, keys.stream);
      const history = [{ at: new Date().toISOString(), error: 'boom' }];
      await deadLetters.add(3, failedEntryOfEvent(bucketEntry, viaBucket), history);
      await deadLetters.add(3, failedEntryOfEvent(legacyEntry, viaLegacy), history);
      assert.deepEqual(await listed(), []);
      assert.deepEqual(await log.readInflight(viaBucket.aggregate_id, 3), []);
      assert.deepEqual(await log.readInflight(viaLegacy.aggregate_id, 3), []);
      assert.equal(await redis.exists(keys.legacyInflightIndex('raw_data_file')), 0);
      await bucketsInUse(redis, log, 3);
    });

    void it('trims the older half of acknowledged history under pressure, never a pending entry', async () => {
      // A log of its own: its entries are named by times in the past.
      const trimLog = new EventLog(redis, `${h.config.namespace}-trim`, 1);
      await trimLog.ensureGroups();
      const { stream } = trimLog.keys(0);
      const now = timeMs(await redis.time());
      const ids = [60_000, 50_000, 20_000, 10_000].map((ago) => `${now - ago}-0`);
      for (const id of ids) {
        await redis.xadd(stream, id, 'junk', 'x');
      }
      await deliver(redis, stream);
      const remaining = async () => (await redis.xrange(stream, '-', '+')).map(([id]) => id);
      // The oldest still pending: nothing may go.
      await redis.xack(stream, CONSUMER_GROUP, ...ids.slice(1));
      assert.equal((await trimHalfHistory(trimLog, 0)).trimmed, 0);
      assert.deepEqual(await remaining(), ids);
      // All acknowledged: the entries older than half the history's span (30 s) go.
      await redis.xack(stream, CONSUMER_GROUP, ids[0] as string);
      const { trimmed, reachesBackTo } = await trimHalfHistory(trimLog, 0);
      assert.equal(trimmed, 2);
      assert.deepEqual(await remaining(), ids.slice(2));
      assert.equal(reachesBackTo, now - 20_000);
    });

    void it('trims nothing from a partition nothing was delivered from, new or with entries waiting', async () => {
      const fresh = new EventLog(redis, `${h.config.namespace}-undelivered`, 1);
      await fresh.ensureGroups();
      const { stream } = fresh.keys(0);
      // Its group has delivered nothing (0-0): Redis refused the range below that, and the error
      // stopped the trim of every partition after it.
      assert.equal(await trimPartition(fresh, 0, 0), 0);
      const waiting = await redis.xadd(stream, '*', 'junk', 'x');
      assert.equal(await trimPartition(fresh, 0, 0), 0);
      assert.deepEqual(
        (await redis.xrange(stream, '-', '+')).map(([id]) => id),
        [waiting],
      );
    });

    /** A partition of its own whose entries, `ago` ms old by Redis's clock, are all delivered and acknowledged. */
    const acknowledgedHistory = async (name: string, agos: number[], redisClient = redis) => {
      const own = new EventLog(redisClient, `${h.config.namespace}-${name}`, 1);
      await own.ensureGroups();
      const { stream, trimmedThrough } = own.keys(0);
      const now = timeMs(await redis.time());
      const ids = agos.map((ago) => `${now - ago}-0`);
      for (const id of ids) {
        await redis.xadd(stream, id, 'junk', 'x');
      }
      await deliver(redis, stream);
      await redis.xack(stream, CONSUMER_GROUP, ...ids);
      const remaining = async () => (await redis.xrange(stream, '-', '+')).map(([id]) => id);
      return { log: own, stream, trimmedThrough, now, ids, remaining };
    };

    void it('moves the trimmed-through mark forward only, whichever of two trims finishes last', async () => {
      const {
        log: marked,
        trimmedThrough,
        now,
        ids,
      } = await acknowledgedHistory('mark', [40_000, 30_000, 20_000, 10_000]);
      // Another trim went further meanwhile and recorded its mark first.
      const further = `${now - 1_000}-0`;
      await redis.set(trimmedThrough, further);
      assert.equal(await trimPartition(marked, 0, 25_000), 2);
      assert.equal(await redis.get(trimmedThrough), further, 'not moved back');
      await redis.del(trimmedThrough);
      assert.equal(await trimPartition(marked, 0, 15_000), 1);
      assert.equal(await redis.get(trimmedThrough), ids[2], 'recorded when it goes further');
    });

    void it('says how far back a replay finds every partition whole: past the newest trim, not the oldest entry kept', async () => {
      const reachLog = new EventLog(redis, `${h.config.namespace}-reach`, 2);
      await reachLog.ensureGroups();
      assert.equal(await replayReachMs(reachLog), undefined, 'nothing kept, nothing trimmed');
      const now = timeMs(await redis.time());
      const append = async (partition: number, agos: number[]) => {
        const { stream } = reachLog.keys(partition);
        const ids = agos.map((ago) => `${now - ago}-0`);
        for (const id of ids) {
          await redis.xadd(stream, id, 'junk', 'x');
        }
        await deliver(redis, stream);
        return { stream, ids };
      };
      // Partition 1 keeps an old entry pending; partition 0's history is acknowledged.
      const held = await append(1, [90_000]);
      const history = await append(0, [40_000, 30_000, 20_000]);
      await redis.xack(history.stream, CONSUMER_GROUP, ...history.ids);
      assert.equal(await replayReachMs(reachLog), now - 90_000, 'untrimmed: the oldest entry');
      assert.equal(await trimPartition(reachLog, 0, 25_000, now), 2);
      assert.equal(await replayReachMs(reachLog), now - 30_000 + 1);
      assert.deepEqual(
        (await redis.xrange(held.stream, '-', '+')).map(([id]) => id),
        held.ids,
        'the pending entry stays, and would have named the reach',
      );
    });

    void it('trims nothing a re-created group has yet to deliver, whichever of its calls the re-creation comes before', async () => {
      // The group is lost and re-created from 0-0 (a projector meeting NOGROUP) while a trim runs.
      // A floor taken by separate calls, the re-creation between its look at the groups and its
      // look at the pending list, saw an empty pending list and the old group's delivery
      // position, and trimmed what the new group had yet to deliver.
      const agos = [30_000, 20_000, 10_000];
      let interleavings = 0;
      for (let before = 1; before <= 8; before += 1) {
        const {
          log: own,
          stream,
          ids,
          remaining,
        } = await acknowledgedHistory(`regroup-${before}`, agos);
        let armed = false;
        let calls = 0;
        let regrouped = false;
        const regrouping = new Proxy(redis, {
          get: (target, name) => {
            const value: unknown = Reflect.get(target, name, target);
            if (typeof value !== 'function') {
              return value;
            }
            if (!armed) {
              return value.bind(target);
            }
            return (...args: unknown[]) => {
              calls += 1;
              const regroup =
                calls === before
                  ? target
                      .xgroup('DESTROY', stream, CONSUMER_GROUP)
                      .then(() => target.xgroup('CREATE', stream, CONSUMER_GROUP, '0'))
                      .then(() => {
                        regrouped = true;
                      })
                  : Promise.resolve();
              return regroup.then(() => value.apply(target, args));
            };
          },
        });
        // Every call of the trim goes through the proxy, counted, once the log is built.
        const trimming = new EventLog(regrouping, own.namespace, 1);
        armed = true;
        const trimmed = await trimPartition(trimming, 0, 0);
        if (regrouped) {
          interleavings += 1;
          assert.equal(trimmed, 0, `re-created before call ${before}`);
          assert.deepEqual(await remaining(), ids);
        } else {
          assert.equal(trimmed, ids.length - 1, 'all but the last delivered, with no re-creation');
        }
      }
      assert.ok(interleavings >= 2, 'the trim makes its calls through the log, each one tried');
      // And with the group gone for good, nothing is known delivered: nothing goes either.
      const { log: lost, stream, ids, remaining } = await acknowledgedHistory('lost-group', agos);
      await redis.xgroup('DESTROY', stream, CONSUMER_GROUP);
      assert.equal(await trimPartition(lost, 0, 0), 0);
      assert.deepEqual(await remaining(), ids);
    });

    void it('records the mark of a trim made while Redis is past its maxmemory', async () => {
      // The trim frees memory and is not refused; a mark refused with it would tell a replay
      // reaching into the trimmed range that its history is whole.
      const {
        log: full,
        trimmedThrough,
        ids,
      } = await acknowledgedHistory('full', [30_000, 20_000]);
      await redis.config('SET', 'maxmemory', '1');
      try {
        await assert.rejects(redis.set(`${h.config.namespace}-full:probe`, 'x'), /OOM/);
        assert.equal(await trimPartition(full, 0, 25_000), 1);
      } finally {
        await redis.config('SET', 'maxmemory', '0');
      }
      assert.equal(await redis.get(trimmedThrough), ids[0]);
    });

    void it('drains past maxmemory: records, acknowledges, counts attempts and dead-letters, while appends are refused', async () => {
      const keys = log.keys(3);
      const deadLetters = new DeadLetters(log);
      const unit = newIdInPartition(3, 4);
      const [applied, failing] = [fileEvent(unit, 0), fileEvent(unit, 1)];
      const appended = await log.append({ partition: 3, events: [applied, failing] });
      assert.equal(appended.kind, 'appended');
      const [appliedEntry = '', failingEntry = ''] =
        appended.kind === 'appended' ? appended.entryIds : [];
      await deliver(redis, keys.stream);
      // Any write that may grow memory is refused now, as by a log that filled up.
      await redis.config('SET', 'maxmemory', '1');
      try {
        await assert.rejects(
          log.append({ partition: 3, events: [fileEvent(newIdInPartition(3, 4), 2)] }),
          /OOM/,
        );
        const record = appliedRecord(applied, appliedEntry);
        await log.recordApplied(3, [record]);
        assert.equal(await log.ack(3, [record]), 1);
        const history = await log.recordAttempt(3, failingEntry, 'violates check constraint');
        assert.equal(history?.length, 1);
        await deadLetters.add(3, failedEntryOfEvent(failingEntry, failing), history ?? []);
      } finally {
        await redis.config('SET', 'maxmemory', '0');
      }
      assert.deepEqual(await log.readInflight(unit, 3), []);
      assert.equal(await log.pendingCount(3), 0);
      assert.equal(await redis.hexists(keys.deadIndex, failing.event_id), 1);
    });
  });

  void describe('how far events are acknowledged', () => {
    void it('keeps the highest acknowledged commit LSN per partition, compared as LSNs, until forgotten', async () => {
      // A log of its own: the other tests' acknowledgements do not move its marks.
      const own = new EventLog(redis, `${h.config.namespace}:acked`, 2);
      await own.ensureGroups();
      assert.equal(await own.acknowledgedThrough(), undefined, 'nothing acknowledged yet');
      const ack = async (partition: number, lsns: readonly string[]) => {
        const records: AppliedRecord[] = [];
        for (const lsn of lsns) {
          const event = fileEvent(newIdInPartition(partition, 2), 0);
          const appended = await own.append({ partition, events: [event] });
          assert.equal(appended.kind, 'appended');
          const entryId = appended.kind === 'appended' ? (appended.entryIds[0] ?? '') : '';
          records.push(appliedRecord(event, entryId, lsn));
        }
        await redis.xreadgroup(
          'GROUP',
          CONSUMER_GROUP,
          'c',
          'STREAMS',
          own.keys(partition).stream,
          '>',
        );
        await own.recordApplied(partition, records);
        assert.equal(await own.ack(partition, records), records.length);
      };
      // As text '0/9' sorts after '0/10'; as LSNs it comes before.
      await ack(0, ['0/9', '0/10']);
      assert.equal(await own.acknowledgedThrough(), parseLsn('0/10'));
      await ack(1, ['1/A0000000']);
      assert.equal(
        await own.acknowledgedThrough(),
        parseLsn('1/A0000000'),
        'the highest of any partition',
      );
      // An acknowledgement of lower LSNs (records applied before a main database moved) never
      // takes a mark back.
      await ack(1, ['0/FF']);
      assert.equal(await own.acknowledgedThrough(), parseLsn('1/A0000000'));
      await own.forgetAcknowledgedThrough([1]);
      assert.equal(await own.acknowledgedThrough(), parseLsn('0/10'), "partition 0's mark stays");
      await own.forgetAcknowledgedThrough([0, 1]);
      assert.equal(await own.acknowledgedThrough(), undefined);
    });
  });

  void describe('start-up while Redis refuses every write', () => {
    // A replica refuses every write (READONLY) as a Redis that cannot save does (MISCONF); one
    // whose primary cannot be reached keeps its data.
    const refuseWrites = () => redis.call('REPLICAOF', '127.0.0.1', '1');
    const takeWrites = () => redis.call('REPLICAOF', 'NO', 'ONE');

    void it('starts on the groups there and leaves the upkeep for later', async () => {
      await refuseWrites();
      try {
        assert.match((await log.ensureGroups()) ?? '', /^READONLY /);
      } finally {
        await takeWrites();
      }
      assert.equal(await log.ensureGroups(), undefined, 'nothing refused once it takes writes');
    });

    void it("refuses to start while an earlier build's keys wait to be moved, saying why", async () => {
      const earlier = log.keys(1).legacyInflightAggregates('raw_data_file');
      await redis.sadd(earlier, 'some-aggregate');
      await refuseWrites();
      try {
        await assert.rejects(
          log.ensureGroups(),
          /keys of an earlier build .*\(READONLY .*\): start it once Redis takes writes again/,
        );
      } finally {
        await takeWrites();
        await redis.del(earlier);
      }
    });
  });

  void describe("counting what waits undelivered, whatever Redis's lag says", () => {
    /** A partition of its own with `n` entries, all delivered to the projector group. */
    const delivered = async (name: string, n: number) => {
      const own = new EventLog(redis, `${h.config.namespace}-${name}`, 1);
      await own.ensureGroups();
      const { stream } = own.keys(0);
      for (let i = 0; i < n; i += 1) {
        await redis.xadd(stream, '*', 'junk', String(i));
      }
      await deliver(redis, stream);
      const last = (await redis.xrevrange(stream, '+', '-', 'COUNT', 1))[0]?.[0] as string;
      const lagOf = async () => {
        const [group] = (await redis.xinfo('GROUPS', stream)) as unknown[][];
        return group?.[group.indexOf('lag') + 1];
      };
      const undelivered = async () =>
        totalsOf(await readBuffer(own)).pending -
        Number(((await redis.xpending(stream, CONSUMER_GROUP)) as [number])[0]);
      return { own, stream, last, lagOf, undelivered };
    };

    void it('counts none where every entry is delivered, and sets a stale counter right', async () => {
      const { stream, last, lagOf, undelivered } = await delivered('stale-lag', 5);
      // As Redis 7.0 leaves it restarted from an append-only file rewritten after 2 deliveries:
      // the deliveries since come back as XCLAIMs, which the counter does not count.
      await redis.xgroup('SETID', stream, CONSUMER_GROUP, last, 'ENTRIESREAD', 2);
      assert.equal(await lagOf(), 3, "Redis's own lag is wrong");
      assert.equal(await undelivered(), 0);
      assert.equal(await lagOf(), 0, 'the counter set right');
    });

    void it('counts what waits where Redis cannot say, and sets the counter from the count', async () => {
      const { own, stream, last, lagOf, undelivered } = await delivered('unknown-lag', 3);
      for (let i = 0; i < 4; i += 1) {
        await redis.xadd(stream, '*', 'junk', `later ${i}`);
      }
      // As Redis 7.0 leaves it restarted from an append-only file never rewritten: no counter.
      const forgetCounter = () => redis.xgroup('SETID', stream, CONSUMER_GROUP, last);
      await forgetCounter();
      assert.equal(await lagOf(), null, 'Redis cannot say');
      assert.equal(await undelivered(), 4, 'the four appended after the last delivery');
      assert.equal(await lagOf(), 4, 'the counter set from the count');

      await forgetCounter();
      const report = await inspectPending(
        { eventLog: own, main: h.main, replica: h.replica, replicaIsMain: false },
        { limit: 10 },
      );
      assert.equal(report.partitions[0]?.undelivered, 4, 'outpost pending counts them too');
    });

    void it('past the entries it counts, reports the most that can wait and sets the counter to it', async () => {
      const { stream, last, lagOf, undelivered } = await delivered('long-unknown-lag', 3);
      const appends = redis.pipeline();
      for (let i = 0; i < 10_050; i += 1) {
        appends.xadd(stream, '*', 'junk', `later ${i}`);
      }
      await appends.exec();
      await redis.xgroup('SETID', stream, CONSUMER_GROUP, last);
      // The stream holds 10,053 entries of which the 3 delivered are pending: at most 10,050 wait.
      assert.equal(await undelivered(), 10_050);
      assert.equal(await lagOf(), 10_050, 'the counter set, so the next look need not count');
    });
  });

  void describe('acknowledgement', () => {
    void it('queues a record call that ran already (sent again after a dropped connection) once', async () => {
      // A log of its own: the tests around it count this partition's queue and pending entries.
      const own = new EventLog(redis, `record-${randomUUID()}`, 4);
      await own.ensureGroups();
      const partition = 2;
      const event = {
        ...fileEvent(newIdInPartition(partition, 4), 0),
        event_id: newIdInPartition(partition, 4),
      };
      const result = await own.append({ partition, events: [event] });
      assert.equal(result.kind, 'appended');
      const entryId = result.kind === 'appended' ? (result.entryIds[0] as string) : '';
      const records = [appliedRecord(event, entryId, '0/A1')];
      await own.recordApplied(partition, records);
      await own.recordApplied(partition, records);
      assert.equal(await redis.llen(own.keys(partition).applied), 1);
      // Recorded anew at another LSN (applied again after the main database lost it): queued.
      await own.recordApplied(partition, [appliedRecord(event, entryId, '0/B2')]);
      assert.equal(await redis.llen(own.keys(partition).applied), 2);
    });

    void it('counts as stuck only the replayed entries still unacknowledged after the grace', async () => {
      const partition = 3;
      const entryIds: string[] = [];
      for (const n of [1, 2]) {
        const event = {
          ...fileEvent(newIdInPartition(partition, 4), n),
          event_id: newIdInPartition(partition, 4),
        };
        const result = await log.append({ partition, events: [event] });
        entryIds.push(result.kind === 'appended' ? (result.entryIds[0] as string) : '');
      }
      await deliver(redis, log.keys(partition).stream);
      const report = await inspectPending(
        { eventLog: log, main: h.main, replica: h.replica, replicaIsMain: false },
        { partition, limit: 10 },
      );
      const looked = report.entries.filter((e) => entryIds.includes(e.entry_id));
      assert.equal(looked.length, 2);
      // The acker takes the first just after the look, as it would one replayed a moment before.
      const stuck = stillPendingAfter(log, looked, 300);
      await redis.xack(log.keys(partition).stream, CONSUMER_GROUP, entryIds[0] as string);
      assert.deepEqual(
        (await stuck).map((e) => e.entry_id),
        [entryIds[1]],
      );
      await redis.xack(log.keys(partition).stream, CONSUMER_GROUP, entryIds[1] as string);
    });

    void it('leaves out of the pending list an entry acknowledged while its commit LSN was looked up', async () => {
      const partition = 3;
      const event = {
        ...fileEvent(newIdInPartition(partition, 4), 1),
        event_id: newIdInPartition(partition, 4),
      };
      const result = await log.append({ partition, events: [event] });
      const entryId = result.kind === 'appended' ? (result.entryIds[0] as string) : '';
      await deliver(redis, log.keys(partition).stream);
      const record = appliedRecord(event, entryId, '0/1');
      await log.recordApplied(partition, [record]);
      // The acker settles it after the list of pending entries, before their LSNs are read.
      const lookUp = log.appliedLsnOf.bind(log);
      log.appliedLsnOf = async (...args: Parameters<typeof lookUp>) => {
        if (args[0].includes(entryId)) {
          assert.equal(await log.ack(partition, [record]), 1);
        }
        return lookUp(...args);
      };
      try {
        const report = await inspectPending(
          { eventLog: log, main: h.main, replica: h.replica, replicaIsMain: false },
          { partition, limit: 10 },
        );
        assert.deepEqual(
          report.entries.filter((e) => e.entry_id === entryId),
          [],
          'not shown as waiting for projection',
        );
      } finally {
        log.appliedLsnOf = lookUp;
      }
    });

    void it('acknowledges only the records heading the applied queue, and forgets each everywhere', async () => {
      const keys = log.keys(2);
      const [a, b] = [newIdInPartition(2, 4), newIdInPartition(2, 4)];
      const records: AppliedRecord[] = [];
      for (const [i, id] of [a, b, a].entries()) {
        const event = { ...fileEvent(id as string, i), event_id: newIdInPartition(2, 4) };
        const result = await log.append({ partition: 2, events: [event] });
        assert.equal(result.kind, 'appended');
        const entryId = result.kind === 'appended' ? (result.entryIds[0] ?? '') : '';
        records.push(appliedRecord(event, entryId, `0/${i + 1}`));
      }
      const [first, second, third] = records as [AppliedRecord, AppliedRecord, AppliedRecord];
      await redis.xreadgroup('GROUP', CONSUMER_GROUP, 'c', 'STREAMS', keys.stream, '>');
      await log.recordApplied(2, records);
      await log.recordAttempt(2, second.entryId, 'a transient failure');

      // The third record does not head the queue after the first: the ack stops there.
      assert.equal(await log.ack(2, [first, third, second]), 1);
      assert.equal(await log.pendingCount(2), 2);
      assert.deepEqual(await log.peekApplied(2, 10), [second, third]);
      assert.deepEqual(await log.appliedLsnOf([first.entryId, second.entryId, third.entryId], 2), [
        null,
        '0/2',
        '0/3',
      ]);
      assert.deepEqual(await log.unacknowledged([first.eventId, second.eventId], 2), [false, true]);
      assert.deepEqual(
        (await log.readInflight(a as string, 2)).map((e) => e.entryId),
        [third.entryId],
      );
      // A record not at the head acknowledges nothing.
      assert.equal(await log.ack(2, [third]), 0);

      assert.equal(await log.ack(2, [second, third]), 2);
      assert.equal(await log.pendingCount(2), 0);
      assert.deepEqual(await log.peekApplied(2, 10), []);
      assert.deepEqual(await log.appliedLsnOf([second.entryId, third.entryId], 2), [null, null]);
      assert.equal(await redis.exists(keys.attempts), 0);
      assert.deepEqual(await log.unacknowledged([second.eventId, third.eventId], 2), [
        false,
        false,
      ]);
      assert.deepEqual(await log.readInflight(a as string, 2), []);
      assert.deepEqual(await log.readInflight(b as string, 2), []);
      await bucketsInUse(redis, log, 2);
    });

    void it('forgets applied records by entry id wherever they stand, keeping the rest in order and pending', async () => {
      const records: AppliedRecord[] = [];
      for (let i = 0; i < 5; i += 1) {
        const event = fileEvent(newIdInPartition(3, 4), i);
        const result = await log.append({ partition: 3, events: [event] });
        assert.equal(result.kind, 'appended');
        const entryId = result.kind === 'appended' ? (result.entryIds[0] ?? '') : '';
        records.push(appliedRecord(event, entryId, `0/${i + 1}`));
      }
      await redis.xreadgroup('GROUP', CONSUMER_GROUP, 'c', 'STREAMS', log.keys(3).stream, '>');
      await log.recordApplied(3, records);
      const [r0, r1, r2, r3, r4] = records as [
        AppliedRecord,
        AppliedRecord,
        AppliedRecord,
        AppliedRecord,
        AppliedRecord,
      ];

      assert.equal(await log.forgetAppliedEntries(3, [r3.entryId, r1.entryId, 'no-such-entry']), 2);
      assert.deepEqual(await log.peekApplied(3, 10), [r0, r2, r4]);
      assert.deepEqual(
        await log.appliedLsnOf(
          records.map((r) => r.entryId),
          3,
        ),
        ['0/1', null, '0/3', null, '0/5'],
      );
      assert.equal(await log.pendingCount(3), 5, 'forgotten, not acknowledged');
      assert.equal(await log.forgetAppliedEntries(3, [r1.entryId]), 0, 'a second time: none');
      assert.equal(await log.ack(3, [r0, r2, r4]), 3);
      assert.equal(await log.pendingCount(3), 2);
    });

    void it('forgets records across a long queue, from its head to its tail, in pages', async () => {
      const partition = 1;
      const records = Array.from({ length: 2_500 }, (_, i) =>
        appliedRecord(fileEvent(newIdInPartition(partition, 4), i), `${1_000 + i}-0`, `0/${i + 1}`),
      );
      // The head (the whole queue rewritten), the tail only (kept up to a page boundary), both
      // sides of a page boundary, and an entry no longer recorded (no search for it).
      for (const positions of [[0, 1_499, 1_500, 2_499], [1_500, 2_499], [1_499, 1_500], [2_000]]) {
        await log.recordApplied(partition, records);
        const forgotten = positions.map((i) => (records[i] as AppliedRecord).entryId);
        assert.equal(
          await log.forgetAppliedEntries(partition, [...forgotten, forgotten[0] as string, '1-0']),
          positions.length,
        );
        const left = await log.peekApplied(partition, 3_000);
        assert.deepEqual(
          left.map((r) => r.entryId),
          records.map((r) => r.entryId).filter((id) => !forgotten.includes(id)),
          `forgetting ${positions.join(', ')}`,
        );
        assert.deepEqual(
          await log.appliedLsnOf(forgotten, partition),
          forgotten.map(() => null),
        );
        await redis.del(log.keys(partition).applied, log.keys(partition).appliedLsn);
      }
    });
  });

  void describe('dead letters of earlier builds', () => {
    void it('shows and retries a dead letter written a field per property', async () => {
      const deadLetters = new DeadLetters(log);
      const event = {
        ...fileEvent(newIdInPartition(2, 4), 7),
        event_id: newIdInPartition(2, 4),
        written_by: 'ops',
      } as Envelope;
      const fields = encodeFieldPerProperty(event);
      const entryId = (await redis.xadd(log.keys(2).stream, '*', ...fields)) as string;
      const failed = failedEntryOf([entryId, fields]);
      assert.equal(failed.type, event.type);
      await deadLetters.add(2, failed, [{ at: new Date().toISOString(), error: 'boom' }]);

      const dead = await deadLetters.get(event.event_id, 2);
      assert.ok(dead, 'found by its event id');
      assert.deepEqual(
        {
          type: dead.type,
          aggregate: dead.aggregate_id,
          aggregateType: dead.aggregate_type,
          data: dead.data,
          writer: dead.written_by,
        },
        {
          type: event.type,
          aggregate: event.aggregate_id,
          aggregateType: 'raw_data_file',
          data: event.data,
          writer: 'ops',
        },
      );
      const retried = await deadLetters.retry(dead);
      assert.ok(retried, 'appended again');
      const raw = await log.readRawEntry(retried, 2);
      assert.ok(raw);
      assert.deepEqual(decodeEntry(raw).event, event);
      assert.deepEqual(
        (await log.readInflight(event.aggregate_id, 2)).map((e) => e.entryId),
        [retried],
      );
      assert.ok(
        (await bucketsInUse(redis, log, 2)).includes(
          Number(log.keys(2).inflight('raw_data_file', event.aggregate_id).split(':').at(-1)),
        ),
      );
      assert.equal(await deadLetters.get(event.event_id, 2), undefined);
    });

    void it('files letters an earlier build indexed otherwise under the names this build lists them by', async () => {
      const deadLetters = new DeadLetters(log);
      const history = [{ at: new Date().toISOString(), error: 'boom' }];
      const index = log.keys(2).deadIndex;
      /** Files a letter, then moves its index entry to the name an earlier build gave it. */
      const filedEarlier = async (event: Envelope, earlierName: (entryId: string) => string) => {
        const entryId = (await redis.xadd(log.keys(2).stream, '*', 'x', '1')) as string;
        const failed = failedEntryOfEvent(entryId, event);
        await deadLetters.add(2, failed, history);
        const deadId = (await redis.hget(index, failed.eventId)) as string;
        await redis.hset(index, earlierName(entryId), deadId);
        await redis.hdel(index, failed.eventId);
        return { entryId, deadId };
      };
      // An event an earlier build could not decode, filed under its entry id; listed by its
      // event id now.
      const packed = { ...fileEvent(newIdInPartition(2, 4), 1), event_id: newIdInPartition(2, 4) };
      const first = await filedEarlier(packed, (entryId) => `undecodable-${entryId}`);
      // An upper-case event id, filed under it; listed by partition and entry now.
      const upper = newIdInPartition(2, 4).toUpperCase();
      const second = await filedEarlier(
        { ...fileEvent(newIdInPartition(2, 4), 2), event_id: upper },
        () => upper,
      );
      const secondName = `undecodable-2-${second.entryId}`;
      const listed = (await deadLetters.list(100)).items.map((d) => d.id);
      assert.ok(listed.includes(packed.event_id) && listed.includes(secondName), listed.join());
      assert.equal(await deadLetters.find(packed.event_id), undefined, 'listed, yet out of reach');
      assert.equal(await deadLetters.find(secondName), undefined, 'listed, yet out of reach');

      assert.equal(await deadLetters.renameEarlierBuildLetters(), 2);
      assert.equal((await deadLetters.find(packed.event_id))?.dead_letter_id, first.deadId);
      assert.equal((await deadLetters.find(secondName))?.dead_letter_id, second.deadId);
      assert.equal(await redis.hexists(index, `undecodable-${first.entryId}`), 0);
      assert.equal(await redis.hexists(index, upper), 0);
      assert.equal(await deadLetters.renameEarlierBuildLetters(), 0, 'nothing left to rename');
      const retried = await deadLetters.retry(
        (await deadLetters.find(packed.event_id)) as DeadLetter,
      );
      assert.ok(retried, 'reachable by its listed name, it is retried');
    });
  });

  void describe('the event index', () => {
    void it('finds an event by id until it is acknowledged, in its bucket', async () => {
      const event = { ...fileEvent(newIdInPartition(1, 4), 1), event_id: newIdInPartition(1, 4) };
      const appended = await log.append({ partition: 1, events: [event] });
      assert.equal(appended.kind, 'appended');
      const entryId = appended.kind === 'appended' ? (appended.entryIds[0] ?? '') : '';
      const keys = log.keys(1);
      assert.equal(await redis.hget(keys.eventIndex(event.event_id), event.event_id), entryId);
      assert.equal(await redis.hexists(keys.legacyEventIndex, event.event_id), 0);
      assert.equal(await log.entryIdOfEvent(event.event_id, 1), entryId);
      assert.deepEqual(await log.unacknowledged([event.event_id, 'x'], 1), [true, false]);

      await deliver(redis, keys.stream);
      const record = appliedRecord(event, entryId);
      // As if an earlier build, still running, had also indexed it in its one hash.
      await redis.hset(keys.legacyEventIndex, event.event_id, entryId, 'other', '1-1');
      await log.recordApplied(1, [record]);
      assert.equal(await log.ack(1, [record]), 1);
      assert.equal(await log.entryIdOfEvent(event.event_id, 1), null);
      assert.deepEqual(await redis.hkeys(keys.legacyEventIndex), ['other']);
      await redis.del(keys.legacyEventIndex);
      assert.deepEqual(await log.unacknowledged([event.event_id], 1), [false]);
    });

    void it("folds an earlier build's one-hash index into the buckets at start", async () => {
      const keys = log.keys(3);
      const events = Array.from({ length: 700 }, (_, n) => ({
        ...fileEvent(newIdInPartition(3, 4), n),
        event_id: newIdInPartition(3, 4),
      }));
      // What an earlier build left behind: entries and the single index hash.
      const entryIds: string[] = [];
      for (const event of events) {
        const entryId = (await redis.xadd(
          keys.stream,
          '*',
          ...encodeFieldPerProperty(event),
        )) as string;
        await redis.hset(keys.legacyEventIndex, event.event_id, entryId);
        entryIds.push(entryId);
      }
      // Readable through the old hash before the upgrade, too.
      assert.equal(await log.entryIdOfEvent(events[0]?.event_id ?? '', 3), entryIds[0]);

      await log.ensureGroups();
      assert.equal(await redis.exists(keys.legacyEventIndex), 0);
      for (const [i, event] of events.entries()) {
        assert.equal(
          await redis.hget(keys.eventIndex(event.event_id), event.event_id),
          entryIds[i],
        );
      }
      assert.deepEqual(
        await log.unacknowledged(
          events.map((e) => e.event_id),
          3,
        ),
        events.map(() => true),
      );
    });
  });

  void describe('the partition count', () => {
    void it('is recorded at the first start, and a start with another is refused while the log holds anything', async () => {
      const namespace = `count-${randomUUID()}`;
      const silent = createLogger('silent');
      const first = await checkPartitionCount(new EventLog(redis, namespace, 2), silent, {
        name: 'first',
      });
      const second = await checkPartitionCount(new EventLog(redis, namespace, 2), silent, {
        name: 'second',
      });
      assert.equal(await recordedPartitions(redis, namespace), 2);
      const two = new EventLog(redis, namespace, 2);
      await two.ensureGroups();
      const id = newIdInPartition(1, 2);
      assert.equal(
        (await two.append({ partition: 1, events: [{ ...fileEvent(id, 0), event_id: id }] })).kind,
        'appended',
      );
      await assert.rejects(
        checkPartitionCount(new EventLog(redis, namespace, 4), silent),
        (err: Error) =>
          err instanceof PartitionCountError &&
          /OUTPOST_PARTITIONS is 4, but this site's log was written with 2 partitions and still holds 1 pending event\(s\) and 0 dead letter\(s\)/.test(
            err.message,
          ),
      );
      assert.equal(await recordedPartitions(redis, namespace), 2, 'unchanged');
      // Nothing held any more (here, the streams gone), but processes with the old count still
      // run: their writes would go where the new count does not look.
      await redis.del(...two.allKeys().map((k) => k.stream));
      await assert.rejects(
        checkPartitionCount(new EventLog(redis, namespace, 4), silent, { name: 'third' }),
        /OUTPOST_PARTITIONS is 4, but 2 process\(es\) of this site still run with another count: (first with 2; second with 2|second with 2; first with 2)\. Stop them first/,
      );
      assert.equal(await recordedPartitions(redis, namespace), 2, 'unchanged');
      await first.stop();
      await second.stop();
      // And the other way round: the process that took the change is listed, so one started
      // with the old count meanwhile is refused, though the log is as empty.
      const changed = await checkPartitionCount(new EventLog(redis, namespace, 4), silent, {
        name: 'third',
      });
      assert.equal(await recordedPartitions(redis, namespace), 4);
      await assert.rejects(
        checkPartitionCount(new EventLog(redis, namespace, 2), silent, { name: 'late' }),
        /OUTPOST_PARTITIONS is 2, but 1 process\(es\) of this site still run with another count: third with 4/,
      );
      await changed.stop();
      // Two processes starting together: the other recorded its count between this one's read
      // (which found none) and its write. A different count is refused, not taken over.
      const racing = `count-${randomUUID()}`;
      await redis.set(partitionCountKey(racing), '2');
      let firstRead = true;
      const raced = new Proxy(redis, {
        get: (target, name) =>
          name === 'get' && firstRead
            ? async () => {
                firstRead = false;
                return null;
              }
            : Reflect.get(target, name, target),
      });
      await assert.rejects(
        checkPartitionCount(new EventLog(raced, racing, 4), silent),
        /OUTPOST_PARTITIONS is 4, but a process of this site starting at the same moment recorded 2/,
      );
      // A Redis that refuses writes (full, or a failed save) does not stop a start that would
      // drain it: the count is compared, or recorded later.
      // A change, though, is not taken while it cannot be recorded.
      await redis.call('REPLICAOF', '127.0.0.1', '1');
      try {
        await (await checkPartitionCount(new EventLog(redis, namespace, 4), silent)).stop();
        await (
          await checkPartitionCount(new EventLog(redis, `count-${randomUUID()}`, 4), silent)
        ).stop();
        await assert.rejects(
          checkPartitionCount(new EventLog(redis, namespace, 2), silent),
          /the change cannot be recorded while Redis refuses writes: start with OUTPOST_PARTITIONS=4/,
        );
      } finally {
        await redis.call('REPLICAOF', 'NO', 'ONE');
      }
    });
  });

  void describe('a partition count change racing a write under the old count', () => {
    void it('is refused when a process with the old count appends between the look at the log and the change', async () => {
      const namespace = `count-${randomUUID()}`;
      const two = new EventLog(redis, namespace, 2);
      await two.ensureGroups();
      await redis.set(partitionCountKey(namespace), '2');
      const id = newIdInPartition(1, 2);
      let appended = false;
      // Its listing lapsed while Redis was away: it appends just as the new process changes the
      // count, after that process found the log empty.
      const late = new Proxy(redis, {
        get: (target, name) =>
          name === 'outpostPartitionCount' && !appended
            ? async (...args: unknown[]) => {
                appended = true;
                const written = await two.append({
                  partition: 1,
                  events: [{ ...fileEvent(id, 0), event_id: id }],
                });
                assert.equal(written.kind, 'appended');
                return Reflect.get(target, name, target).apply(target, args);
              }
            : Reflect.get(target, name, target),
      });
      await assert.rejects(
        checkPartitionCount(new EventLog(late, namespace, 4), createLogger('silent')),
        /OUTPOST_PARTITIONS is 4, but this site's log was written with 2 partitions and still holds 1 pending event\(s\)/,
      );
      assert.ok(appended);
      assert.equal(await recordedPartitions(redis, namespace), 2, 'unchanged');
      // Delivered and acknowledged, the partition holds nothing to apply: the change is taken.
      const stream = two.keys(1).stream;
      const read = (await redis.xreadgroup(
        'GROUP',
        CONSUMER_GROUP,
        'c',
        'STREAMS',
        stream,
        '>',
      )) as [string, [string, string[]][]][];
      const entryId = read[0]?.[1][0]?.[0] ?? '';
      await redis.xack(stream, CONSUMER_GROUP, entryId);
      await (
        await checkPartitionCount(new EventLog(redis, namespace, 4), createLogger('silent'))
      ).stop();
      assert.equal(await recordedPartitions(redis, namespace), 4);
    });
  });

  void describe('a running process listed under its partition count', () => {
    void it("refuses writes once the site's count is changed under it, until the count is its own again", async () => {
      const namespace = `count-${randomUUID()}`;
      const listing = await checkPartitionCount(
        new EventLog(redis, namespace, 2),
        createLogger('silent'),
        {
          name: 'running',
          relistEveryMs: 50,
        },
      );
      const listed = () => redis.zrange(processRosterKey(namespace), '0', '-1');
      try {
        assert.equal(listing.countError, undefined);
        assert.deepEqual(await listed(), ['2 running']);
        // Its listing lapsed while Redis was away, and a process with 4 took the change.
        await redis.del(processRosterKey(namespace));
        await redis.set(partitionCountKey(namespace), '4');
        await waitFor(() => listing.countError !== undefined, 'the running process to notice');
        assert.match(
          listing.countError ?? '',
          /changed to 4 while this process runs with 2: it refuses writes.*OUTPOST_PARTITIONS=4$/,
        );
        assert.deepEqual(await listed(), [], "not listed under a count that is not the site's");
        await redis.set(partitionCountKey(namespace), '2');
        await waitFor(() => listing.countError === undefined, 'writes to be taken again');
        await waitFor(async () => (await listed()).length === 1, 'listed again');
      } finally {
        await listing.stop();
      }
      assert.deepEqual(await listed(), [], 'gone once stopped');
    });
  });

  void describe('a connection that drops with a command out', () => {
    void it('does not send the command again when it reconnects later than the command timeout', async () => {
      const proxy = await BlackholeProxy.start(testStack().redisPort);
      const key = `late-resend-${randomUUID()}`;
      // Reconnecting a second after it drops, five command timeouts later.
      const client = new IORedis(`redis://127.0.0.1:${proxy.port}`, {
        lazyConnect: true,
        protocol: 2,
        enableOfflineQueue: false,
        commandTimeout: 200,
        retryStrategy: () => 1_000,
      });
      client.on('error', () => undefined);
      dropLateResends(client);
      try {
        await client.connect();
        // Redis runs it, and its reply is lost with the connection.
        proxy.loseReplyWithConnection((chunk) => chunk.toString() === ':1\r\n');
        await assert.rejects(client.incr(key), /timed out/);
        await waitFor(
          () => client.status === 'ready' && proxy.repliesLostWithConnection === 1,
          'the client to reconnect',
        );
        // On the same connection, after whatever the reconnect sent again.
        assert.equal(await client.get(key), '1', 'run once, not again on the late reconnect');
      } finally {
        client.disconnect();
        await proxy.close();
      }
    });
  });

  void describe('group commit of appends', () => {
    const scriptCalls = async () => {
      const stats = await redis.info('commandstats');
      return ['evalsha', 'eval']
        .map((command) =>
          Number(new RegExp(`cmdstat_${command}:calls=(\\d+)`).exec(stats)?.[1] ?? 0),
        )
        .reduce((a, b) => a + b, 0);
    };
    const eventIn = (partition: number, n: number): Envelope => ({
      ...fileEvent(newIdInPartition(partition, 4), n),
      event_id: newIdInPartition(partition, 4),
    });

    void it('sends the writes that gather during a call as one script call, each answered as if alone', async () => {
      const partition = 2;
      const lengthBefore = await redis.xlen(log.keys(partition).stream);
      const callsBefore = await scriptCalls();
      const events = Array.from({ length: 200 }, (_, n) => eventIn(partition, n));
      const results = await Promise.all(
        events.map((event) => log.append({ partition, events: [event] })),
      );
      const calls = (await scriptCalls()) - callsBefore;
      assert.ok(calls >= 2 && calls < 20, `200 writes took ${calls} script calls`);
      const entryIds = results.map((r) => (r.kind === 'appended' ? (r.entryIds[0] ?? '') : r.kind));
      assert.equal(new Set(entryIds).size, 200, 'each write has its own entry');
      assert.equal((await redis.xlen(log.keys(partition).stream)) - lengthBefore, 200);
      // Entries are in arrival order, and each is where its index says.
      assert.deepEqual([...entryIds].sort(compareEntryIds), entryIds);
      for (const [i, event] of events.entries()) {
        assert.equal(await log.entryIdOfEvent(event.event_id, partition), entryIds[i]);
        const inflight = await log.readInflight(event.aggregate_id, partition, 'raw_data_file');
        assert.deepEqual(
          inflight.map((e) => e.event.event_id),
          [event.event_id],
        );
      }
    });

    void it("sends nothing once closed: an append waiting for its partition's call is refused, not sent later", async () => {
      await throughProxy(async (closing, proxy) => {
        const partition = 3;
        const out = eventIn(partition, 0);
        const waiting = eventIn(partition, 1);
        const late = eventIn(partition, 2);
        proxy.blackhole();
        // Sent at once and held by the link; the next one waits for that call.
        const first = closing.append({ partition, events: [out] });
        const second = closing.append({ partition, events: [waiting] });
        closing.closeAppends();
        await assert.rejects(second, AppendsClosedError);
        await assert.rejects(closing.append({ partition, events: [late] }), AppendsClosedError);
        proxy.heal();
        assert.equal((await first).kind, 'appended', 'what was out is answered');
        for (const refused of [waiting, late]) {
          assert.equal(await log.entryIdOfEvent(refused.event_id, partition), null);
        }
      });
    });

    void it('refuses, when the call before it times out, an append that waited for it, and never sends it', async () => {
      await throughProxy(async (proxied, proxy) => {
        const partition = 1;
        const out = eventIn(partition, 0);
        const waiting = eventIn(partition, 1);
        proxy.blackhole();
        // Sent at once and held by the link; the next one, asked a while later, waits for it.
        const sentAt = performance.now();
        const first = proxied.append({ partition, events: [out] }).catch((err: Error) => err);
        await delay(2_000);
        const asked = performance.now();
        await assert.rejects(proxied.append({ partition, events: [waiting] }), {
          message: 'Command timed out',
        });
        assert.equal(((await first) as Error).message, 'Command timed out');
        // Refused with the call before it, 5 s after that was sent: not sent to wait out its own
        // 5 s (8 s after it was asked), nor left until its own deadline (5 s after it was asked).
        const refusedAt = performance.now();
        assert.ok(
          refusedAt - asked < 4_000,
          `refused ${refusedAt - asked} ms after it was asked, ${refusedAt - sentAt} ms after the call before it was sent`,
        );
        proxy.heal();
        // What the link held arrives: the call that was out, and nothing after it.
        await waitFor(
          async () => (await log.entryIdOfEvent(out.event_id, partition)) !== null,
          'the call that was out to arrive once the link heals',
        );
        assert.equal(await log.entryIdOfEvent(waiting.event_id, partition), null);
      });
    });

    void it('does not send again, on a reconnect, an append told it timed out on a stalled link', async () => {
      await throughProxy(async (proxied, proxy) => {
        const partition = 1;
        // The connection made and the script known: only what the test sends is out.
        const warm = await proxied.append({ partition, events: [eventIn(partition, 0)] });
        assert.equal(warm.kind, 'appended');
        proxy.blackhole();
        // A call of the process's own (a background loop's) leaves first and stalls with the
        // link; the append, sent on its own, stalls beside it.
        const stalled = proxied.redis.get(`stalled-${randomUUID()}`).catch((err: Error) => err);
        await new Promise((resolve) => setImmediate(resolve));
        const refused = eventIn(partition, 1);
        const asked = performance.now();
        await assert.rejects(proxied.append({ partition, events: [refused] }), {
          message: 'Command timed out',
        });
        // Its own 5 s: not the GET's pipeline first and then its own, as when auto-pipelined.
        assert.ok(performance.now() - asked < 7_500, `${performance.now() - asked} ms`);
        assert.equal(((await stalled) as Error).message, 'Command timed out');
        // The link is reset and works again: ioredis connects anew and sends again what its
        // connection had out and someone still waits for.
        // Not events.once: it would fail on the error the reset raises first.
        const reconnected = new Promise((resolve) => proxied.redis.once('ready', resolve));
        proxy.dropConnections();
        proxy.heal();
        await reconnected;
        await proxied.redis.ping();
        assert.equal(
          await log.entryIdOfEvent(refused.event_id, partition),
          null,
          'the append its caller was told had timed out was sent again',
        );
      });
    });

    void it('answers an XAUTOCLAIM on a stalled link within its own timeout, not after the auto-pipeline before it', async () => {
      await throughProxy(async (proxied, proxy) => {
        const warm = await proxied.redis.ping();
        assert.equal(warm, 'PONG');
        proxy.blackhole();
        // A background loop's call leaves first and stalls with the link.
        const stalled = proxied.redis.get(`stalled-${randomUUID()}`).catch((err: Error) => err);
        await new Promise((resolve) => setImmediate(resolve));
        // Taking a partition over claims its previous owner's entries: its lease round renews
        // the other leases only when it ends, so the claim must not wait for that call first.
        const asked = performance.now();
        await assert.rejects(
          proxied.redis.xautoclaim(
            proxied.keys(0).stream,
            CONSUMER_GROUP,
            'taker',
            0,
            '0-0',
            'JUSTID',
          ),
          { message: 'Command timed out' },
        );
        assert.ok(performance.now() - asked < 7_500, `${performance.now() - asked} ms`);
        assert.equal(((await stalled) as Error).message, 'Command timed out');
      });
    });

    void it('appends concurrent duplicates of one Idempotency-Key once and refuses another body', async () => {
      const partition = 3;
      const idempotency = (requestHash: string) => ({
        scopeHash: 'scope-dup',
        requestHash,
        response: JSON.stringify({ status: 201, body: { first: true } }),
        keyPartition: partition,
      });
      const lengthBefore = await redis.xlen(log.keys(partition).stream);
      const same = Array.from({ length: 30 }, (_, n) =>
        log.append({ partition, events: [eventIn(partition, n)], idempotency: idempotency('a') }),
      );
      const other = Array.from({ length: 5 }, (_, n) =>
        log.append({ partition, events: [eventIn(partition, n)], idempotency: idempotency('b') }),
      );
      const kinds = (await Promise.all([...same, ...other])).map((r) => r.kind);
      assert.deepEqual(kinds, [
        'appended',
        ...Array(29).fill('replayed'),
        ...Array(5).fill('idempotency_conflict'),
      ]);
      assert.equal((await redis.xlen(log.keys(partition).stream)) - lengthBefore, 1);
    });

    void it('refuses a key reused with another body in another partition, where its record is not', async () => {
      // Files and packages go to their unit's partition: one key can be sent with two units.
      const keyPartition = 3;
      const idempotency = (requestHash: string) => ({
        scopeHash: 'scope-moved',
        requestHash,
        response: JSON.stringify({ status: 201, body: {} }),
        keyPartition,
      });
      const streamLengths = () =>
        Promise.all([0, 1, 2, 3].map((p) => redis.xlen(log.keys(p).stream)));
      const before = await streamLengths();
      const racing = await Promise.all(
        [1, 2].flatMap((partition) =>
          Array.from({ length: 5 }, (_, n) =>
            log.append({
              partition,
              events: [eventIn(partition, n)],
              idempotency: idempotency(`body-${partition}`),
            }),
          ),
        ),
      );
      const kinds = racing.map((r) => r.kind);
      assert.equal(kinds.filter((k) => k === 'appended').length, 1, kinds.join());
      assert.equal(kinds.filter((k) => k === 'replayed').length, 4, kinds.join());
      const refused = racing.flatMap((r, i) => (r.kind === 'idempotency_conflict' ? [i] : []));
      assert.equal(refused.length, 5, kinds.join());
      assert.ok(
        refused.every((i) => i < 5) || refused.every((i) => i >= 5),
        'every refusal is of the other body',
      );
      const after = await streamLengths();
      assert.equal(
        after.reduce((sum, n, p) => sum + n - (before[p] ?? 0), 0),
        1,
        'one event appended in all',
      );
      const claim = log.keys(keyPartition).idempotencyClaim('scope-moved');
      assert.ok((await redis.ttl(claim)) > 23 * 3600, 'the claim lasts as long as the record');
      // Either way round with the key's own partition: first there, then elsewhere, and back.
      const elsewhere = (scopeHash: string, requestHash: string, partition: number) =>
        log.append({
          partition,
          events: [eventIn(partition, 9)],
          idempotency: { ...idempotency(requestHash), scopeHash },
        });
      assert.equal((await elsewhere('scope-home-first', 'x', keyPartition)).kind, 'appended');
      assert.equal((await elsewhere('scope-home-first', 'y', 0)).kind, 'idempotency_conflict');
      assert.equal(
        (await elsewhere('scope-moved', 'z', keyPartition)).kind,
        'idempotency_conflict',
      );
    });

    void it('gives back only a claim it took (also one whose reply was lost and sent again), and one its key’s record refused', async () => {
      const keyPartition = 0;
      const idempotency = (scopeHash: string, requestHash: string) => ({
        scopeHash,
        requestHash,
        response: JSON.stringify({ status: 201, body: {} }),
        keyPartition,
      });
      const unknownUnit = {
        unitId: newIdInPartition(2, 4),
        next: 'running',
        require: true,
      } as const;

      // A concurrent duplicate holds the claim; this attempt of the same body is refused (its
      // unit unknown here), and must not free the claim the other may have appended under.
      const found = log.keys(keyPartition).idempotencyClaim('scope-found');
      await redis.set(found, 'same', 'EX', 3600);
      const refused = await log.append({
        partition: 2,
        events: [eventIn(2, 0)],
        guard: unknownUnit,
        idempotency: idempotency('scope-found', 'same'),
      });
      assert.equal(refused.kind, 'unknown');
      assert.equal(await redis.get(found), 'same', 'the claim is left to its taker');
      const otherBody = await log.append({
        partition: 1,
        events: [eventIn(1, 0)],
        idempotency: idempotency('scope-found', 'another'),
      });
      assert.equal(otherBody.kind, 'idempotency_conflict');

      // A record without its claim (an earlier build's, written before claims): another body
      // takes the claim, the record refuses it, and the record's own body is still replayed.
      const recorded = await log.append({
        partition: keyPartition,
        events: [eventIn(keyPartition, 1)],
        idempotency: idempotency('scope-unclaimed', 'first'),
      });
      assert.equal(recorded.kind, 'appended');
      const unclaimed = log.keys(keyPartition).idempotencyClaim('scope-unclaimed');
      await redis.del(unclaimed);
      const second = await log.append({
        partition: keyPartition,
        events: [eventIn(keyPartition, 2)],
        idempotency: idempotency('scope-unclaimed', 'second'),
      });
      assert.equal(second.kind, 'idempotency_conflict');
      assert.equal(await redis.exists(unclaimed), 0, 'the refused body gave its claim back');
      const retry = await log.append({
        partition: keyPartition,
        events: [eventIn(keyPartition, 1)],
        idempotency: idempotency('scope-unclaimed', 'first'),
      });
      assert.equal(retry.kind, 'replayed');

      // Redis takes the claim and its reply is lost with the connection; ioredis sends the claim
      // again, which finds the value it set itself: still this request's, given back on refusal.
      await throughProxy(async (proxied, proxy) => {
        proxy.loseReplyTo(
          (chunk) => chunk.includes(':idem-claim:scope-resent'),
          (chunk) => chunk.toString().endsWith('$-1\r\n'),
        );
        const resent = await proxied.append({
          partition: 2,
          events: [eventIn(2, 3)],
          guard: unknownUnit,
          idempotency: idempotency('scope-resent', 'first'),
        });
        assert.equal(proxy.repliesLostWithConnection, 1, 'the claim lost its reply');
        assert.equal(resent.kind, 'unknown');
        const resentClaim = log.keys(keyPartition).idempotencyClaim('scope-resent');
        assert.equal(await redis.exists(resentClaim), 0, 'the refused request gave its claim back');
      });
    });

    void it('lets exactly one of racing guarded transitions of a unit through', async () => {
      const partition = 1;
      const unitId = newIdInPartition(partition, 4);
      const started = await log.append({
        partition,
        events: [eventIn(partition, 0)],
        guard: { unitId, next: 'running', require: false },
      });
      assert.equal(started.kind, 'appended');
      const finishes = await Promise.all(
        Array.from({ length: 20 }, (_, n) =>
          log.append({
            partition,
            events: [eventIn(partition, n)],
            guard: { unitId, allowed: ['running', 'paused'], next: 'success', require: true },
          }),
        ),
      );
      assert.deepEqual(
        finishes.map((r) => (r.kind === 'conflict' ? `conflict ${r.state}` : r.kind)),
        ['appended', ...Array(19).fill('conflict success')],
      );
    });

    void it('answers a re-sent append as its first run, appending nothing and guarding nothing again', async () => {
      // ioredis re-sends a script call that was out when its connection dropped; Redis may have
      // run the first already.
      const partition = 1;
      const unitId = newIdInPartition(partition, 4);
      const stream = log.keys(partition).stream;
      await log.append({
        partition,
        events: [eventIn(partition, 0)],
        guard: { unitId, next: 'running', require: false },
      });
      const finish: AppendRequest = {
        partition,
        events: [eventIn(partition, 1), eventIn(partition, 2)],
        guard: { unitId, allowed: ['running', 'paused'], next: 'success', require: true },
      };
      const lengthBefore = await redis.xlen(stream);
      const first = await log.append(finish);
      const resent = await log.append(finish);
      assert.equal(first.kind, 'appended');
      assert.deepEqual(resent, first, 'answered as the first run was, not 409');
      assert.equal(await redis.xlen(stream), lengthBefore + 2, 'appended once');
      const other = await log.append({ ...finish, events: [eventIn(partition, 3)] });
      assert.equal(other.kind, 'conflict', 'another finish still meets the guard');

      // A replay naming an event still in flight beside one that is not: only the second goes in.
      const [waiting, missing] = [eventIn(partition, 4), eventIn(partition, 5)];
      const once = await log.append({ partition, events: [waiting] });
      const both = await log.append({ partition, events: [waiting, missing] });
      assert.ok(once.kind === 'appended' && both.kind === 'appended');
      assert.equal(both.entryIds[0], once.entryIds[0]);
      assert.equal(await redis.xlen(stream), lengthBefore + 4, 'the missing one appended, once');
    });

    void it('answers a guarded request re-sent after its events were acknowledged as its first run', async () => {
      // The reply of a call is lost with its connection; before ioredis re-sends it, the
      // projector applies its events and the acker acknowledges them, which empties the event index.
      const partition = 3;
      const unitId = newIdInPartition(partition, 4);
      const stream = log.keys(partition).stream;
      const acknowledge = async (request: AppendRequest, result: AppendResult, count?: number) => {
        assert.equal(result.kind, 'appended');
        const entryIds = result.kind === 'appended' ? result.entryIds : [];
        await redis.xreadgroup('GROUP', CONSUMER_GROUP, 'c', 'STREAMS', stream, '>');
        const records = request.events
          .slice(0, count)
          .map((event, i) => appliedRecord(event, entryIds[i] ?? ''));
        await log.recordApplied(partition, records);
        assert.equal(await log.ack(partition, records), records.length);
        for (const record of records) {
          assert.equal(await log.entryIdOfEvent(record.eventId, partition), null);
        }
      };
      const guarded = (next: 'running' | 'paused' | 'success', events: number): AppendRequest => ({
        partition,
        events: Array.from({ length: events }, (_, n) => eventIn(partition, n)),
        guard:
          next === 'running'
            ? { unitId, next, require: false }
            : { unitId, allowed: ['running', 'paused'], next, require: true },
      });
      const start = guarded('running', 1);
      const started = await log.append(start);
      await acknowledge(start, started);
      const pause = guarded('paused', 2);
      const paused = await log.append(pause);
      await acknowledge(pause, paused, 1);
      const finish = guarded('success', 1);
      const finished = await log.append(finish);
      await acknowledge(finish, finished);
      const lengthBefore = await redis.xlen(stream);

      assert.deepEqual(await log.append(finish), finished, 'the finish is answered, not 409');
      assert.deepEqual(
        await log.append(pause),
        paused,
        'a request of the unit before the finish too, half of it acknowledged',
      );
      assert.deepEqual(await log.append(start), started, 'the start does not run it again');
      assert.equal(await redis.xlen(stream), lengthBefore, 'nothing appended twice');
      assert.deepEqual(
        await log.append(guarded('paused', 1)),
        { kind: 'conflict', state: 'success' },
        'another request still meets the guard',
      );
      assert.deepEqual(await redis.get(log.keys(partition).unitState(unitId)), 'success');
    });

    void it('fails a request that cannot be encoded alone, and sends the rest', async () => {
      const partition = 2;
      const lengthBefore = await redis.xlen(log.keys(partition).stream);
      const unencodable = { ...eventIn(partition, 0), data: { n: 1n } } as unknown as Envelope;
      const outcomes = await Promise.allSettled([
        log.append({ partition, events: [eventIn(partition, 1)] }),
        log.append({ partition, events: [unencodable] }),
        log.append({ partition, events: [eventIn(partition, 2)] }),
      ]);
      assert.deepEqual(
        outcomes.map((o) => (o.status === 'fulfilled' ? o.value.kind : 'rejected')),
        ['appended', 'rejected', 'appended'],
      );
      assert.equal((await redis.xlen(log.keys(partition).stream)) - lengthBefore, 2);
      // The partition still takes writes afterwards.
      assert.equal(
        (await log.append({ partition, events: [eventIn(partition, 3)] })).kind,
        'appended',
      );
    });

    void it('fails a request alone when Redis refuses it, and appends the rest of its batch', async () => {
      const partition = 0;
      // GET on a hash fails with WRONGTYPE: this request's unit guard cannot run.
      await redis.hset(log.keys(partition).unitState('unit-broken'), 'x', '1');
      const lengthBefore = await redis.xlen(log.keys(partition).stream);
      const callsBefore = await scriptCalls();
      const plain = (n: number) => log.append({ partition, events: [eventIn(partition, n)] });
      const outcomes = await Promise.allSettled([
        plain(0),
        plain(1),
        log.append({
          partition,
          events: [eventIn(partition, 2)],
          guard: { unitId: 'unit-broken', next: 'running', require: false },
        }),
        plain(3),
        plain(4),
      ]);
      // The first write goes alone; the four that gathered meanwhile share the second call.
      assert.equal((await scriptCalls()) - callsBefore, 2);
      assert.deepEqual(
        outcomes.map((o) => (o.status === 'fulfilled' ? o.value.kind : 'rejected')),
        ['appended', 'appended', 'rejected', 'appended', 'appended'],
      );
      const refused = outcomes[2];
      assert.match(
        refused?.status === 'rejected' ? String((refused.reason as Error).message) : '',
        /WRONGTYPE/,
      );
      assert.equal((await redis.xlen(log.keys(partition).stream)) - lengthBefore, 4);
    });
  });

  void describe('the live feed', () => {
    const liveKey = () => liveStreamKey(h.config.namespace);
    /** What the live stream holds after `afterId`, as its readers decode it. */
    const liveAfter = async (afterId: string) =>
      ((await redis.xrange(liveKey(), `(${afterId}`, '+')) as [string, string[]][]).map(
        ([id, fields]) => decodeLive(id, fields)?.message,
      );
    const liveEnd = async () =>
      ((await redis.xrevrange(liveKey(), '+', '-', 'COUNT', 1)) as [string, string[]][])[0]?.[0] ??
      '0-0';
    const headOf = (m: LiveMessage | undefined) =>
      m && [m.event_id, m.aggregate_id, m.aggregate_type, m.type, m.state, m.partition, m.entry_id];

    void it("tells its listeners when the stream's trimming overtakes the shared reader", async () => {
      const key = `${h.config.namespace}:live-overtaken`;
      const feed = new LiveFeed({
        redis,
        key,
        listenersKey: `${key}:listeners`,
        maxLen: 10,
        logger: createLogger('silent'),
      });
      const message = (n: number): LiveMessage => ({
        event_id: randomUUID(),
        aggregate_id: randomUUID(),
        aggregate_type: 'raw_data_file',
        type: 'RawDataFileRegistered',
        state: 'accepted',
        partition: 0,
        entry_id: `${n}-0`,
        at: new Date().toISOString(),
      });
      const received: LiveItem[] = [];
      await redis.xadd(key, '*', 'm', encodeLive(message(0)));
      await feed.start();
      const unsubscribe = feed.subscribe(
        (item) => received.push(item),
        () => undefined,
      );
      try {
        const seen = await redis.xadd(key, '*', 'm', encodeLive(message(1)));
        await waitFor(() => received.some((item) => item.id === seen), 'the first message read');
        // Fifty messages at once, trimmed to the last ten before the reader sees any: as a site
        // publishing faster than the reader hands messages on, until trimming passes its cursor.
        const flood = redis.multi();
        for (let n = 2; n < 52; n += 1) {
          flood.xadd(key, '*', 'm', encodeLive(message(n)));
        }
        flood.xtrim(key, 'MAXLEN', 10);
        await flood.exec();
        const kept = (await redis.xrange(key, '-', '+')).map(([id]) => id);
        assert.equal(kept.length, 10);
        await waitFor(() => received.at(-1)?.id === kept.at(-1), 'the last message read');
        const after = received.slice(received.findIndex((item) => item.id === seen) + 1);
        assert.deepEqual(
          after.map((item) => ('overtaken' in item ? `overtaken before ${item.id}` : item.id)),
          [`overtaken before ${kept[0]}`, ...kept],
        );
      } finally {
        unsubscribe();
        await feed.stop();
        await redis.del(key);
      }
    });

    // No publish follows these calls: what the stream holds when they return, they wrote
    // themselves, in the call that made the step visible to the next one (ADR 0007).
    void it('announces accepted in the append and applied with the record, only while someone listens', async () => {
      const partition = 1;
      const event = (n: number) => ({
        ...fileEvent(newIdInPartition(partition, 4), n),
        event_id: newIdInPartition(partition, 4),
      });
      const quiet = await liveEnd();
      assert.equal((await log.append({ partition, events: [event(0)] })).kind, 'appended');
      assert.deepEqual(await liveAfter(quiet), [], 'nobody listens: nothing published');

      await redis.set(liveListenersKey(h.config.namespace), '1', 'PX', 60_000);
      try {
        const start = await liveEnd();
        const events = [event(1), event(2)];
        const result = await log.append({ partition, events });
        assert.equal(result.kind, 'appended');
        const entryIds = result.kind === 'appended' ? result.entryIds : [];
        const expected = (state: string) =>
          events.map((e, i) => [
            e.event_id,
            e.aggregate_id,
            'raw_data_file',
            'RawDataFileRegistered',
            state,
            partition,
            entryIds[i],
          ]);
        const accepted = await liveAfter(start);
        assert.deepEqual(accepted.map(headOf), expected('accepted'));
        assert.ok(accepted.every((m) => m && Number.isFinite(Date.parse(m.at))));

        const afterAccepted = await liveEnd();
        await log.recordApplied(
          partition,
          events.map((e, i) => appliedRecord(e, entryIds[i] as string)),
          events.map((e, i) => ({
            ...(accepted[i] as LiveMessage),
            event_id: e.event_id,
            state: 'applied',
          })),
        );
        assert.deepEqual((await liveAfter(afterAccepted)).map(headOf), expected('applied'));

        // The feed is a view of the log: when its stream cannot be written, the append and the
        // record still are, and the record says how many messages it could not publish.
        await redis.rename(liveKey(), `${liveKey()}:aside`);
        await redis.set(liveKey(), 'not a stream');
        try {
          const unpublished = event(3);
          const kept = await log.append({ partition, events: [unpublished] });
          assert.equal(kept.kind, 'appended');
          const keptId = kept.kind === 'appended' ? (kept.entryIds[0] as string) : '';
          assert.equal(
            await log.recordApplied(
              partition,
              [appliedRecord(unpublished, keptId)],
              [
                {
                  ...(accepted[0] as LiveMessage),
                  event_id: unpublished.event_id,
                  state: 'applied',
                },
              ],
            ),
            1,
          );
          assert.deepEqual(await log.appliedLsnOf([keptId], partition), ['0/1']);
        } finally {
          await redis.rename(`${liveKey()}:aside`, liveKey());
        }
      } finally {
        await redis.del(liveListenersKey(h.config.namespace));
      }
    });

    void it('GET /events/{id} finds an event retried between its look in the log and in the dead letters', async () => {
      const partition = 1;
      const deadLetters = new DeadLetters(log);
      const event: Envelope = {
        ...fileEvent(newIdInPartition(partition, 4), 1),
        event_id: newIdInPartition(partition, 4),
      };
      const appended = await log.append({ partition, events: [event] });
      const entryId = appended.kind === 'appended' ? (appended.entryIds[0] ?? '') : '';
      await deliver(redis, log.keys(partition).stream);
      await deadLetters.add(partition, failedEntryOfEvent(entryId, event), [
        { at: new Date().toISOString(), error: 'boom' },
      ]);
      const dead = await deadLetters.get(event.event_id, partition);
      assert.ok(dead);

      // An operator retries it the moment the read has found it missing from the log.
      const hget = redis.hget.bind(redis);
      let retried: string | undefined;
      redis.hget = (async (...args: Parameters<typeof hget>) => {
        const reply = await hget(...args);
        if (!retried && args[0] === log.keys(partition).legacyEventIndex) {
          retried = 'retrying';
          retried = await deadLetters.retry(dead);
        }
        return reply;
      }) as unknown as typeof redis.hget;
      let view: Awaited<ReturnType<typeof readEvent>>;
      try {
        view = await readEvent(
          { replica: h.replica, eventLog: log, partitions: 4, deadLetters },
          event.event_id,
        );
      } finally {
        redis.hget = hget;
      }
      assert.ok(retried && retried !== 'retrying', 'retried during the read');
      assert.equal(view?.state, 'pending');
      assert.equal(view?.entry_id, retried);
    });

    void it('announces dead in the dead-lettering, and accepted again in the retry', async () => {
      const partition = 3;
      const deadLetters = new DeadLetters(log);
      const event = {
        ...fileEvent(newIdInPartition(partition, 4), 9),
        event_id: newIdInPartition(partition, 4),
      };
      const appended = await log.append({ partition, events: [event] });
      const entryId = appended.kind === 'appended' ? (appended.entryIds[0] as string) : '';
      await deliver(redis, log.keys(partition).stream);
      await redis.set(liveListenersKey(h.config.namespace), '1', 'PX', 60_000);
      try {
        const head = (state: string, entry: string) => [
          event.event_id,
          event.aggregate_id,
          'raw_data_file',
          'RawDataFileRegistered',
          state,
          partition,
          entry,
        ];
        const start = await liveEnd();
        await deadLetters.add(partition, failedEntryOfEvent(entryId, event), [
          { at: new Date().toISOString(), error: 'boom' },
        ]);
        assert.deepEqual((await liveAfter(start)).map(headOf), [head('dead', entryId)]);
        const dead = await deadLetters.get(event.event_id, partition);
        assert.ok(dead);
        const afterDead = await liveEnd();
        const retried = await deadLetters.retry(dead);
        assert.ok(retried);
        assert.deepEqual((await liveAfter(afterDead)).map(headOf), [head('accepted', retried)]);
      } finally {
        await redis.del(liveListenersKey(h.config.namespace));
      }
    });
  });
  void describe('retrying and discarding dead letters', () => {
    const history = [{ at: new Date().toISOString(), error: 'boom' }];
    let deadLetters: DeadLetters;
    before(() => {
      deadLetters = new DeadLetters(log);
    });

    /** Appends `count` events of a new file in `partition` and delivers them, unprocessed. */
    const fileInStream = async (partition: number, count: number, acceptedAt?: number) => {
      const aggregateId = newIdInPartition(partition, 4);
      const events = Array.from(
        { length: count },
        (_, n): Envelope => ({
          ...fileEvent(aggregateId, n),
          event_id: newIdInPartition(partition, 4),
          ...(acceptedAt === undefined ? {} : { accepted_at: acceptedAt }),
        }),
      );
      const entryIds: string[] = [];
      for (const event of events) {
        const appended = await log.append({ partition, events: [event] });
        assert.equal(appended.kind, 'appended');
        entryIds.push(appended.kind === 'appended' ? (appended.entryIds[0] as string) : '');
      }
      await deliver(redis, log.keys(partition).stream);
      return { aggregateId, events, entryIds };
    };

    /** Files the `n`th event of `file` among the dead letters, as the projector would. */
    const fileLetter = async (
      partition: number,
      file: Awaited<ReturnType<typeof fileInStream>>,
      n: number,
    ) => {
      await deadLetters.add(
        partition,
        failedEntryOfEvent(file.entryIds[n] as string, file.events[n] as Envelope),
        history,
      );
      const dead = await deadLetters.get((file.events[n] as Envelope).event_id, partition);
      assert.ok(dead);
      return dead;
    };

    /**
     * Files the `n`th event of `file` as an earlier build wrote it (a field per property), with
     * data no one can read: it names the file's aggregate, and cannot be put back.
     */
    const fileUndecodableLetter = async (
      partition: number,
      file: Awaited<ReturnType<typeof fileInStream>>,
      n: number,
    ) => {
      const event = file.events[n] as Envelope;
      const broken = withField(encodeFieldPerProperty(event), 'data', '{not json');
      await deadLetters.add(
        partition,
        failedEntryOf([file.entryIds[n] as string, broken]),
        history,
      );
      return deadLetters.get(event.event_id, partition);
    };

    /** Files `count` letters of other files straight into the letters, as add() writes them. */
    const fileOtherLetters = async (partition: number, count: number) => {
      const pipeline = redis.pipeline();
      for (let n = 0; n < count; n += 1) {
        const entry = failedEntryOfEvent(`1-${n}`, fileEvent(newIdInPartition(partition, 4), n));
        const fields = [...entry.fields, 'original_entry_id', `1-${n}`, 'error', 'x'];
        pipeline.xadd(log.keys(partition).deadLetters, '*', ...fields);
      }
      return ((await pipeline.exec()) ?? []).map(([, id]) => id as string);
    };

    /**
     * Retries `dead`'s aggregate while the projector files `file`'s events `from` up to `until`
     * among the dead letters, one just after each read of them (not after its own reads).
     */
    const retryWhileFiling = async (
      dead: DeadLetter,
      file: Awaited<ReturnType<typeof fileInStream>>,
      from: number,
      until: number,
    ) => {
      const read = redis.xrange.bind(redis);
      let next = from;
      let filing = false;
      redis.xrange = (async (...args: Parameters<typeof read>) => {
        const reply = await read(...args);
        if (!filing && next < until && args[0] === log.keys(dead.partition).deadLetters) {
          filing = true;
          try {
            await fileLetter(dead.partition, file, next);
            next += 1;
          } finally {
            filing = false;
          }
        }
        return reply;
      }) as unknown as typeof redis.xrange;
      try {
        const [outcome] = await Promise.allSettled([deadLetters.retryAggregate(dead)]);
        return {
          outcome: outcome as PromiseSettledResult<Map<string, RetriedLetter>>,
          filed: next - from,
        };
      } finally {
        redis.xrange = read;
      }
    };

    const isBlocked = async (partition: number, aggregateId: string) =>
      (await redis.sismember(log.keys(partition).blockedAggregates, aggregateId)) === 1;

    void it('counts an attempt and files a letter only for the consumer that holds the entry', async () => {
      const partition = 3;
      const file = await fileInStream(partition, 1);
      const entryId = file.entryIds[0] as string;
      const failed = failedEntryOfEvent(entryId, file.events[0] as Envelope);
      const { stream, attempts } = log.keys(partition);
      // Delivered to consumer c; the partition's new owner takes it over.
      await redis.xclaim(stream, CONSUMER_GROUP, 'heir', 0, entryId);

      assert.equal(await log.recordAttempt(partition, entryId, 'stale', 'c'), undefined);
      assert.equal(await redis.hget(attempts, entryId), null, 'no attempt counted');
      await assert.rejects(
        deadLetters.add(partition, failed, history, { consumer: 'c' }),
        NotHolderError,
      );
      assert.equal(await deadLetters.get(failed.eventId, partition), undefined, 'nothing filed');
      assert.equal(await isBlocked(partition, file.aggregateId), false);
      assert.equal((await redis.xpending(stream, CONSUMER_GROUP, entryId, entryId, 1)).length, 1);

      assert.equal((await log.recordAttempt(partition, entryId, 'real', 'heir'))?.length, 1);
      assert.ok(await deadLetters.add(partition, failed, history, { consumer: 'heir' }));
      assert.ok(await deadLetters.get(failed.eventId, partition));
      // Settled (filed, so acknowledged): nobody holds it any more.
      assert.equal(await log.recordAttempt(partition, entryId, 'late', 'heir'), undefined);
    });

    void it('takes along a letter filed between its read of the letters and its retry', async () => {
      const partition = 2;
      const file = await fileInStream(partition, 2);
      const dead = await fileLetter(partition, file, 0);

      // The projector files the second behind the first just after the retry read the letters.
      const { outcome, filed } = await retryWhileFiling(dead, file, 1, 2);
      assert.equal(filed, 1);
      assert.equal(outcome.status, 'fulfilled');
      assert.equal(
        outcome.status === 'fulfilled' && outcome.value.size,
        2,
        'both letters put back',
      );
      assert.equal(
        await deadLetters.get((file.events[1] as Envelope).event_id, partition),
        undefined,
      );
      assert.equal(await isBlocked(partition, file.aggregateId), false);
    });

    void it('retries at once while letters of other aggregates are filed between its reads and its script', async () => {
      const partition = 3;
      const file = await fileInStream(partition, 1);
      const dead = await fileLetter(partition, file, 0);
      // Another dead file's backlog follows it into the dead letters, one letter after each read.
      const other = await fileInStream(partition, 8);
      const { outcome, filed } = await retryWhileFiling(dead, other, 0, 8);
      assert.ok(filed >= 1, 'a letter of the other file was filed during the retry');
      assert.equal(
        outcome.status,
        'fulfilled',
        String(outcome.status === 'rejected' && outcome.reason),
      );
      assert.deepEqual(outcome.status === 'fulfilled' && [...outcome.value.keys()], [
        dead.dead_letter_id,
      ]);
      assert.equal(await isBlocked(partition, file.aggregateId), false);
      assert.equal(await isBlocked(partition, other.aggregateId), true);
    });

    void it("refuses for now, changing nothing, while the aggregate's own letters keep being filed", async () => {
      const partition = 0;
      const file = await fileInStream(partition, 8);
      const dead = await fileLetter(partition, file, 0);
      const { outcome, filed } = await retryWhileFiling(dead, file, 1, 8);
      assert.equal(outcome.status, 'rejected');
      const err: unknown = outcome.status === 'rejected' && outcome.reason;
      assert.ok(err instanceof LettersStillArrivingError, String(err));
      assert.match(err.message, /kept dead-lettering later events/);
      assert.equal(await isBlocked(partition, file.aggregateId), true);
      for (const event of file.events.slice(0, 1 + filed)) {
        assert.ok(
          await deadLetters.get(event.event_id, partition),
          'every filed letter still dead',
        );
      }
      assert.ok(1 + filed < file.events.length, 'the refusal came before the backlog ran out');
      // Once the backlog is all filed, the retry takes every letter back.
      for (let n = 1 + filed; n < file.events.length; n += 1) {
        await fileLetter(partition, file, n);
      }
      const retried = await deadLetters.retryAggregate(dead);
      assert.equal(retried.size, file.events.length);
      assert.equal(await isBlocked(partition, file.aggregateId), false);
    });

    void it('keeps the block, and refuses the retry, while an undecodable letter names the aggregate', async () => {
      const partition = 2;
      const file = await fileInStream(partition, 2);
      const good = await fileLetter(partition, file, 0);
      const undecodable = await fileUndecodableLetter(partition, file, 1);
      assert.equal(undecodable?.aggregate_id, file.aggregateId);

      await assert.rejects(deadLetters.retryAggregate(good), (err: unknown) => {
        assert.ok(err instanceof UndecodableLetterOfAggregateError, String(err));
        assert.match(err.message, /cannot be decoded by this build \(.*JSON.*\).*discard it first/);
        return true;
      });
      assert.ok(await deadLetters.get(good.event_id, partition), 'left as it was');
      assert.ok(await deadLetters.discard(good, 'superseded', 'operator'));
      assert.equal(await isBlocked(partition, file.aggregateId), true, 'held by the undecodable');
      assert.ok(await deadLetters.discard(undecodable as DeadLetter, 'unreadable', 'operator'));
      assert.equal(await isBlocked(partition, file.aggregateId), false);
    });

    void it("refuses the retry while a later event of the aggregate waits in an earlier build's index", async () => {
      const partition = 1;
      const keys = log.keys(partition);
      const file = await fileInStream(partition, 1);
      const dead = await fileLetter(partition, file, 0);
      // An earlier build, still running beside this one (or its leftovers before this one's
      // start folded them), appends the file's next event to its one-hash index of the type.
      const next = { ...fileEvent(file.aggregateId, 1), event_id: newIdInPartition(partition, 4) };
      const nextEntry = (await redis.xadd(
        keys.stream,
        '*',
        ...encodeFieldPerProperty(next),
      )) as string;
      const legacy = keys.legacyInflightIndex('raw_data_file');
      await redis.hset(legacy, file.aggregateId, nextEntry);

      await assert.rejects(
        deadLetters.retryAggregate(dead),
        (err: unknown) => err instanceof LaterEventsInFlightError && /^1 later/.test(err.message),
      );
      assert.ok(await deadLetters.get(dead.event_id, partition), 'the letter is left');
      assert.equal(await isBlocked(partition, file.aggregateId), true);

      // Once that event has followed the block into the letters, both go back, in order.
      await deadLetters.add(partition, failedEntryOfEvent(nextEntry, next), history);
      assert.equal(await redis.hexists(legacy, file.aggregateId), 0);
      const retried = [...(await deadLetters.retryAggregate(dead)).values()].map((r) => r.entryId);
      assert.equal(retried.length, 2);
      assert.deepEqual(retried, [...retried].sort(compareEntryIds));
      assert.equal(await isBlocked(partition, file.aggregateId), false);
    });

    void it('reads the letters in pages, finding the aggregate’s on every page and one filed between them', async () => {
      const partition = 0;
      const lettersKey = log.keys(partition).deadLetters;
      const file = await fileInStream(partition, 3);
      const dead = await fileLetter(partition, file, 0);
      // More letters of other files than one page of the read holds.
      const fillerIds = await fileOtherLetters(partition, 1_200);
      await fileLetter(partition, file, 1);

      // The projector files the third just after the first page is read.
      const read = redis.xrange.bind(redis);
      const starts: string[] = [];
      redis.xrange = (async (...args: Parameters<typeof read>) => {
        const reply = await read(...args);
        if (args[0] === lettersKey && args[2] === '+') {
          starts.push(String(args[1]));
          if (starts.length === 1) {
            await fileLetter(partition, file, 2);
          }
        }
        return reply;
      }) as unknown as typeof redis.xrange;
      let retried: Map<string, RetriedLetter>;
      try {
        retried = await deadLetters.retryAggregate(dead);
      } finally {
        redis.xrange = read;
        await redis.xdel(lettersKey, ...fillerIds);
      }
      assert.equal(starts.filter((start) => start === '-').length, 1, 'one read, not repeated');
      assert.ok(starts.length >= 2, `read in pages: ${starts.join(', ')}`);
      const letterIds = await Promise.all(
        file.events.map(
          async (event) => (await redis.hget(log.keys(partition).deadIndex, event.event_id)) ?? '',
        ),
      );
      assert.deepEqual(letterIds, ['', '', ''], 'every letter retried');
      const newEntries = [...retried.values()].map((r) => r.entryId);
      assert.equal(newEntries.length, 3);
      assert.deepEqual(newEntries, [...newEntries].sort(compareEntryIds), 'put back in order');
      assert.equal(await isBlocked(partition, file.aggregateId), false);
    });

    void it('passes over a letter discarded while later pages of the letters were read', async () => {
      const partition = 1;
      const lettersKey = log.keys(partition).deadLetters;
      const file = await fileInStream(partition, 2);
      const good = await fileLetter(partition, file, 0);
      // The second holds the retry, as long as it is there.
      const undecodable = await fileUndecodableLetter(partition, file, 1);
      assert.ok(undecodable);
      const fillerIds = await fileOtherLetters(partition, 1_200);

      // Another operator discards the unreadable one just after the first page is read.
      const read = redis.xrange.bind(redis);
      let pages = 0;
      redis.xrange = (async (...args: Parameters<typeof read>) => {
        const reply = await read(...args);
        if (args[0] === lettersKey && args[2] === '+') {
          pages += 1;
          if (pages === 1) {
            assert.ok(await deadLetters.discard(undecodable, 'unreadable', 'operator'));
          }
        }
        return reply;
      }) as unknown as typeof redis.xrange;
      try {
        assert.equal((await deadLetters.retryAggregate(good)).size, 1);
      } finally {
        redis.xrange = read;
        await redis.xdel(lettersKey, ...fillerIds);
      }
      assert.ok(pages >= 2, 'read in pages');
      assert.equal(await isBlocked(partition, file.aggregateId), false);
    });

    void it('shares one read of the letters among the retries of a run, and reads again once one is filed', async () => {
      const partition = 1;
      const lettersKey = log.keys(partition).deadLetters;
      const [a, b, c, d] = [
        await fileInStream(partition, 2),
        await fileInStream(partition, 1),
        await fileInStream(partition, 2),
        await fileInStream(partition, 1),
      ];
      const deadA = await fileLetter(partition, a, 0);
      const deadB = await fileLetter(partition, b, 0);
      const deadC = await fileLetter(partition, c, 0);
      // C's second, unreadable, holds C's retry.
      const undecodableC = await fileUndecodableLetter(partition, c, 1);
      assert.ok(undecodableC);
      const deadD = await fileLetter(partition, d, 0);

      const read = redis.xrange.bind(redis);
      let wholeReads = 0;
      redis.xrange = (async (...args: Parameters<typeof read>) => {
        if (args[0] === lettersKey && args[1] === '-' && args[2] === '+') {
          wholeReads += 1;
        }
        return read(...args);
      }) as unknown as typeof redis.xrange;
      try {
        const reads: LetterReads = new Map();
        await assert.rejects(
          deadLetters.retryAggregate(deadC, reads),
          UndecodableLetterOfAggregateError,
        );
        assert.equal((await deadLetters.retryAggregate(deadB, reads)).size, 1);
        assert.equal(wholeReads, 1, 'B is retried from the read C was');

        // Another operator retries D after the run read the letters: the run finds D's letter
        // gone, where the read would have it put back behind its own retried entry.
        assert.equal((await deadLetters.retryAggregate(deadD)).size, 1);
        assert.equal((await deadLetters.retryAggregate(deadD, reads)).size, 0);
        assert.equal(wholeReads, 2, "the other operator's read");

        // A's second follows it into the letters after that read: the next retry reads again.
        await fileLetter(partition, a, 1);
        assert.equal((await deadLetters.retryAggregate(deadA, reads)).size, 2);
        assert.equal(wholeReads, 3);

        // The undecodable letter is discarded after the run read it: C's retry sees it gone.
        assert.ok(await deadLetters.discard(undecodableC, 'unreadable', 'operator'));
        assert.equal((await deadLetters.retryAggregate(deadC, reads)).size, 1);
        assert.equal(wholeReads, 3, 'looked up by id, not read again');
      } finally {
        redis.xrange = read;
      }
      for (const file of [a, b, c, d]) {
        assert.equal(await isBlocked(partition, file.aggregateId), false);
      }
    });

    void it('reads a packed head only up to its last newline, as the codec does', async () => {
      const partition = 0;
      const file = await fileInStream(partition, 2);
      const good = await fileLetter(partition, file, 0);
      // Packed, with no newline: the codec finds no head, so the letter names no aggregate and
      // blocks a stand-in; it must not hold the file either.
      const headless = (file.events[1] as Envelope).event_id.concat(
        `|${file.aggregateId}|x|1|1|w|s`,
      );
      await deadLetters.add(
        partition,
        failedEntryOf([file.entryIds[1] as string, ['event', headless]]),
        history,
      );
      assert.ok(await deadLetters.discard(good, 'superseded', 'operator'));
      assert.equal(await isBlocked(partition, file.aggregateId), false);
      const [stray] = (await deadLetters.list(100)).items.filter(
        (l) => l.original_entry_id === file.entryIds[1],
      );
      assert.equal(stray?.aggregate_id, '');
      assert.ok(await deadLetters.discard(stray as DeadLetter, 'unreadable', 'operator'));
      assert.equal(
        await isBlocked(partition, `undecodable-${file.entryIds[1] as string}`),
        false,
        'its stand-in lifted',
      );
    });

    void it('GET /events/{id} dates a dead event by its acceptance, not by its last entry', async () => {
      const partition = 3;
      const acceptedAt = '2026-01-02T03:04:05.006Z';
      const file = await fileInStream(partition, 1, Date.parse(acceptedAt));
      const dead = await fileLetter(partition, file, 0);
      const view = await readEvent(
        { replica: h.replica, eventLog: log, partitions: 4, deadLetters },
        dead.event_id,
      );
      assert.equal(view?.state, 'dead');
      assert.equal(view?.accepted_at, acceptedAt);
      assert.equal(view?.version, 1);
      assert.equal(view?.entry_id, file.entryIds[0]);
    });

    void it('GET /events/{id} dates a dead event whose time reads as none by its entry', async () => {
      const partition = 1;
      const file = await fileInStream(partition, 1);
      // Written past the API with a time no one can read: why the projector filed it.
      const timeless = withField(encodeFieldPerProperty(file.events[0] as Envelope), 'at', 'soon');
      const entryId = file.entryIds[0] as string;
      await deadLetters.add(partition, failedEntryOf([entryId, timeless]), history);
      const view = await readEvent(
        { replica: h.replica, eventLog: log, partitions: 4, deadLetters },
        (file.events[0] as Envelope).event_id,
      );
      assert.equal(view?.state, 'dead');
      assert.equal(view?.accepted_at, new Date(Number(entryId.split('-')[0])).toISOString());
    });

    const fileWithTwoLetters = async (partition: number) => {
      const file = await fileInStream(partition, 2);
      const first = await fileLetter(partition, file, 0);
      const second = await fileLetter(partition, file, 1);
      return { file, first, second };
    };

    void it("lifts the block when two discards take an aggregate's last two letters at once", async () => {
      const partition = 1;
      const { file, first, second } = await fileWithTwoLetters(partition);

      const audits = await Promise.all([
        deadLetters.discard(first, 'bad header', 'operator-a'),
        deadLetters.discard(second, 'bad header', 'operator-b'),
      ]);
      assert.ok(audits.every((id) => typeof id === 'string'));
      assert.equal(await isBlocked(partition, file.aggregateId), false);
    });

    void it('keeps the block while another letter of the aggregate is left, then lifts it', async () => {
      const partition = 1;
      const { file, first, second } = await fileWithTwoLetters(partition);
      // Another aggregate's letter, filed after both, names another aggregate: it keeps nothing.
      const other = await fileInStream(partition, 1);
      await fileLetter(partition, other, 0);

      assert.ok(await deadLetters.discard(second, 'duplicate', 'operator'));
      assert.equal(await isBlocked(partition, file.aggregateId), true, 'the first is still dead');
      assert.ok(await deadLetters.discard(first, 'duplicate', 'operator'));
      assert.equal(await isBlocked(partition, file.aggregateId), false);
      assert.equal(await isBlocked(partition, other.aggregateId), true);
    });

    void it("keeps the block while the aggregate's other letter lies pages of letters away, on either side", async () => {
      const partition = 2;
      // The discard looks outward from the discarded letter a page at a time: 16 letters, then 32…
      const othersBetween = async () => {
        for (let n = 0; n < 70; n += 1) {
          await fileLetter(partition, await fileInStream(partition, 1), 0);
        }
      };
      const file = await fileInStream(partition, 2);
      const first = await fileLetter(partition, file, 0);
      await othersBetween();
      const second = await fileLetter(partition, file, 1);
      await othersBetween();

      assert.ok(await deadLetters.discard(first, 'duplicate', 'operator'));
      assert.equal(
        await isBlocked(partition, file.aggregateId),
        true,
        'the second, later, is left',
      );
      const again = await fileInStream(partition, 2);
      const earlier = await fileLetter(partition, again, 0);
      await othersBetween();
      const later = await fileLetter(partition, again, 1);
      assert.ok(await deadLetters.discard(later, 'duplicate', 'operator'));
      assert.equal(await isBlocked(partition, again.aggregateId), true, 'the earlier one is left');

      assert.ok(await deadLetters.discard(second, 'duplicate', 'operator'));
      assert.equal(await isBlocked(partition, file.aggregateId), false);
      assert.ok(await deadLetters.discard(earlier, 'duplicate', 'operator'));
      assert.equal(await isBlocked(partition, again.aggregateId), false);
    });

    void it('dead-letters and retries an aggregate whose pending entries spilled into a list of its own', async () => {
      const partition = 0;
      const keys = log.keys(partition);
      const file = await fileInStream(partition, 12);
      const bucket = keys.inflight('raw_data_file', file.aggregateId);
      const list = keys.inflightList('raw_data_file', file.aggregateId);
      assert.equal(await redis.hget(bucket, file.aggregateId), 'spilled');

      const first = await fileLetter(partition, file, 0);
      assert.deepEqual(await redis.lrange(list, 0, -1), file.entryIds.slice(1));
      await assert.rejects(
        deadLetters.retryAggregate(first),
        (err: unknown) => err instanceof LaterEventsInFlightError && /^11 later/.test(err.message),
        'the eleven still in the list are counted',
      );
      // The rest follow the block into the dead letters as the projector reaches them.
      for (let n = 1; n < file.events.length; n += 1) {
        await fileLetter(partition, file, n);
      }
      assert.equal(await redis.exists(list), 0);
      assert.equal(await redis.hexists(bucket, file.aggregateId), 0);
      assert.deepEqual(await log.readInflight(file.aggregateId, partition), []);
      await bucketsInUse(redis, log, partition);

      const retried = [...(await deadLetters.retryAggregate(first)).values()].map((r) => r.entryId);
      assert.equal(retried.length, file.events.length);
      assert.deepEqual(retried, [...retried].sort(compareEntryIds), 'put back in accepted order');
      assert.equal(await redis.hget(bucket, file.aggregateId), 'spilled');
      assert.deepEqual(await redis.lrange(list, 0, -1), retried);
      assert.deepEqual(
        (await log.readInflight(file.aggregateId, partition)).map((e) => [
          e.entryId,
          e.event.event_id,
        ]),
        retried.map((id, n) => [id, file.events[n]?.event_id]),
      );
      assert.equal(await isBlocked(partition, file.aggregateId), false);
      await bucketsInUse(redis, log, partition);
    });
  });

  void describe('a partition consumer', () => {
    /**
     * Runs a partition consumer of `log` until `until` holds, counting its looks at its lease
     * (`leaseValid` answers each); nothing it reads is applicable.
     */
    const runConsumer = async (
      log: EventLog,
      partition: number,
      options: {
        leaseValid: (checks: number) => boolean;
        breaker?: CircuitBreaker;
        until: (checks: number) => Promise<boolean>;
        apply?: ConsumerDeps['apply'];
        batchSize?: number;
      },
    ) => {
      let checks = 0;
      const reader = h.serviceRedis();
      await reader.connect();
      const consumer = new PartitionConsumer({
        apply: options.apply ?? (() => Promise.reject(new Error('nothing is applicable'))),
        eventLog: log,
        deadLetters: new DeadLetters(log),
        reader,
        lease: { site: 'here', partition, consumer: 'stalled', token: 1 },
        leaseValid: () => {
          checks += 1;
          return options.leaseValid(checks);
        },
        breaker: options.breaker ?? new CircuitBreaker({ failureThreshold: 5, coolDownMs: 30_000 }),
        batchSize: options.batchSize ?? 100,
        maxAttempts: 5,
        logger: createLogger('silent'),
        metrics: createMetrics(),
      });
      consumer.start();
      try {
        await waitFor(() => options.until(checks), 'the consumer to have gone round its loop');
      } finally {
        await consumer.stop();
      }
    };

    void it('files no dead letters, past its lease, on what it read before', async () => {
      // A log of its own: the consumer reads every entry of its partition.
      const own = new EventLog(redis, `${h.config.namespace}-stalled`, 2);
      await own.ensureGroups();
      const deadLetters = new DeadLetters(own);
      const partition = 1;
      const aggregateId = newIdInPartition(partition, 2);
      const events = [0, 1].map(
        (n): Envelope => ({
          ...fileEvent(aggregateId, n),
          event_id: newIdInPartition(partition, 2),
        }),
      );
      const entryIds: string[] = [];
      for (const event of events) {
        const result = await own.append({ partition, events: [event] });
        assert.ok(result.kind === 'appended');
        entryIds.push(result.entryIds[0] ?? '');
      }
      // The first is dead: the second, its follower, would be dead-lettered behind it.
      const stream = own.keys(partition).stream;
      await redis.xreadgroup('GROUP', CONSUMER_GROUP, 'old', 'COUNT', 1, 'STREAMS', stream, '>');
      await deadLetters.add(
        partition,
        failedEntryOfEvent(entryIds[0] ?? '', events[0] as Envelope),
        [{ at: new Date().toISOString(), error: 'boom' }],
      );
      // Valid when the loop looks before its reads (its own pending entries, none, then new
      // ones), lapsed by the time the page of new ones is handled: the new owner holds it now.
      await runConsumer(own, partition, {
        leaseValid: (checks) => checks <= 2,
        until: async (checks) => checks >= 4,
      });
      assert.equal(await deadLetters.get(events[1]?.event_id ?? '', partition), undefined);
      assert.equal(await own.entryIdOfEvent(events[1]?.event_id ?? '', partition), entryIds[1]);
    });

    void it('counts no attempt, past its lease, on an entry it read before', async () => {
      const own = new EventLog(redis, `${h.config.namespace}-stalled-attempt`, 1);
      await own.ensureGroups();
      // Nobody can decode it: its first failure counts an attempt and files it at once.
      const undecodable = (await redis.xadd(own.keys(0).stream, '*', 'nonsense', '1')) as string;
      await runConsumer(own, 0, {
        leaseValid: (checks) => checks <= 2,
        until: async (checks) => checks >= 4,
      });
      assert.equal(await redis.hget(own.keys(0).attempts, undecodable), null);
      assert.equal(await redis.xlen(own.keys(0).deadLetters), 0);
    });

    void it('reads again what it read while its lease looked lapsed, before anything newer, once the other consumer holds nothing', async () => {
      const own = new EventLog(redis, `${h.config.namespace}-lapsed-read`, 1);
      await own.ensureGroups();
      const { stream } = own.keys(0);
      const aggregateId = newIdInPartition(0, 1);
      const appendOne = async (n: number) => {
        const event = { ...fileEvent(aggregateId, n), event_id: newIdInPartition(0, 1) };
        const appended = await own.append({ partition: 0, events: [event] });
        assert.ok(appended.kind === 'appended');
        return appended.entryIds[0] as string;
      };
      const applied: string[] = [];
      // The lease as the loop sees it: ours, then looked at no more while the entries are laid
      // out, then ours for one read that comes back past its renewal, then ours again.
      let lease: 'ours' | 'aside' | 'lapses after a read' | 'lapsed' = 'ours';
      let checksWhileOurs = 0;
      let checksWhileAside = 0;
      let checksWhileLapsed = 0;
      const pendingOfOurs = async () =>
        ((await redis.xpending(stream, CONSUMER_GROUP, '-', '+', 10, 'stalled')) as unknown[])
          .length;
      let newer: string | undefined;
      const running = runConsumer(own, 0, {
        batchSize: 1,
        apply: async ({ entries }) => {
          applied.push(...entries.map((entry) => entry.entryId));
          return {
            applied: [...entries],
            duplicates: [],
            failed: [],
            deferred: [],
            commitLsn: '0/1',
          };
        },
        leaseValid: () => {
          switch (lease) {
            case 'aside':
              checksWhileAside += 1;
              return false;
            case 'lapses after a read':
              lease = 'lapsed';
              return true;
            case 'lapsed':
              checksWhileLapsed += 1;
              return false;
            default:
              checksWhileOurs += 1;
              return true;
          }
        },
        until: async () => newer !== undefined && applied.includes(newer),
      });
      // Its own pending entries read (none), it reads new ones.
      await waitFor(async () => checksWhileOurs >= 2, 'the consumer to read new entries');
      lease = 'aside';
      await waitFor(async () => checksWhileAside > 0, 'the consumer to stop reading');
      // The former owner's read, late: it holds the oldest entry; ours and a newer one follow.
      const former = await appendOne(0);
      await redis.xreadgroup('GROUP', CONSUMER_GROUP, 'former', 'COUNT', 1, 'STREAMS', stream, '>');
      const readWhileLapsed = await appendOne(1);
      newer = await appendOne(2);
      lease = 'lapses after a read';
      // Looked at after the read, and again before the next: the read was handled as lapsed.
      await waitFor(async () => checksWhileLapsed >= 2, 'the read that came back past the renewal');
      assert.equal(await pendingOfOurs(), 1, 'what it read waits in its pending list');
      // The acker acknowledges what the former owner held; then the lease is ours again.
      await redis.xack(stream, CONSUMER_GROUP, former);
      lease = 'ours';
      await running;
      assert.deepEqual(applied, [readWhileLapsed, newer]);
    });

    void it("reads nothing while another partition's batch holds the breaker's probe", async () => {
      const own = new EventLog(redis, `${h.config.namespace}-probe`, 1);
      await own.ensureGroups();
      const appended = await own.append({
        partition: 0,
        events: [fileEvent(newIdInPartition(0, 1), 0)],
      });
      assert.ok(appended.kind === 'appended');
      const breaker = new CircuitBreaker({ failureThreshold: 1, coolDownMs: 1 });
      breaker.recordFailure();
      await waitFor(async () => breaker.state === 'half_open', 'the cool-down to end');
      assert.ok(breaker.tryAcquire(), 'the probe, taken by another partition');
      // A read would deliver the entry (and each read again restart its idle time).
      await runConsumer(own, 0, {
        leaseValid: () => true,
        breaker,
        until: async (checks) => checks >= 5,
      });
      const [pending] = (await redis.xpending(own.keys(0).stream, CONSUMER_GROUP)) as [number];
      assert.equal(pending, 0, 'the entry was never delivered');
    });
  });

  void describe('a replay while an operator discards', () => {
    void it('does not bring back a letter discarded after the replay began', async () => {
      const own = new EventLog(redis, `${h.config.namespace}-replay`, 1);
      await own.ensureGroups();
      const deadLetters = new DeadLetters(own);
      const stream = own.keys(0).stream;
      // A first page of events still in flight, then the dead one on the second page.
      const events = Array.from(
        { length: 501 },
        (_, n): Envelope => ({ ...fileEvent(newIdInPartition(0, 1), n) }),
      );
      const appended = await own.append({ partition: 0, events });
      assert.ok(appended.kind === 'appended');
      await redis.xreadgroup('GROUP', CONSUMER_GROUP, 'c', 'COUNT', 1000, 'STREAMS', stream, '>');
      const victim = events[500] as Envelope;
      await deadLetters.add(0, failedEntryOfEvent(appended.entryIds[500] ?? '', victim), [
        { at: new Date().toISOString(), error: 'boom' },
      ]);
      const letter = await deadLetters.get(victim.event_id, 0);
      assert.ok(letter);
      const lengthBefore = await redis.xlen(stream);
      let discarding: Promise<unknown> | undefined;
      const report = await replay(
        { eventLog: own, main: h.main },
        { from: '0', dryRun: false },
        {
          waitMs: 0,
          // Sent on the replay's own connection, so Redis runs it before the next page's read.
          onProgress: () => {
            discarding ??= deadLetters.discard(letter, 'not real data', 'operator');
          },
        },
      );
      assert.ok(await discarding, 'discarded while the replay ran');
      assert.equal(report.applied, 0, JSON.stringify(report));
      assert.equal(report.discarded, 1);
      assert.equal(report.in_flight, 500);
      assert.equal(await redis.xlen(stream), lengthBefore, 'nothing appended again');
    });
    void it('gives back an event put back after its discard, whose first entry was discarded', async () => {
      const own = new EventLog(redis, `${h.config.namespace}-replay-put-back`, 1);
      await own.ensureGroups();
      const deadLetters = new DeadLetters(own);
      const stream = own.keys(0).stream;
      const event = fileEvent(newIdInPartition(0, 1), 0);
      const appended = await own.append({ partition: 0, events: [event] });
      assert.ok(appended.kind === 'appended');
      const first = appended.entryIds[0] as string;
      await redis.xreadgroup('GROUP', CONSUMER_GROUP, 'c', 'COUNT', 10, 'STREAMS', stream, '>');
      await deadLetters.add(0, failedEntryOfEvent(first, event), [
        { at: new Date().toISOString(), error: 'boom' },
      ]);
      const letter = await deadLetters.get(event.event_id, 0);
      assert.ok(letter);
      const [[, fields] = ['', [] as string[]]] = await redis.xrange(stream, first, first);
      await deadLetters.discard(letter, 'not real data', 'operator');
      // A duplicate entry of the event, dead-lettered on its own and retried after the discard:
      // the projector applies it (isDiscardedEntry), and the main database was since restored.
      const putBack = (await redis.xadd(stream, '*', ...fields)) as string;
      await redis.xreadgroup('GROUP', CONSUMER_GROUP, 'c', 'COUNT', 10, 'STREAMS', stream, '>');
      await redis.xack(stream, CONSUMER_GROUP, putBack);

      const report = await replay(
        { eventLog: own, main: h.main },
        { from: '0', dryRun: true },
        { waitMs: 0 },
      );
      assert.equal(report.discarded, 1, JSON.stringify(report));
      assert.equal(report.applied, 1, 'the entry put back is what the database lacks');
      assert.equal(report.scanned, 2);
    });
  });

  void describe('lists filtered on a field set at creation', () => {
    void it('leaves out exactly the aggregates whose creation event in flight lacks the value', async () => {
      // A log of its own: every aggregate in flight is one of this test's.
      const own = new EventLog(redis, `${h.config.namespace}-lists`, 4);
      await own.ensureGroups();
      const partition = 2;
      const unitOf = (n: number) => `0193a2b4-5c6d-7e8f-9a0b-1c2d3e4f${String(n).padStart(4, '0')}`;
      const file = (unit: string, extra: Partial<Envelope> = {}): Envelope =>
        ({
          ...fileEvent(newIdInPartition(partition, 4), 0),
          event_id: newIdInPartition(partition, 4),
          data: {
            executed_obs_unit_id: unit,
            path: '/p',
            size_bytes: 1,
            checksum: 'ab',
            checksum_algorithm: 'xxh64',
            created_at: new Date().toISOString(),
          },
          ...extra,
        }) as Envelope;
      const appendAll = async (...events: Envelope[]) => {
        for (const event of events) {
          assert.equal((await own.append({ partition, events: [event] })).kind, 'appended');
        }
      };
      const wanted = unitOf(1);
      const matching = file(wanted);
      const other = file(unitOf(2));
      // Created earlier (its creation acknowledged): a later event is its first in flight.
      const laterUpdate = { ...file(unitOf(2)), type: 'ExecutedObsUnitUpdated' } as Envelope;
      // Another version than the one asked about is not searched.
      const olderVersion = { ...file(unitOf(2)), version: 0 } as Envelope;
      // The field and value written inside another string are escaped there: not taken for them.
      const valueElsewhere = file(unitOf(2));
      (valueElsewhere.data as Record<string, unknown>).path = `"executed_obs_unit_id":"${wanted}"`;
      // A nested field of the same name keeps its aggregate, for the merge to leave out.
      const nested = file(unitOf(3));
      (nested.data as Record<string, unknown>).checksum = { executed_obs_unit_id: wanted };
      // Written a field per property (as earlier builds did, and as an empty writer still is):
      // not searched.
      const perProperty = file(unitOf(2), { written_by: '' });
      const searched = [
        matching,
        other,
        laterUpdate,
        olderVersion,
        valueElsewhere,
        nested,
        perProperty,
      ];
      await appendAll(...searched);
      const perPropertyEntry = await own.entryIdOfEvent(perProperty.event_id, partition);
      assert.deepEqual(
        (
          await redis.xrange(
            own.keys(partition).stream,
            perPropertyEntry ?? '',
            perPropertyEntry ?? '',
          )
        )[0]?.[1][0],
        'event_id',
        'written a field per property',
      );
      // Spilled aggregates (many events, their creation first), one of each kind.
      const spilled = file(unitOf(2));
      const spilledMatching = file(wanted);
      for (const creation of [spilled, spilledMatching]) {
        await appendAll(
          creation,
          ...Array.from(
            { length: 8 },
            () => ({ ...creation, event_id: newIdInPartition(partition, 4) }) as Envelope,
          ),
        );
        assert.equal(
          await redis.hget(
            own.keys(partition).inflight('raw_data_file', creation.aggregate_id),
            creation.aggregate_id,
          ),
          'spilled',
        );
      }
      const kept = async (type: AggregateType, creation: CreationFilter) =>
        (await own.inflightAggregateIds(type, creation)).map(({ id }) => id).sort();
      assert.deepEqual(
        await kept('raw_data_file', {
          type: 'RawDataFileRegistered',
          version: 1,
          needle: `"executed_obs_unit_id":${JSON.stringify(wanted)}`,
        }),
        [matching, laterUpdate, olderVersion, nested, perProperty, spilledMatching]
          .map((e) => e.aggregate_id)
          .sort(),
        'other, valueElsewhere and spilled are left out',
      );

      // A value JSON escapes (quotes, backslashes, control characters, non-ASCII) is found as written.
      const awkward = 'ou "north" \\ tab\t é 星';
      const unit = {
        ...file(unitOf(4)),
        aggregate_type: 'executed_obs_unit',
        type: 'ExecutedObsUnitStarted',
        version: 2,
        data: { obs_unit_id: awkward, instrument: 'x', metadata: {} },
      } as Envelope;
      await appendAll(unit);
      const asked = (value: string) =>
        kept('executed_obs_unit', {
          type: 'ExecutedObsUnitStarted',
          version: 2,
          needle: `"obs_unit_id":${JSON.stringify(value)}`,
        });
      assert.deepEqual(await asked(awkward), [unit.aggregate_id]);
      assert.deepEqual(await asked(`${awkward} `), []);
    });
  });
});
