import type { Redis } from 'ioredis';
import type pg from 'pg';
import { type Config, loadConfig } from '../config.ts';
import { createPool } from '../db/client.ts';
import { DeadLetters } from '../log/dead-letters.ts';
import { EventLog } from '../log/event-log.ts';
import { createRedis } from '../log/redis.ts';
import { isDatabaseUnreachable } from '../projector/errors.ts';

export type Site = {
  config: Config;
  redis: Redis;
  eventLog: EventLog;
  deadLetters: DeadLetters;
  main: pg.Pool;
  replica: pg.Pool;
};

const cannotReach = (what: string, url: string, defaultPort: number, reason: unknown) => {
  const { hostname, port } = new URL(url);
  const { message, code } = (reason ?? {}) as { message?: string; code?: string };
  return new Error(
    `cannot reach ${what} at ${hostname || 'localhost'}:${port || defaultPort} (${message || code || 'no answer'}); is it running? (outpost stack status)`,
    { cause: reason },
  );
};

/**
 * Which database a command could not reach: a driver's error names an address at best, so each is
 * asked once, and the line an operator reads says which one to look at.
 */
const unreachableDatabase = async (
  err: unknown,
  config: Config,
  main: pg.Pool,
  replica: pg.Pool,
): Promise<Error | undefined> => {
  if (!isDatabaseUnreachable(err)) {
    return undefined;
  }
  for (const [what, pool, url] of [
    ['the main database', main, config.mainDatabaseUrl],
    ['the read replica', replica, config.replicaDatabaseUrl],
  ] as const) {
    const failure = await pool.query('SELECT 1').then(
      () => undefined,
      (probeErr: unknown) => probeErr,
    );
    if (failure !== undefined) {
      return cannotReach(what, url, 5432, failure);
    }
  }
  return undefined;
};

/** Connects an operator command to the site's Redis and databases, and always disconnects. */
export const withSite = async <T>(work: (site: Site) => Promise<T>): Promise<T> => {
  const config = loadConfig();
  const redis = createRedis(config);
  const main = createPool({ url: config.mainDatabaseUrl, max: 2, applicationName: 'outpost-cli' });
  const replica = createPool({
    url: config.replicaDatabaseUrl,
    max: 2,
    applicationName: 'outpost-cli',
  });
  // Without a listener ioredis prints every failed attempt with a stack; the reason is kept for
  // the one line the command fails with.
  let redisError: Error | undefined;
  redis.on('error', (err: Error) => {
    redisError = err;
  });
  try {
    const redisAway = (err: unknown) =>
      cannotReach('Redis', config.redisUrl, 6379, redisError ?? err);
    await redis.connect().catch((err: unknown) => {
      throw redisAway(err);
    });
    // Replays and retries announce the events they give back on the live feed, as the service does.
    const eventLog = new EventLog(redis, config.namespace, config.partitions, config.liveMaxLen);
    return await work({
      config,
      redis,
      eventLog,
      deadLetters: new DeadLetters(eventLog),
      main,
      replica,
    }).catch(async (err: unknown) => {
      if (redis.status !== 'ready') {
        throw redisAway(err);
      }
      throw (await unreachableDatabase(err, config, main, replica)) ?? err;
    });
  } finally {
    redis.disconnect();
    await Promise.all([main.end(), replica.end()]);
  }
};
