import { entryIdAt, entryTime, timeMs } from './entry-id.ts';
import type { EventLog } from './event-log.ts';

/**
 * Milliseconds since the epoch by Redis's clock, the one that names stream entries: a projector
 * host whose clock runs ahead would otherwise trim entries younger than the retention.
 */
const redisNow = async (eventLog: EventLog): Promise<number> => timeMs(await eventLog.redis.time());

/**
 * Trims acknowledged entries older than the retention from one partition; the number removed.
 * Never an entry still pending or not yet delivered: the script (trim.lua) keeps below the
 * oldest of either, as XTRIM alone would not, and marks how far it went for a replay.
 */
export const trimPartition = async (
  eventLog: EventLog,
  partition: number,
  retentionMs: number,
  now?: number,
): Promise<number> =>
  eventLog.trimBelow(partition, entryIdAt((now ?? (await redisNow(eventLog))) - retentionMs));

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

/**
 * The time from which a replay finds every partition's history whole: just past the newest entry
 * a trim removed from any partition, or, where none was ever trimmed, the oldest entry kept.
 * Undefined while the log holds nothing and nothing was trimmed. The oldest entry of any
 * partition would overstate it: one partition keeps an old pending entry while trims under
 * memory pressure halve the others' history.
 */
export const replayReachMs = async (eventLog: EventLog): Promise<number | undefined> => {
  const pipeline = eventLog.redis.pipeline();
  for (const keys of eventLog.allKeys()) {
    pipeline.get(keys.trimmedThrough);
    pipeline.xrange(keys.stream, '-', '+', 'COUNT', 1);
  }
  const replies = ((await pipeline.exec()) ?? []).map(([err, reply]) => {
    if (err) {
      throw err;
    }
    return reply;
  });
  const marks = replies.filter((_, i) => i % 2 === 0) as (string | null)[];
  const firsts = replies.filter((_, i) => i % 2 === 1) as [string, string[]][][];
  const trimmedThrough = marks.flatMap((mark) => (mark === null ? [] : [entryTime(mark)]));
  if (trimmedThrough.length > 0) {
    return Math.max(...trimmedThrough) + 1;
  }
  const oldest = firsts.flatMap((entries) => entries.slice(0, 1).map(([id]) => entryTime(id)));
  return oldest.length === 0 ? undefined : Math.min(...oldest);
};
