import { entryIdAt, entryTime, minEntryId, timeMs } from './entry-id.ts';
import type { EventLog } from './event-log.ts';
import { CONSUMER_GROUP } from './keys.ts';

const FIRST_POSSIBLE_ENTRY = '0-0';

/**
 * The lowest entry id trimming may keep from: older than the retention, and never at or past the
 * oldest entry some consumer still has pending, nor past what the group has yet to be delivered.
 * XTRIM itself ignores the pending list (Redis 7), so this bound is the only guard.
 */
export const trimFloor = async (
  eventLog: EventLog,
  partition: number,
  retentionMs: number,
  now: number,
) => {
  const stream = eventLog.keys(partition).stream;
  // Delivery position first, pending list second. The other way round, a read between the two
  // (pending list still empty, delivery moved on) put the floor at the new delivery position,
  // and trimmed the entries just delivered: lost. This way an entry below the floor was delivered
  // before the first call, so if it is still unacknowledged the second call sees it pending.
  const groups = (await eventLog.redis.xinfo('GROUPS', stream)) as unknown[][];
  const lastDelivered = groups.map((g) => String(g[g.indexOf('last-delivered-id') + 1]));
  const [, lowestPending] = (await eventLog.redis.xpending(stream, CONSUMER_GROUP)) as [
    number,
    string | null,
  ];
  return (
    minEntryId([
      entryIdAt(now - retentionMs),
      ...(lowestPending ? [lowestPending] : []),
      ...lastDelivered,
    ]) ?? FIRST_POSSIBLE_ENTRY
  );
};

/**
 * Milliseconds since the epoch by Redis's clock, the one that names stream entries: a projector
 * host whose clock runs ahead would otherwise trim entries younger than the retention.
 */
const redisNow = async (eventLog: EventLog): Promise<number> => timeMs(await eventLog.redis.time());

/** Trims acknowledged entries older than the retention from one partition; the number removed. */
export const trimPartition = async (
  eventLog: EventLog,
  partition: number,
  retentionMs: number,
  now?: number,
): Promise<number> => {
  const floor = await trimFloor(
    eventLog,
    partition,
    retentionMs,
    now ?? (await redisNow(eventLog)),
  );
  if (floor === FIRST_POSSIBLE_ENTRY) {
    // Nothing delivered yet (a new or idle partition): nothing is below, and Redis refuses a
    // range that ends before 0-0.
    return 0;
  }
  const keys = eventLog.keys(partition);
  // The newest entry the trim removes, so a replay can tell whether its range reached into what
  // is gone (nothing else takes entries out of a partition stream).
  const [lastBelow] = (await eventLog.redis.xrevrange(
    keys.stream,
    `(${floor}`,
    '-',
    'COUNT',
    1,
  )) as [string, unknown][];
  // Marked before the trim: a replay reading the mark with each page sees every trim that took
  // entries before that read, and a crash in between leaves the mark saying too much is gone,
  // never too little. Past its maxmemory Redis still takes the mark (its script is allowed
  // there); a mark that failed otherwise is tried again after the trim.
  const mark = () =>
    lastBelow
      ? eventLog.recordTrimmedThrough(keys.trimmedThrough, lastBelow[0]).then(
          () => true,
          () => false,
        )
      : Promise.resolve(true);
  const marked = await mark();
  const trimmed = Number(await eventLog.redis.xtrim(keys.stream, 'MINID', floor));
  if (trimmed > 0 && !marked) {
    await mark();
  }
  return trimmed;
};

/**
 * Under memory pressure: trims the older half of a partition's acknowledged history, whatever the
 * retention says (never an entry still pending or not yet delivered, as above). Called every few
 * seconds while the pressure lasts, the history halves each time. Answers what it removed and the
 * time the partition's log now reaches back to, if it holds anything.
 */
export const trimHalfHistory = async (
  eventLog: EventLog,
  partition: number,
): Promise<{ trimmed: number; reachesBackTo: number | undefined }> => {
  const stream = eventLog.keys(partition).stream;
  const oldest = async () => {
    const [first] = await eventLog.redis.xrange(stream, '-', '+', 'COUNT', 1);
    return first ? entryTime(first[0]) : undefined;
  };
  const now = await redisNow(eventLog);
  const from = await oldest();
  if (from === undefined || from >= now) {
    return { trimmed: 0, reachesBackTo: from };
  }
  const trimmed = await trimPartition(eventLog, partition, Math.ceil((now - from) / 2), now);
  return { trimmed, reachesBackTo: await oldest() };
};
