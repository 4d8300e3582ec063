import type { Redis } from 'ioredis';
import type pg from 'pg';
import { type Config, loadConfig } from '../config.ts';
import { createPool } from '../db/client.ts';
import { DeadLetters } from '../log/dead-letters.ts';
import { EventLog } from '../log/event-log.ts';
import { createRedis } from '../log/redis.ts';

export type Site = {
  config: Config;
  redis: Redis;
  eventLog: EventLog;
  deadLetters: DeadLetters;
  main: pg.Pool;
  replica: pg.Pool;
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
    await redis.connect().catch((err: unknown) => {
      const { hostname, port } = new URL(config.redisUrl);
      throw new Error(
        `cannot reach Redis at ${hostname || 'localhost'}:${port || 6379} (${(redisError ?? (err as Error)).message}); is it running? (outpost stack status)`,
      );
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
    });
  } finally {
    redis.disconnect();
    await Promise.all([main.end(), replica.end()]);
  }
};
