import type { Redis } from 'ioredis';
import type pg from 'pg';
import { type Config, loadConfig } from '../config.ts';
import { createPool } from '../db/client.ts';
import { logFullNow } from '../log/capacity.ts';
import { DeadLetters } from '../log/dead-letters.ts';
import { EventLog } from '../log/event-log.ts';
import { siteNameKey } from '../log/keys.ts';
import { connectRedis, createRedis, isRedisAway } from '../log/redis.ts';
import { recordedPartitions } from '../ops/partition-count.ts';
import { isDatabaseUnreachable } from '../projector/errors.ts';
import { addressOf, cannotReach } from '../reach.ts';
import { restated } from '../reason.ts';
import { redisPing } from '../stack/processes.ts';
import { CliError } from './output.ts';

/** What a command works with; the databases it touches are recorded, to blame only those. */
export type Site = {
  readonly config: Config;
  readonly redis: Redis;
  readonly eventLog: EventLog;
  readonly deadLetters: DeadLetters;
  readonly main: pg.Pool;
  readonly replica: pg.Pool;
  /** For work that opens its own connection to the main database (an integrity refresh). */
  readonly mainUrl: string;
};

type Database = 'main' | 'replica';

/** How long Redis may take to be ready before the operator is told what the command waits for. */
const NOTICE_SLOW_REDIS_MS = 2_000;

/**
 * Why a Redis that took the connection is not ready, asked on a connection of its own: loading
 * its data (after a restart), or answering nothing at all (stopped with SIGSTOP, or stalled),
 * which the ready check cannot tell apart. Over TLS it is not asked.
 */
const whyRedisIsSlow = async (url: string): Promise<string> => {
  const { protocol, hostname, port } = new URL(url);
  const answer =
    protocol === 'redis:'
      ? await redisPing(Number(port || 6379), hostname.replace(/^\[|\]$/g, '') || '127.0.0.1')
      : 'other';
  return answer === 'loading'
    ? 'it is loading its data after a restart'
    : answer === undefined
      ? 'it took the connection but answers nothing: stopped, or stalled?'
      : 'still loading its data after a restart, or stalled?';
};

/**
 * Which database a command could not reach: a driver's error names an address at best, so each
 * database the command touched is asked once, and the line an operator reads says which one to
 * look at. One it never touched is not asked: being down, it would take the blame for a failure
 * it had no part in.
 */
const unreachableDatabase = async (
  err: unknown,
  config: Config,
  touched: ReadonlySet<Database>,
  pools: Record<Database, pg.Pool>,
): Promise<Error | undefined> => {
  if (!isDatabaseUnreachable(err)) {
    return undefined;
  }
  for (const [database, what, url] of [
    ['main', 'the main database', config.mainDatabaseUrl],
    ['replica', 'the read replica', config.replicaDatabaseUrl],
  ] as const) {
    if (!touched.has(database)) {
      continue;
    }
    const failure = await pools[database].query('SELECT 1').then(
      () => undefined,
      (probeErr: unknown) => probeErr,
    );
    if (failure !== undefined) {
      return cannotReach(what, url, failure);
    }
  }
  return undefined;
};

/**
 * `--partition N` against the site's partition count. Checked once connected: a shell with
 * another count than the site's is told that first (withSite), which is the cause to fix, not
 * that N is past the shell's count.
 */
export const requirePartitionOf = (site: Site, partition: number | undefined): void => {
  if (partition !== undefined && partition >= site.config.partitions) {
    throw new CliError(
      `--partition must be below ${site.config.partitions}, the site's partition count`,
    );
  }
};

/**
 * Connects an operator command to the site's Redis and databases, and always disconnects. A
 * command that reads only the databases (`{ redis: false }`: the integrity views, a rebuild)
 * does not connect to Redis, so it still answers while Redis is down, an incident it may be
 * helping with.
 */
export const withSite = async <T>(
  work: (site: Site) => Promise<T>,
  { redis: usesRedis = true }: { redis?: boolean } = {},
): Promise<T> => {
  const config = loadConfig();
  const redis = createRedis(config);
  const main = createPool({ url: config.mainDatabaseUrl, max: 2, applicationName: 'outpost-cli' });
  const replica = createPool({
    url: config.replicaDatabaseUrl,
    max: 2,
    applicationName: 'outpost-cli',
  });
  // A connection that fails while idle (a database restarted, a session terminated during a
  // replay's wait) is the pool's to replace on next use; without a listener, Node would end the
  // command with an unhandled 'error' and a stack instead of its one-line reason.
  for (const pool of [main, replica]) {
    pool.on('error', () => undefined);
  }
  // Without a listener ioredis prints every failed attempt with a stack; the reason is kept for
  // the one line the command fails with.
  let redisError: Error | undefined;
  redis.on('error', (err: Error) => {
    redisError = err;
  });
  try {
    // The connection's own error says why it is not ready; a ready one's is an older reconnect's.
    const redisAway = (err: unknown) =>
      cannotReach('Redis', config.redisUrl, redis.status === 'ready' ? err : (redisError ?? err));
    if (usesRedis) {
      // Redis restarted from its append-only file answers that it is loading, and ioredis waits
      // until it is done: minutes for a large log, in which the operator would see nothing.
      const slow = setTimeout(() => {
        // Connected and waiting for its ready check; one still connecting fails on its own.
        if (redis.status !== 'connect') {
          return;
        }
        void whyRedisIsSlow(config.redisUrl).then((why) => {
          if (redis.status === 'connect') {
            process.stderr.write(
              `outpost: waiting for Redis at ${addressOf(config.redisUrl)} to be ready (${why})\n`,
            );
          }
        });
      }, NOTICE_SLOW_REDIS_MS);
      await connectRedis(redis, config.redisUrl).finally(() => clearTimeout(slow));
    }
    // Replays and retries announce the events they give back on the live feed, as the service does.
    const eventLog = new EventLog(redis, config.namespace, config.partitions, config.liveMaxLen);
    const deadLetters = new DeadLetters(eventLog);
    const redisOf = <R>(value: R): R => {
      if (!usesRedis) {
        throw new Error('this command was started without Redis (withSite { redis: false })');
      }
      return value;
    };
    const touched = new Set<Database>();
    const site: Site = {
      config,
      get redis() {
        return redisOf(redis);
      },
      get eventLog() {
        return redisOf(eventLog);
      },
      get deadLetters() {
        return redisOf(deadLetters);
      },
      get main() {
        touched.add('main');
        return main;
      },
      get replica() {
        touched.add('replica');
        return replica;
      },
      get mainUrl() {
        touched.add('main');
        return config.mainDatabaseUrl;
      },
    };
    /** Refuses a shell whose settings would show part of the site, or another site, as all of it. */
    const requireShellOfSite = async () => {
      // A shell without the service's env file would look at part of the log and report all well.
      const recorded = await recordedPartitions(redis, config.namespace);
      if (recorded !== undefined && recorded !== config.partitions) {
        throw new CliError(
          `this shell has OUTPOST_PARTITIONS=${config.partitions}, but the site's log has ${recorded} partitions: set OUTPOST_PARTITIONS=${recorded}, as the service has it (its env file)`,
        );
      }
      // Leases are keyed by site: a shell with another name (unset, it is this host's) would
      // report no projector holding any partition while the site's hold them all.
      const siteName = await redis.get(siteNameKey(config.namespace));
      if (siteName !== null && siteName !== config.site) {
        throw new CliError(
          `this shell has OUTPOST_SITE=${config.site}, but the site's log is served as site ${siteName}: set OUTPOST_SITE=${siteName}, as the service has it (its env file)`,
        );
      }
    };
    // The shell's checks inside: a Redis that stalls once connected is named as the work's is.
    const checked = async () => {
      if (usesRedis) {
        await requireShellOfSite();
      }
      return work(site);
    };
    return await checked().catch(async (err: unknown) => {
      throw await restated(err, async (met) =>
        usesRedis && isRedisAway(redis, met)
          ? redisAway(met)
          : ((await unreachableDatabase(met, config, touched, { main, replica })) ?? met),
      );
    });
  } finally {
    redis.disconnect();
    await Promise.all([main.end(), replica.end()]);
  }
};

/**
 * Refuses, as the API does, what would add events to a log that has no room left but the
 * backlog's to drain: Redis itself refuses only at its maxmemory, past the reserve.
 */
export const requireLogRoom = async (site: Site): Promise<void> => {
  const full = await logFullNow(site.redis);
  if (full !== undefined) {
    throw new CliError(full);
  }
};
