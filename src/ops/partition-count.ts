import { hostname } from 'node:os';
import type { Redis } from 'ioredis';
import { partitionOfScopeHash } from '../domain/ids.ts';
import { isOutOfMemory, writeRefusal } from '../log/capacity.ts';
import { EventLog, type RosterOutcome } from '../log/event-log.ts';
import { globEscaped, partitionCountKey, processRosterKey } from '../log/keys.ts';
import { pipelineReplies } from '../log/redis.ts';
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

/** How long a process stays in the site's roster after its last call, and how often it calls. */
const LISTED_MS = 20_000;
const RELIST_EVERY_MS = 5_000;

/** A process's place in the site's roster, renewed until it stops. */
export type SiteListing = {
  /** Why this process refuses requests: the site's recorded partition count is not its own. */
  readonly countError: string | undefined;
  stop(): Promise<void>;
};

/**
 * Records the partition count at a process's start, or checks it against the one recorded, and
 * lists the process in the site's roster under its count for as long as it runs. An aggregate's
 * partition follows from its id and the count: processes with another count would put its events
 * in two streams (out of order, a start and its finish guarded apart, one request under one key
 * appended twice), and operator tools with another count would look at part of the log and
 * report all well. A change is taken while the log holds nothing pending and no dead letters and
 * no listed process runs with the old count, as the README says to make it; otherwise start-up
 * is refused, saying why.
 */
export const checkPartitionCount = async (
  eventLog: EventLog,
  logger: Logger,
  {
    name = `${hostname()} pid ${process.pid}`,
    relistEveryMs = RELIST_EVERY_MS,
  }: { name?: string; relistEveryMs?: number } = {},
): Promise<SiteListing> => {
  const { redis, namespace, partitions } = eventLog;
  const member = `${partitions} ${name}`;
  for (let look = 0; look < 3; look += 1) {
    const previous = await redis.get(partitionCountKey(namespace));
    const changing = previous !== null && Number(previous) !== partitions;
    if (changing) {
      await refuseWhileLogHolds(redis, namespace, partitions, Number(previous));
      await carryIdempotencyKeys(eventLog, Number(previous), logger);
    }
    const outcome = await listOnce(eventLog, previous ?? '', member);
    if (outcome === 'refused') {
      if (changing) {
        throw new PartitionCountError(
          `OUTPOST_PARTITIONS is ${partitions}, but this site's log was written with ${previous} partitions, and the change cannot be recorded while Redis refuses writes: start with OUTPOST_PARTITIONS=${previous}`,
        );
      }
      // A Redis refusing writes (full, or a failed save) must not stop a start that would drain
      // it: the count is recorded, and the process listed, by a renewal that can write.
      logger.warn('cannot record the partition count while Redis refuses writes');
      return keepListed(eventLog, { member, relistEveryMs }, logger, previous ?? '');
    }
    const [state, ...detail] = outcome;
    if (state === 'listed') {
      if (changing) {
        // Once the change is taken, before this process serves: a start refused after this
        // step leaves the statuses the site runs on as they were.
        await forgetUnitStatuses(eventLog);
        logger.warn(
          { from: Number(previous), to: partitions },
          'partition count changed; the log held nothing pending',
        );
      }
      return keepListed(eventLog, { member, relistEveryMs }, logger, String(partitions));
    }
    if (state === 'held') {
      // Appended to since this look, by a process with the old count: the next look says what.
      continue;
    }
    if (state === 'running') {
      throw new PartitionCountError(
        `OUTPOST_PARTITIONS is ${partitions}, but ${detail.length} process(es) of this site still run with another count: ${detail.map(describeMember).join('; ')}. Stop them first (a process stays listed ${LISTED_MS / 1000} s after it stops)`,
      );
    }
    const [theirs = ''] = detail;
    if (previous === null && theirs !== '' && Number(theirs) !== partitions) {
      // Starting together, with nothing yet to tell which is meant: a different count is refused
      // rather than taken over.
      throw new PartitionCountError(
        `OUTPOST_PARTITIONS is ${partitions}, but a process of this site starting at the same moment recorded ${theirs}: give every process the same count`,
      );
    }
    // Changed between the read and the call: look again.
  }
  throw new PartitionCountError(
    `OUTPOST_PARTITIONS is ${partitions}, and the count recorded for this site kept changing while this process started: give every process the same count`,
  );
};

/** The names of the keys that start with `prefix`, a page at a time (SCAN: never blocks Redis). */
const keysStartingWith = (redis: Redis, prefix: string) =>
  redis.scanStream({ match: `${globEscaped(prefix)}*`, count: 1_000 }) as AsyncIterable<string[]>;

/**
 * Copies the idempotency claims and records of the last 24 h to the partition each key has under
 * the new count. A key's partition follows from its scope's hash and the count, and a record lies
 * beside the stream its request appended to: under another count a retry looked elsewhere, found
 * nothing, and appended its request a second time (a replayed finish answered 409). The claim
 * lands where the retry claims, the record where it looks when it finds its own claim. Copied,
 * not moved: until the change is recorded a process with the old count may still answer from
 * them, and a start refused after this step leaves the site as it was.
 */
const carryIdempotencyKeys = async (eventLog: EventLog, before: number, logger: Logger) => {
  const { redis, partitions } = eventLog;
  let carried = 0;
  for (let from = 0; from < before; from += 1) {
    const keys = eventLog.keys(from);
    for (const kind of ['idempotency', 'idempotencyClaim'] as const) {
      const prefix = keys[kind]('');
      for await (const page of keysStartingWith(redis, prefix)) {
        const moving = page
          .map((name) => {
            const scopeHash = name.slice(prefix.length);
            return { name, to: partitionOfScopeHash(scopeHash, partitions), scopeHash };
          })
          .filter(({ to }) => to !== from);
        if (moving.length === 0) {
          continue;
        }
        const read = redis.pipeline();
        for (const { name } of moving) {
          read.pttl(name).dumpBuffer(name);
        }
        const replies = await pipelineReplies(read);
        const write = redis.pipeline();
        moving.forEach(({ to, scopeHash }, i) => {
          const ttl = replies[2 * i] as number;
          const value = replies[2 * i + 1] as Buffer | null;
          if (value !== null && ttl !== -2) {
            // Not over a key already there: the same request's own record, or a copy by another
            // process taking the same change.
            write.restore(eventLog.keys(to)[kind](scopeHash), Math.max(ttl, 0), value);
          }
        });
        const written = (await write.exec()) ?? [];
        carried += written.filter(([err]) => !err).length;
        // BUSYKEY for those already there: nothing to do. Anything else (Redis full) would leave
        // a retry across the change to append a second time: the change is not taken.
        const failed = written.find(([err]) => err && !/^BUSYKEY/.test(err.message));
        if (failed?.[0]) {
          throw new PartitionCountError(
            `OUTPOST_PARTITIONS is ${partitions}, but the Idempotency-Key records of the last 24 h could not be copied to where that count looks (${failed[0].message}): start with OUTPOST_PARTITIONS=${before} until Redis takes writes again`,
          );
        }
      }
    }
  }
  if (carried > 0) {
    logger.info({ carried, from: before, to: partitions }, 'idempotency keys carried over');
  }
};

/**
 * Drops every unit status the write guard keeps beside the streams of the new count. A unit's
 * status lies in its partition, which moves with the count, and a status left from an earlier
 * count was trusted over the replica for its 30 days: after a change there and back, a unit
 * finished meanwhile read `running` again, and a second finish was answered 202 and then
 * dead-lettered. Nothing is pending at a change, so the replica, from which a missing status is
 * seeded, has every event; dropped is what an expired status already is.
 */
const forgetUnitStatuses = async (eventLog: EventLog) => {
  const { redis, partitions } = eventLog;
  for (let partition = 0; partition < partitions; partition += 1) {
    for await (const page of keysStartingWith(redis, eventLog.keys(partition).unitState(''))) {
      if (page.length > 0) {
        await redis.unlink(...page);
      }
    }
  }
};

const describeMember = (member: string) => {
  const [count, ...name] = member.split(' ');
  return `${name.join(' ')} with ${count}`;
};

const refuseWhileLogHolds = async (
  redis: Redis,
  namespace: string,
  partitions: number,
  before: number,
) => {
  const held = totalsOf(await readBuffer(new EventLog(redis, namespace, before)));
  if (held.pending > 0 || held.deadLetters > 0) {
    throw new PartitionCountError(
      `OUTPOST_PARTITIONS is ${partitions}, but this site's log was written with ${before} partitions and still holds ${held.pending} pending event(s) and ${held.deadLetters} dead letter(s): with another count an aggregate's events would go to two streams. Start with OUTPOST_PARTITIONS=${before} until outpost pending shows none and the dead letters are settled, then change it`,
    );
  }
};

const listOnce = (
  eventLog: EventLog,
  found: string,
  member: string,
): Promise<RosterOutcome | 'refused'> =>
  eventLog.listProcess({ found, member, listedMs: LISTED_MS }).catch((err: Error) => {
    if (!isOutOfMemory(err) && writeRefusal(err) === undefined) {
      throw err;
    }
    return 'refused' as const;
  });

/**
 * Renews the listing until the process stops. Should the recorded count change under a running
 * process (its listing lapsed while Redis was away and a process with another count took the
 * change, or a process of an earlier build changed it), its writes would go where the site's
 * other processes do not look, and its reads would miss what they wrote: it refuses both from
 * then on (`countError`, 503 and /health), saying why, until the count is its own again.
 */
const keepListed = (
  eventLog: EventLog,
  { member, relistEveryMs }: { member: string; relistEveryMs: number },
  logger: Logger,
  lastFound: string,
): SiteListing => {
  const { namespace, partitions } = eventLog;
  let found = lastFound;
  let countError: string | undefined;
  const refuse = (error: string) => {
    if (countError !== error) {
      logger.error({ partitions }, error);
    }
    countError = error;
  };
  let renewal: Promise<void> | undefined;
  const renew = async () => {
    const outcome = await listOnce(eventLog, found, member);
    if (outcome === 'refused') {
      return;
    }
    const [state, ...detail] = outcome;
    if (state === 'listed') {
      found = String(partitions);
      if (countError !== undefined) {
        logger.warn(
          { partitions },
          "the recorded partition count is this process's again: requests are taken",
        );
      }
      countError = undefined;
    } else if (state === 'running') {
      refuse(
        `no partition count is recorded for this site, and ${detail.length} process(es) run with another than this process's ${partitions}: ${detail.map(describeMember).join('; ')}; writes, reads and the admin requests that walk partitions are refused until every process runs with one count`,
      );
    } else {
      const [theirs = ''] = detail;
      if (theirs === '' || Number(theirs) === partitions) {
        // Recorded again (or lost with Redis's data): the next renewal lists this process.
        found = theirs;
      } else {
        refuse(
          `this site's partition count was changed to ${theirs} while this process runs with ${partitions}: it refuses writes, reads and the admin requests that walk partitions, which would look in the wrong ones; restart it with OUTPOST_PARTITIONS=${theirs}`,
        );
      }
    }
  };
  const timer = setInterval(() => {
    // One renewal at a time: behind a Redis that answers slowly, ticks must not queue up.
    renewal ??= renew()
      .catch(() => undefined)
      .finally(() => {
        renewal = undefined;
      });
  }, relistEveryMs);
  timer.unref();
  return {
    get countError() {
      return countError;
    },
    async stop() {
      clearInterval(timer);
      await renewal;
      await eventLog.redis.zrem(processRosterKey(namespace), member).catch(() => undefined);
    },
  };
};
