import type { Redis } from 'ioredis';
import type { Config } from '../config.ts';
import type { Logger } from '../observability/logger.ts';
import { DRAIN_RESERVE } from './capacity.ts';

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

/** Refuses to run against a Redis that would lose acknowledged writes. */
export const checkDurability = async (redis: Redis, config: Config, logger: Logger) => {
  let settings: PersistenceSettings;
  try {
    const [, appendonly] = (await redis.config('GET', 'appendonly')) as string[];
    const [, appendfsync] = (await redis.config('GET', 'appendfsync')) as string[];
    const [, maxmemoryPolicy] = (await redis.config('GET', 'maxmemory-policy')) as string[];
    const [, maxmemory] = (await redis.config('GET', 'maxmemory')) as string[];
    const [, noAppendfsyncOnRewrite] = (await redis.config(
      'GET',
      'no-appendfsync-on-rewrite',
    )) as string[];
    settings = { appendonly, appendfsync, maxmemoryPolicy, maxmemory, noAppendfsyncOnRewrite };
  } catch (err) {
    if (String((err as Error).message).includes('unknown command')) {
      logger.warn('CONFIG is disabled on this Redis; cannot verify appendonly and appendfsync');
      return;
    }
    throw err;
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
