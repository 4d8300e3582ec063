import { entryTime, timeMs } from '../log/entry-id.ts';
import type { EventLog } from '../log/event-log.ts';
import { CONSUMER_GROUP } from '../log/keys.ts';
import { isNoGroup } from '../log/redis.ts';

export type PartitionBuffer = {
  partition: number;
  /** Delivered to a projector, not yet acknowledged (the consumer group's pending entries list). */
  delivered: number;
  /** Appended, not yet delivered to any projector. */
  undelivered: number;
  /** Applied on the main database, waiting for the replica to replay the commit. */
  awaitingReplica: number;
  deadLetters: number;
  /** Accept time (ms) of the oldest unacknowledged entry, if any. */
  oldestAcceptedMs: number | undefined;
};

const entryMs = (id: string | null | undefined) => (id ? entryTime(id) : undefined);

/**
 * The site's unacknowledged events per partition, and the time by Redis's clock, which names the
 * entries: their ages never depend on the clock of the host asking.
 */
export type SiteBuffer = { partitions: PartitionBuffer[]; nowMs: number };

/** Where every unacknowledged event of the site is, per partition, in one Redis round trip. */
export const readBuffer = async (eventLog: EventLog): Promise<SiteBuffer> => {
  const pipeline = eventLog.redis.pipeline();
  const keys = eventLog.allKeys();
  for (const k of keys) {
    pipeline.xpending(k.stream, CONSUMER_GROUP);
    eventLog.undeliveredIn(pipeline, k.partition);
    pipeline.llen(k.applied);
    pipeline.xlen(k.deadLetters);
  }
  pipeline.time();
  const replies = (await pipeline.exec()) ?? [];
  const value = (i: number) => {
    const [err, result] = replies[i] ?? [new Error('missing reply'), null];
    if (err) {
      throw err;
    }
    return result;
  };
  // A partition without its stream or group (a shell configured with more partitions than the
  // site, a Redis that lost its data) holds nothing: it must not fail the whole report.
  const valueOr = (i: number, empty: unknown) => {
    try {
      return value(i);
    } catch (err) {
      if (isNoGroup(err)) {
        return empty;
      }
      throw err;
    }
  };
  const nowMs = timeMs(value(keys.length * 4) as string[]);
  const buffers = keys.map((k, p) => {
    const [count, lowest] = valueOr(p * 4, [0, null]) as [number, string | null];
    const [undelivered, lastDelivered] = value(p * 4 + 1) as [number, string];
    return {
      partition: k.partition,
      delivered: Number(count),
      undelivered,
      awaitingReplica: Number(value(p * 4 + 2)),
      deadLetters: Number(value(p * 4 + 3)),
      oldestAcceptedMs: entryMs(lowest),
      lastDelivered,
    };
  });
  // The oldest undelivered entry matters only where nothing older waits in the pending list.
  const undeliveredOnly = buffers.filter(
    (b) => b.oldestAcceptedMs === undefined && b.undelivered > 0,
  );
  if (undeliveredOnly.length > 0) {
    const firsts = eventLog.redis.pipeline();
    for (const b of undeliveredOnly) {
      firsts.xrange(eventLog.keys(b.partition).stream, `(${b.lastDelivered}`, '+', 'COUNT', 1);
    }
    const replies2 = (await firsts.exec()) ?? [];
    undeliveredOnly.forEach((b, i) => {
      const entries = (replies2[i]?.[1] ?? []) as [string, string[]][];
      b.oldestAcceptedMs = entryMs(entries[0]?.[0]);
    });
  }
  return { partitions: buffers.map(({ lastDelivered: _, ...b }) => b), nowMs };
};

export const totalsOf = ({ partitions: buffers, nowMs: now }: SiteBuffer) => {
  const pending = buffers.reduce((sum, b) => sum + b.delivered + b.undelivered, 0);
  const oldest = Math.min(...buffers.map((b) => b.oldestAcceptedMs ?? Number.POSITIVE_INFINITY));
  return {
    pending,
    undelivered: buffers.reduce((sum, b) => sum + b.undelivered, 0),
    partitionsHolding: buffers.filter((b) => b.delivered + b.undelivered > 0).length,
    awaitingReplica: buffers.reduce((sum, b) => sum + b.awaitingReplica, 0),
    deadLetters: buffers.reduce((sum, b) => sum + b.deadLetters, 0),
    oldestPendingSeconds:
      pending === 0 || !Number.isFinite(oldest) ? 0 : Math.max(0, (now - oldest) / 1000),
  };
};
