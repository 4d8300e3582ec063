import { appendFileSync, existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';
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

/** A test's site: its database (on primary and replica) and its Redis key namespace. */
export type TestSite = { database: string; namespace: string };

const sitesFile = (dir: string) => join(dir, 'sites.jsonl');

/**
 * Registers a site with the runner, which drops it once its file passed and keeps it for
 * inspection when the file failed (pg-boss: "only drop schema if test passed").
 */
export const recordSite = (stack: TestStack, site: TestSite) =>
  appendFileSync(sitesFile(stack.dir), `${JSON.stringify(site)}\n`);

/** The sites registered since the last call. */
export const takeSites = (dir: string): TestSite[] => {
  const file = sitesFile(dir);
  if (!existsSync(file)) {
    return [];
  }
  const sites = readFileSync(file, 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((line) => JSON.parse(line) as TestSite);
  rmSync(file);
  return sites;
};

export const dropSites = async (stack: TestStack, sites: readonly TestSite[]) => {
  if (sites.length === 0) {
    return;
  }
  const admin = new pg.Client({ connectionString: withDatabase(stack.mainUrl, 'postgres') });
  const redis = new Redis(stack.redisUrl);
  try {
    await admin.connect();
    for (const site of sites) {
      await admin.query(`DROP DATABASE IF EXISTS ${site.database} WITH (FORCE)`);
      let cursor = '0';
      do {
        const [next, keys] = await redis.scan(
          cursor,
          'MATCH',
          `${site.namespace}:*`,
          'COUNT',
          1000,
        );
        if (keys.length > 0) {
          await redis.del(...keys);
        }
        cursor = next;
      } while (cursor !== '0');
    }
  } finally {
    redis.disconnect();
    await admin.end();
  }
};

/** A listener on a port the kernel chose, to learn the port and hold it meanwhile. */
const heldPort = (): Promise<{ port: number; release: () => Promise<void> }> =>
  new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      resolve({
        port: typeof address === 'object' && address ? address.port : 0,
        release: () => new Promise((done) => server.close(() => done())),
      });
    });
  });

export const freePort = async (): Promise<number> => {
  const { port, release } = await heldPort();
  await release();
  return port;
};

/**
 * A free port for each server of a stack, all held until all are known: closed one by one, the
 * kernel could hand the same port out twice.
 */
export const freeStackPorts = async (): Promise<
  Pick<StackOptions, 'mainPort' | 'replicaPort' | 'redisPort'>
> => {
  const held = [await heldPort(), await heldPort(), await heldPort()];
  await Promise.all(held.map(({ release }) => release()));
  const [mainPort, replicaPort, redisPort] = held.map(({ port }) => port) as [
    number,
    number,
    number,
  ];
  return { mainPort, replicaPort, redisPort };
};

export const withDatabase = (url: string, database: string) =>
  url.replace(/\/[^/]*$/, `/${database}`);

/**
 * On SIGINT or SIGTERM, runs `stop` and exits as the signal would: an interrupted run leaves no
 * stack or server behind, as a finished one does. Likewise when the reader of its output goes
 * away (`npm test | head`): the next write fails with EPIPE, which would otherwise crash the run
 * with its stack still up.
 */
export const stopOnSignal = (stop: () => Promise<unknown>) => {
  let stopping = false;
  const stopAndExit = (code: number) => {
    if (stopping) {
      return;
    }
    stopping = true;
    void stop()
      .catch(() => undefined)
      .finally(() => process.exit(code));
  };
  process.once('SIGINT', () => stopAndExit(130));
  process.once('SIGTERM', () => stopAndExit(143));
  for (const stream of [process.stdout, process.stderr]) {
    stream.on('error', (err: NodeJS.ErrnoException) => {
      if (err.code !== 'EPIPE') {
        throw err;
      }
      stopAndExit(141);
    });
  }
};

/**
 * Starts a primary, a streaming replica and Redis with AOF on free ports in a temporary folder.
 * Tests run PostgreSQL without fsync, for speed; `durablePostgres` runs it as a site does
 * (`outpost stack up`), for benchmarks.
 */
export const startTestStack = async ({
  durablePostgres = false,
  whileStarting,
}: {
  durablePostgres?: boolean;
  /**
   * Given the stack's stop before anything starts: a signal during start-up must stop what it
   * has started too (PostgreSQL and Redis detach from the terminal, so Ctrl-C never reaches them).
   */
  whileStarting?: (stop: () => Promise<void>) => void;
} = {}): Promise<TestStack & { stop: (options?: { keep?: boolean }) => Promise<void> }> => {
  const dir = mkdtempSync(join(tmpdir(), 'outpost-test-'));
  const options: StackOptions = {
    dir,
    ...(await freeStackPorts()),
    pgCron: 'auto',
    appendfsync: 'always',
    fastUnsafePostgres: !durablePostgres,
  };
  let starting: Promise<unknown> = Promise.resolve();
  let stopping: Promise<void> | undefined;
  const startUp = new AbortController();
  /**
   * Stops the servers, once however often asked (a signal during start-up, and the start-up
   * failing for it); `keep` leaves their data for inspection (see scripts/test-stack.ts).
   */
  const stop = ({ keep = false } = {}) => {
    stopping ??= (async () => {
      startUp.abort();
      await stackDown(dir).catch(() => undefined);
      // Stopped while starting: the step under way (a base backup writing into the folder, say)
      // fails without the primary, or finishes; whatever it started is stopped after it.
      await starting.catch(() => undefined);
      await stackDown(dir).catch(() => undefined);
      if (!keep) {
        rmSync(dir, { recursive: true, force: true });
      }
    })();
    return stopping;
  };
  whileStarting?.(() => stop());
  try {
    const urls = urlsOf(options);
    starting = stackUp(options, { signal: startUp.signal });
    await starting;
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
