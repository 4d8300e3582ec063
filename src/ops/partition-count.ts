import type { Redis } from 'ioredis';
import { isOutOfMemory, writeRefusal } from '../log/capacity.ts';
import { EventLog } from '../log/event-log.ts';
import { partitionCountKey } from '../log/keys.ts';
import type { Logger } from '../observability/logger.ts';
import { readBuffer, totalsOf } from './buffer.ts';

/** Thrown when a process's OUTPOST_PARTITIONS is not the count the site's log holds events in. */
export class PartitionCountError extends Error {
  override name = 'PartitionCountError';
}

/** The partition count the site's log was written with, when one was recorded. */
export const recordedPartitions = async (
  redis: Redis,
  namespace: string,
): Promise<number | undefined> => {
  const recorded = await redis.get(partitionCountKey(namespace));
  return recorded === null ? undefined : Number(recorded);
};

/**
 * Records the partition count at a process's start, or checks it against the one recorded. An
 * aggregate's partition follows from its id and the count: processes with another count would
 * put its events in two streams (out of order, a start and its finish guarded apart, one request
 * under one key appended twice), and operator tools with another count would look at part of the
 * log and report all well. A change is taken while the log holds nothing pending and no dead
 * letters, as the README says to make it; otherwise start-up is refused, saying why.
 */
export const checkPartitionCount = async (
  redis: Redis,
  namespace: string,
  partitions: number,
  logger: Logger,
): Promise<void> => {
  const key = partitionCountKey(namespace);
  const previous = await redis.get(key);
  if (previous === null) {
    // A Redis refusing writes (full, or a failed save) must not stop a start that would drain it;
    // the count is recorded at a start that can write.
    const recorded = await redis.set(key, String(partitions), 'NX').catch((err: Error) => {
      if (!isOutOfMemory(err) && writeRefusal(err) === undefined) {
        throw err;
      }
      logger.warn({ err }, 'cannot record the partition count while Redis refuses writes');
      return 'refused';
    });
    if (recorded !== null) {
      return;
    }
    // Another process recorded one between the two calls: starting together, with nothing yet
    // to tell which is meant, a different count is refused rather than taken over.
    const theirs = await redis.get(key);
    if (theirs !== null && Number(theirs) !== partitions) {
      throw new PartitionCountError(
        `OUTPOST_PARTITIONS is ${partitions}, but a process of this site starting at the same moment recorded ${theirs}: give every process the same count`,
      );
    }
    return;
  }
  if (Number(previous) === partitions) {
    return;
  }
  const before = Number(previous);
  const held = totalsOf(await readBuffer(new EventLog(redis, namespace, before)));
  if (held.pending > 0 || held.deadLetters > 0) {
    throw new PartitionCountError(
      `OUTPOST_PARTITIONS is ${partitions}, but this site's log was written with ${before} partitions and still holds ${held.pending} pending event(s) and ${held.deadLetters} dead letter(s): with another count an aggregate's events would go to two streams. Start with OUTPOST_PARTITIONS=${before} until outpost pending shows none and the dead letters are settled, then change it`,
    );
  }
  await redis.set(key, String(partitions));
  logger.warn(
    { from: before, to: partitions },
    'partition count changed; the log held nothing pending',
  );
};
