import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { runMigrations } from '../../src/db/migrate.ts';
import { type StackOptions, stackDown, stackUp, urlsOf } from '../../src/stack/stack.ts';

/** What the runner hands to every test file through TEST_STACK. */
export type TestStack = {
  dir: string;
  mainPort: number;
  replicaPort: number;
  redisPort: number;
  mainUrl: string;
  replicaUrl: string;
  redisUrl: string;
  template: string;
};

export const TEMPLATE_DATABASE = 't_migrated';

export const freePort = (): Promise<number> =>
  new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => resolve(typeof address === 'object' && address ? address.port : 0));
    });
  });

export const withDatabase = (url: string, database: string) =>
  url.replace(/\/[^/]*$/, `/${database}`);

/** Starts a primary, a streaming replica and Redis with AOF on free ports in a temporary folder. */
export const startTestStack = async (): Promise<TestStack & { stop: () => Promise<void> }> => {
  const dir = mkdtempSync(join(tmpdir(), 'outpost-test-'));
  const options: StackOptions = {
    dir,
    mainPort: await freePort(),
    replicaPort: await freePort(),
    redisPort: await freePort(),
    pgCron: 'auto',
    appendfsync: 'always',
    fastUnsafePostgres: true,
  };
  const stop = async () => {
    await stackDown(dir).catch(() => undefined);
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    const urls = urlsOf(options);
    await stackUp(options);
    const admin = new pg.Client({ connectionString: withDatabase(urls.main.url, 'postgres') });
    await admin.connect();
    await admin.query(`CREATE DATABASE ${TEMPLATE_DATABASE}`);
    await admin.end();
    await runMigrations(withDatabase(urls.main.url, TEMPLATE_DATABASE));
    return {
      dir,
      mainPort: options.mainPort,
      replicaPort: options.replicaPort,
      redisPort: options.redisPort,
      mainUrl: urls.main.url,
      replicaUrl: urls.replica.url,
      redisUrl: urls.redis.url,
      template: TEMPLATE_DATABASE,
      stop,
    };
  } catch (err) {
    await stop();
    throw err;
  }
};
