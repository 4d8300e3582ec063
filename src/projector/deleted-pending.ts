import type { Redis } from 'ioredis';
import { compareEntryIds } from '../log/entry-id.ts';
import type { PartitionKeys } from '../log/keys.ts';
import type { Logger } from '../observability/logger.ts';

/** Entry ids a log line names, of the pending entries found deleted. */
const DELETED_LISTED = 20;

/**
 * Of the pending entries an XCLAIM asked for, those it did not get because the stream no longer
 * holds them. Redis 7 drops a deleted entry from the pending list as a claim meets it and leaves
 * it out of the reply, as it leaves out one acknowledged meanwhile; only the stream tells them
 * apart. An acknowledged entry stays until Outpost trims it (retention, or memory pressure), and
 * its trims record how far they reached first (`trimmedThrough`): an entry up to there is not
 * said deleted by hand.
 */
export const deletedAmong = async (
  redis: Redis,
  keys: Pick<PartitionKeys, 'stream' | 'trimmedThrough'>,
  asked: readonly string[],
  got: readonly string[],
): Promise<string[]> => {
  const claimed = new Set(got);
  const missing = asked.filter((id) => !claimed.has(id));
  if (missing.length === 0) {
    return [];
  }
  const pipeline = redis.pipeline().get(keys.trimmedThrough);
  for (const id of missing) {
    pipeline.xrange(keys.stream, id, id);
  }
  const [[, trimmedThrough] = [], ...found] = (await pipeline.exec()) ?? [];
  return missing.filter((id, i) => {
    const [err, entries] = found[i] ?? [];
    const trimmedByOutpost =
      typeof trimmedThrough === 'string' && compareEntryIds(id, trimmedThrough) <= 0;
    return err == null && Array.isArray(entries) && entries.length === 0 && !trimmedByOutpost;
  });
};

/**
 * Says which pending entries a claim found deleted from the stream by hand: Redis drops them
 * from the pending list as it answers, so nothing else would ever say so. `logger` is the
 * partition's, which names it.
 */
export const sayDeletedPending = (
  logger: Logger,
  deleted: readonly string[],
  whose: 'taken over with the partition' | 'claimed from another consumer',
): void => {
  if (deleted.length === 0) {
    return;
  }
  logger.error(
    { count: deleted.length, entryIds: deleted.slice(0, DELETED_LISTED) },
    `pending entries ${whose} were deleted from the stream outside Outpost (XDEL, or XTRIM by length) and are no longer pending: their events are lost unless they had applied (the main database has those in events); a replay cannot bring them back`,
  );
};
