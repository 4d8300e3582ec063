import type { Redis } from 'ioredis';
import type { Config } from '../config.ts';
import type { Logger } from '../observability/logger.ts';
import { DRAIN_RESERVE, probeWriteRefusal } from './capacity.ts';

type PersistenceSettings = {
  appendonly: string | undefined;
  appendfsync: string | undefined;
  maxmemoryPolicy?: string | undefined;
  /** Bytes; 0 (no limit) never evicts, whatever the policy. */
  maxmemory?: string | undefined;
  /** `yes` skips the fsync while a rewrite or a save runs in a child, `always` or not. */
  noAppendfsyncOnRewrite?: string | undefined;
};

/**
 * What Redis's persistence settings mean for the promise of a 201 (the event survives a crash):
 * without the append-only file, or with its fsync left to the kernel (`appendfsync no`, a loss
 * window of up to 30 s on Linux), the promise cannot be kept and the service must not start.
 * `everysec` where `always` is expected widens the window to a second that the operator did not
 * agree to (OUTPOST_APPENDFSYNC=everysec is how to agree to it); `always` where `everysec` is
 * expected is only stronger. Any eviction policy but `noeviction`, with a memory limit set, lets
 * Redis drop keys when memory runs out: stream entries under `allkeys-*`, and idempotency records, claims and unit
 * statuses (the keys with a TTL) under `volatile-*`, so that a client's retry would append again.
 * And `no-appendfsync-on-rewrite yes` skips every fsync while a child process runs (an append-only
 * file rewrite, which a growing log starts by itself, or a snapshot): writes answered meanwhile
 * sit in the page cache, under `appendfsync always` too.
 */
export const durabilityVerdict = (
  {
    appendonly,
    appendfsync,
    maxmemoryPolicy,
    maxmemory,
    noAppendfsyncOnRewrite,
  }: PersistenceSettings,
  expected: Config['appendfsync'],
): { refuse: string } | { warn: string } | undefined => {
  if (appendonly !== 'yes') {
    return { refuse: 'Redis runs without appendonly: accepted events would not survive a crash' };
  }
  if (
    maxmemoryPolicy !== undefined &&
    maxmemoryPolicy !== 'noeviction' &&
    maxmemory !== undefined &&
    maxmemory !== '0'
  ) {
    return {
      refuse: `Redis runs with maxmemory-policy ${maxmemoryPolicy}: it may evict accepted events or idempotency records when memory runs out; set maxmemory-policy noeviction`,
    };
  }
  if (noAppendfsyncOnRewrite === 'yes') {
    return {
      refuse:
        'Redis runs with no-appendfsync-on-rewrite yes: while it rewrites its append-only file or saves a snapshot, accepted events are not fsynced and could be lost in a crash; set no-appendfsync-on-rewrite no',
    };
  }
  if (appendfsync === undefined) {
    // Some servers that speak Redis's protocol answer CONFIG GET with nothing for it.
    return { warn: 'Redis does not say its appendfsync; cannot verify the fsync of each write' };
  }
  if (appendfsync !== 'always' && appendfsync !== 'everysec') {
    return {
      refuse: `Redis runs with appendfsync ${appendfsync}: accepted events could be lost in a crash; set appendfsync ${expected}`,
    };
  }
  if (appendfsync === 'everysec' && expected === 'always') {
    return {
      refuse:
        'Redis runs with appendfsync everysec: up to a second of accepted events could be lost in a crash; set appendfsync always, or OUTPOST_APPENDFSYNC=everysec to accept that window',
    };
  }
  return undefined;
};

const PERSISTENCE_PARAMETERS = [
  'appendonly',
  'appendfsync',
  'maxmemory-policy',
  'maxmemory',
  'no-appendfsync-on-rewrite',
] as const;

/**
 * Redis's persistence settings, or undefined where CONFIG is disabled (a managed Redis, say) or
 * not granted to this user.
 */
export const readPersistence = async (redis: Redis): Promise<PersistenceSettings | undefined> => {
  let pairs: string[];
  try {
    pairs = (await redis.call('CONFIG', 'GET', ...PERSISTENCE_PARAMETERS)) as string[];
  } catch (err) {
    if (/unknown command|NOPERM/.test(String((err as Error).message))) {
      return undefined;
    }
    throw err;
  }
  const value = new Map<string, string>();
  for (let i = 0; i + 1 < pairs.length; i += 2) {
    value.set(pairs[i] as string, pairs[i + 1] as string);
  }
  return {
    appendonly: value.get('appendonly'),
    appendfsync: value.get('appendfsync'),
    maxmemoryPolicy: value.get('maxmemory-policy'),
    maxmemory: value.get('maxmemory'),
    noAppendfsyncOnRewrite: value.get('no-appendfsync-on-rewrite'),
  };
};

/**
 * Why a 201 would not mean durable under Redis's settings now, or undefined while it would. The
 * start-up check is not enough: `CONFIG SET appendfsync no` on a running Redis, or a Redis
 * restarted with other settings behind the same address, changes them under a running service.
 */
export const persistenceRefusal = async (
  redis: Redis,
  expected: Config['appendfsync'],
): Promise<string | undefined> => {
  const settings = await readPersistence(redis);
  const verdict = settings && durabilityVerdict(settings, expected);
  return verdict && 'refuse' in verdict ? verdict.refuse : undefined;
};

/**
 * Why the log takes no writes now, for /health and the gauges: Redis's own refusal (it cannot
 * save, it is a replica), or settings under which it would not keep them through a crash.
 */
export const logWriteRefusal = async (
  redis: Redis,
  expected: Config['appendfsync'],
): Promise<string | undefined> =>
  (await probeWriteRefusal(redis)) ??
  // Redis answered the probe: a settings read that fails leaves the answer to the next look.
  (await persistenceRefusal(redis, expected).catch(() => undefined));

/** Refuses to run against a Redis that would lose acknowledged writes. */
export const checkDurability = async (redis: Redis, config: Config, logger: Logger) => {
  const settings = await readPersistence(redis);
  if (settings === undefined) {
    logger.warn(
      'CONFIG GET is disabled on this Redis or not granted to its user; cannot verify appendonly and appendfsync',
    );
    return;
  }
  const verdict = durabilityVerdict(settings, config.appendfsync);
  if (verdict && 'refuse' in verdict) {
    throw new Error(verdict.refuse);
  }
  if (verdict) {
    logger.warn({ ...settings, expected: config.appendfsync }, verdict.warn);
  }
  if (settings.maxmemory === '0') {
    logger.warn(
      `Redis has no maxmemory: a long outage of the main database can take all of the host's memory; with maxmemory set, writes are refused at ${(1 - DRAIN_RESERVE) * 100} % of it and the rest is kept for the backlog to drain`,
    );
  }
};
