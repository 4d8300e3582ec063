import { type ChainableCommander, Redis, type RedisOptions, ReplyError } from 'ioredis';
import type { Config } from '../config.ts';
import { FailureSpell } from '../observability/failure-spell.ts';
import type { Logger } from '../observability/logger.ts';
import { addressOf, cannotReach } from '../reach.ts';
import { reasonOf } from '../reason.ts';
import { within } from '../within.ts';

/** How long a caller waits for Redis before it is told Redis is away. */
export const COMMAND_TIMEOUT_MS = 5_000;

/** The error ioredis fails a command with once its timeout passes, and `isRedisAway` knows. */
const COMMAND_TIMED_OUT = 'Command timed out';

export const commandTimedOut = (): Error => new Error(COMMAND_TIMED_OUT);

export const isCommandTimeout = (err: unknown): boolean =>
  err instanceof Error && err.message === COMMAND_TIMED_OUT;

/**
 * What `ask` answers, or the command timeout's failure COMMAND_TIMEOUT_MS after it was asked,
 * whichever comes first. ioredis settles each caller of an auto-pipeline only when the whole
 * pipeline has, and starts their clocks only when it leaves, after the pipeline before it: a
 * caller asking while that one waited on a stalled Redis heard after up to twice the timeout
 * (10 s, measured with Redis under SIGSTOP). Its commands are not called back: ioredis may still
 * send them, and send them again on a reconnect (dropLateResends keeps what is unsettled), so
 * this is only for calls whose late run does no harm: reads, a key's claim. An append is answered
 * by its own call, which is not auto-pipelined (APPEND_COMMAND).
 */
export const withinCommandTimeout = <T>(ask: () => Promise<T>): Promise<T> =>
  within(new Promise<T>((resolve) => resolve(ask())), COMMAND_TIMEOUT_MS, commandTimedOut);

/**
 * The append script's command (EventLog defines it), sent on its own rather than auto-pipelined:
 * its 5 s then run from when it leaves, not from when the auto-pipeline before it settles (up to
 * another 5 s on a stalled Redis). Its writes are gathered already, a call per partition.
 */
export const APPEND_COMMAND = 'outpostAppend';

export const createRedis = (config: Config): Redis => {
  const redis = new Redis(config.redisUrl, {
    lazyConnect: true,
    // RESP2 reply shapes: XREADGROUP answers [[stream, entries]] as every Redis client expects.
    protocol: 2,
    // Writes fail fast while Redis is away (503 with Retry-After) instead of queueing in memory.
    enableOfflineQueue: false,
    maxRetriesPerRequest: 2,
    commandTimeout: COMMAND_TIMEOUT_MS,
    connectTimeout: 5_000,
    retryStrategy: (times) => Math.min(50 * 2 ** times, 2_000),
    // Commands issued in one event-loop tick (the appends of concurrent requests) leave in one
    // write and are read by Redis in one go; while a batch is out, the next one gathers.
    enableAutoPipelining: true,
    // XAUTOCLAIM starts a partition taken over, in a lease round that renews the other leases
    // only when it ends: behind a stalled auto-pipeline it took twice the command timeout.
    autoPipeliningIgnoredCommands: [APPEND_COMMAND, 'xautoclaim'],
  });
  dropLateResends(redis);
  return redis;
};

/**
 * Redis answering that it cannot serve for the moment: a script running past its busy threshold,
 * a restart still loading its AOF, a replica cut off from its master.
 */
const MOMENTARILY_AWAY = /^(BUSY|LOADING|MASTERDOWN|TRYAGAIN) /;

/**
 * Whether an error `redis` gave means Redis is away: the connection is not ready (ioredis then
 * fails commands at once, since the offline queue is off), a command outlived its timeout (a link
 * that stopped delivering, a stalled disk under appendfsync always: the connection still reads
 * as ready), or Redis answered that it cannot serve for the moment.
 */
export const isRedisAway = (redis: Redis, err: unknown): boolean =>
  redis.status !== 'ready' ||
  isCommandTimeout(err) ||
  (err instanceof Error && MOMENTARILY_AWAY.test(err.message));

/** What ioredis keeps, across a reconnect, of the commands its connection had out. */
type ResendQueue = {
  readonly length: number;
  toArray(): { command: { isSettled: boolean } }[];
  clear(): void;
  push(item: unknown): void;
};

/**
 * ioredis sends again, once it reconnects, the commands its connection had out when it dropped,
 * however late that is. One whose caller still waits is worth sending (a script that runs twice
 * knows it: append.lua's event index and run record). One already settled, by its command
 * timeout, has been answered (an append with 503), and its caller may have written since: run
 * then, a write the client was told failed would take effect behind the writes that followed it.
 * Those are dropped whenever ioredis reads its resend queue, which its ready handler does just
 * before resending: a Redis still loading a large AOF keeps the client from ready well past the
 * command timeout of what was out.
 */
export const dropLateResends = (redis: Redis): void => {
  // Where ioredis keeps them (event_handler.js: set by closeHandler, read by readyHandler).
  const holder = redis as unknown as { prevCommandQueue?: ResendQueue | null };
  let queue = holder.prevCommandQueue ?? null;
  Object.defineProperty(holder, 'prevCommandQueue', {
    configurable: true,
    get: () => {
      const waiting = queue?.toArray().filter((item) => !item.command.isSettled);
      if (queue && waiting && waiting.length !== queue.length) {
        queue.clear();
        for (const item of waiting) {
          queue.push(item);
        }
      }
      return queue;
    },
    set: (value: ResendQueue | null) => {
      queue = value;
    },
  });
};

/**
 * A connection of its own for a blocking read (XREAD/XREADGROUP BLOCK): auto-pipelining would
 * queue every other command behind the block.
 */
export const blockingConnection = (redis: Redis, options: RedisOptions = {}): Redis =>
  redis.duplicate({ ...options, enableAutoPipelining: false });

/**
 * Hands the fields of a hash with their values to `visit`, a page of HSCAN at a time, until none
 * is left; a page with nothing in it is not handed on.
 */
export const forEachHashPage = async (
  redis: Redis,
  key: string,
  visit: (entries: [field: string, value: string][]) => Promise<unknown>,
): Promise<void> => {
  let cursor = '0';
  do {
    const [next, flat] = await redis.hscan(key, cursor, 'COUNT', 500);
    cursor = next;
    const entries: [string, string][] = [];
    for (let i = 0; i + 1 < flat.length; i += 2) {
      entries.push([flat[i] as string, flat[i + 1] as string]);
    }
    if (entries.length > 0) {
      await visit(entries);
    }
  } while (cursor !== '0');
};

/**
 * Connects, or fails with a line naming Redis, its address and why its last attempt failed:
 * ioredis's own rejection says only "Connection is closed."
 */
export const connectRedis = async (redis: Redis, url: string): Promise<void> => {
  let failure: unknown;
  const remember = (err: unknown) => {
    failure = err;
  };
  redis.on('error', remember);
  try {
    await redis.connect();
  } catch (err) {
    throw cannotReach('Redis', url, failure ?? err);
  } finally {
    redis.off('error', remember);
  }
};

/**
 * The oldest Redis the log runs on: its scripts declare flags (`#!lua flags=allow-oom`, which lets
 * a full log drain), which came with Redis 7; an older one fails them at the first write with a
 * Lua syntax error that names no version.
 */
export const MIN_REDIS_MAJOR = 7;

/** Why the Redis that answered `INFO server` with `info` is too old for the log, or undefined. */
export const redisVersionRefusal = (info: string, url: string): string | undefined => {
  const version = /^redis_version:(\S+)/m.exec(info)?.[1];
  const major = version === undefined ? Number.NaN : Number.parseInt(version, 10);
  // A server that does not say (some that speak the protocol) is given the benefit of the doubt.
  if (Number.isNaN(major) || major >= MIN_REDIS_MAJOR) {
    return undefined;
  }
  return `Redis at ${addressOf(url)} is ${version}, and Outpost needs Redis ${MIN_REDIS_MAJOR} or later: its scripts declare flags, which older versions cannot read`;
};

/**
 * Refuses to run on a Redis too old for the log's scripts, before anything is written. One that
 * will not answer INFO (an ACL without it) is taken as recent enough, as one that does not say.
 */
export const requireRedisVersion = async (redis: Redis, url: string): Promise<void> => {
  const info = await redis.info('server').catch((err: unknown) => {
    if (err instanceof ReplyError) {
      return '';
    }
    throw err;
  });
  const refusal = redisVersionRefusal(info, url);
  if (refusal !== undefined) {
    throw new Error(refusal);
  }
};

/** Logs a Redis connection's spells of failure (see FailureSpell), not every reconnect attempt. */
export const watchConnection = (redis: Redis, logger: Logger) => {
  const failures = new FailureSpell(logger, 'the Redis connection');
  redis.on('error', (err: Error) => {
    failures.failed(err, {}, `Redis connection error: ${reasonOf(err)}`);
  });
  redis.on('ready', () => failures.ended());
};

/**
 * A pipeline's replies, in order. ioredis resolves `exec()` even when commands failed, each with
 * its own error beside its reply: read as replies, a timeout would pass for "not found".
 */
export const pipelineReplies = async (pipeline: ChainableCommander): Promise<unknown[]> => {
  const results = (await pipeline.exec()) ?? [];
  const failed = results.find(([err]) => err);
  if (failed) {
    throw failed[0];
  }
  return results.map(([, reply]) => reply);
};

/** Redis's answer about a stream without the consumer group, or without the stream itself. */
export const isNoGroup = (err: unknown): boolean =>
  /^NOGROUP|^ERR no such key/i.test((err as Error | undefined)?.message ?? '');
