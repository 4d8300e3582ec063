import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { Redis } from 'ioredis';
import type { Envelope } from '../src/domain/events.ts';
import { newIdInPartition } from '../src/domain/ids.ts';
import { encodeEntryFields } from '../src/log/codec.ts';
import { EventLog } from '../src/log/event-log.ts';
import { CONSUMER_GROUP } from '../src/log/keys.ts';
import { Harness } from './harness/harness.ts';

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

void describe('the in-flight index', () => {
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
    await h.close();
  });

  void it('keeps each aggregate’s pending entries in stream order and forgets them once acknowledged', async () => {
    const [a, b] = [newIdInPartition(0, 4), newIdInPartition(0, 4)];
    const appended: string[] = [];
    for (const [i, id] of [a, b, a, a].entries()) {
      const result = await log.append({ partition: 0, events: [fileEvent(id as string, i)] });
      assert.equal(result.kind, 'appended');
      appended.push(result.kind === 'appended' ? (result.entryIds[0] ?? '') : '');
    }
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
    const record = (entryId: string, aggregateId: string) => ({
      lsn: '0/1',
      entryId,
      eventId: ofA.find((e) => e.entryId === entryId)?.event.event_id ?? 'x',
      aggregateId,
      aggregateType: 'raw_data_file',
    });
    await log.recordApplied(0, [record(appended[2] as string, a as string)]);
    assert.equal(await log.ack(0, [record(appended[2] as string, a as string)]), 1);
    assert.deepEqual(
      (await log.readInflight(a as string, 0, 'raw_data_file')).map((e) => e.entryId),
      [appended[0], appended[3]],
    );
    const rest = [
      record(appended[0] as string, a as string),
      record(appended[3] as string, a as string),
    ];
    await log.recordApplied(0, rest);
    assert.equal(await log.ack(0, rest), 2);
    assert.deepEqual(await log.readInflight(a as string, 0), []);
    assert.deepEqual(
      (await log.inflightAggregateIds('raw_data_file')).map((x) => x.id),
      [b],
    );
  });

  void it('folds the per-aggregate lists of an earlier build into the index at start', async () => {
    const keys = log.keys(1);
    const aggregateId = newIdInPartition(1, 4);
    const event = { ...fileEvent(aggregateId, 9), event_id: newIdInPartition(1, 4) };
    // What an earlier build left behind: the entry, its list and its type's set.
    const entryId = (await redis.xadd(keys.stream, '*', ...encodeEntryFields(event))) as string;
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
    await log.ensureGroups();
    assert.equal(
      (await log.readInflight(aggregateId, 1)).length,
      1,
      'a second start moves nothing twice',
    );
  });
});
