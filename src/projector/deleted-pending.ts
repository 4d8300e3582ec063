import type { Redis } from 'ioredis';
import type { Logger } from '../observability/logger.ts';

/** Entry ids a log line names, of the pending entries found deleted. */
const DELETED_LISTED = 20;

/**
 * Of the pending entries an XCLAIM asked for, those it did not get because the stream no longer
 * holds them. Redis 7 drops a deleted entry from the pending list as a claim meets it and leaves
 * it out of the reply, as it leaves out one acknowledged meanwhile; only the stream tells them
 * apart (an acknowledged entry stays until retention trims it, days later).
 */
export const deletedAmong = async (
  redis: Redis,
  stream: string,
  asked: readonly string[],
  got: readonly string[],
): Promise<string[]> => {
  const claimed = new Set(got);
  const missing = asked.filter((id) => !claimed.has(id));
  if (missing.length === 0) {
    return [];
  }
  const pipeline = redis.pipeline();
  for (const id of missing) {
    pipeline.xrange(stream, id, id);
  }
  const found = (await pipeline.exec()) ?? [];
  return missing.filter((_, i) => {
    const [err, entries] = found[i] ?? [];
    return err == null && Array.isArray(entries) && entries.length === 0;
  });
};

/**
 * Says which pending entries a claim found deleted from the stream by hand: Redis drops them
 * from the pending list as it answers, so nothing else would ever say so.
 */
export const sayDeletedPending = (
  logger: Logger,
  partition: number,
  deleted: readonly string[],
  whose: 'taken over with the partition' | 'claimed from another consumer',
): void => {
  if (deleted.length === 0) {
    return;
  }
  logger.error(
    { partition, count: deleted.length, entryIds: deleted.slice(0, DELETED_LISTED) },
    `pending entries ${whose} were deleted from the stream outside Outpost (XDEL, or XTRIM by length) and are no longer pending: their events are lost unless they had applied (the main database has those in events); a replay cannot bring them back`,
  );
};
