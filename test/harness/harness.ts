import { type ChildProcess, spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { Redis } from 'ioredis';
import pg from 'pg';
import type { Config } from '../../src/config.ts';
import { createRedis } from '../../src/log/redis.ts';
import { createLogger } from '../../src/observability/logger.ts';
import { PROJECT_ROOT } from '../../src/paths.ts';
import { type Role, type Service, startService } from '../../src/service.ts';
import { type StackOptions, stackUp } from '../../src/stack/stack.ts';
import { type SteadyLoad, steadyLoad } from './load.ts';
import { freePort, recordSite, type TestStack, withDatabase } from './services.ts';

/**
 * Every `outpost serve` the harnesses of this test file spawned and have not seen exit, killed
 * however the file ends: a file that crashes or is stopped (a timeout, Ctrl-C) runs no `after`
 * hook, and its children would go on reconnecting to a stack that is gone.
 */
const spawned = new Set<ChildProcess>();

/** Kills `child` when this test file's process ends, unless it has exited by then. */
export const killOnExit = (child: ChildProcess): void => {
  spawned.add(child);
  child.once('exit', () => spawned.delete(child));
};

process.once('exit', () => {
  for (const child of spawned) {
    child.kill('SIGKILL');
  }
});
for (const [signal, code] of [
  ['SIGTERM', 143],
  ['SIGINT', 130],
] as const) {
  process.once(signal, () => process.exit(code));
}

// biome-ignore lint/suspicious/noExplicitAny: tests read response fields directly and assert on them
export type HttpResult = { status: number; body: any; headers: Headers; text: string };

export type HarnessOptions = {
  partitions?: number;
  /** Start the service in this process (default `all`); `none` to drive it some other way. */
  role?: Role | 'none';
  config?: Partial<Config>;
};

export const testStack = (): TestStack => {
  const raw = process.env.TEST_STACK;
  if (!raw) {
    throw new Error('TEST_STACK is not set: run integration tests through `npm test`');
  }
  return JSON.parse(raw) as TestStack;
};

/**
 * Keeps a fault in place for the length of the scenario (an outage of 30 s is what is being
 * tested, not a stand-in for a condition).
 */
export const holdFault = (ms: number): Promise<void> =>
  new Promise((resolve) => setTimeout(resolve, ms));

/** Stream entry fields with the value of field `name` replaced: an entry written past the API. */
export const withField = (fields: readonly string[], name: string, value: string): string[] =>
  fields.map((v, i) => (i % 2 === 1 && fields[i - 1] === name ? value : v));

/** Polls until `condition` holds; fails with `what` when the deadline passes. Never a fixed sleep. */
export const waitFor = async (
  condition: () => Promise<boolean> | boolean,
  what: string,
  timeoutMs = 20_000,
): Promise<void> => {
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  for (;;) {
    try {
      if (await condition()) {
        return;
      }
    } catch (err) {
      lastError = err;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`, { cause: lastError });
    }
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
};

/** The sum of every sample of `name` in the Prometheus exposition served at `url`/metrics. */
export const scrapeMetric = async (url: string, name: string): Promise<number> => {
  const text = await (await fetch(`${url}/metrics`)).text();
  let sum = 0;
  for (const line of text.split('\n')) {
    const match = /^(\w+)(?:\{[^}]*\})? (\S+)$/.exec(line);
    if (match?.[1] === name) {
      sum += Number(match[2]);
    }
  }
  return sum;
};

/** Resident set size of a process in MB, from /proc (Linux). */
export const residentMb = (pid: number): number => {
  const match = /^VmRSS:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  if (!match) {
    throw new Error(`no VmRSS for process ${pid}`);
  }
  return Number(match[1]) / 1024;
};

/** An `outpost serve` OS process of the harness's site. */
export type SpawnedService = {
  child: ChildProcess;
  port: number;
  /** http://127.0.0.1:<port>; a projector-only process serves /health and /metrics there. */
  url: string;
  output: () => string;
  /** Resolves once the process answers /health with 200. */
  ready: () => Promise<void>;
};

/**
 * One isolated site per test file: its own database (a copy of the migrated template, on the
 * primary and, through replication, on the replica) and its own Redis key namespace.
 */
export class Harness {
  readonly services: Service[] = [];
  readonly main: pg.Pool;
  readonly replica: pg.Pool;
  readonly redis: Redis;
  readonly #children = new Set<ChildProcess>();
  readonly #loads: SteadyLoad[] = [];

  private constructor(
    readonly stack: TestStack,
    readonly database: string,
    readonly config: Config,
  ) {
    this.main = new pg.Pool({ connectionString: config.mainDatabaseUrl, max: 4 });
    this.replica = new pg.Pool({ connectionString: config.replicaDatabaseUrl, max: 4 });
    this.redis = new Redis(stack.redisUrl);
    // Fault tests stop these servers on purpose; an idle client's error must not end the run.
    for (const pool of [this.main, this.replica]) {
      pool.on('error', () => undefined);
    }
    this.redis.on('error', () => undefined);
  }

  /** The options the runner started the stack with, for restarting a server after a fault. */
  stackOptions(): StackOptions {
    return {
      dir: this.stack.dir,
      mainPort: this.stack.mainPort,
      replicaPort: this.stack.replicaPort,
      redisPort: this.stack.redisPort,
      pgCron: 'auto',
      appendfsync: 'always',
      fastUnsafePostgres: true,
    };
  }

  static async start(options: HarnessOptions = {}): Promise<Harness> {
    const stack = testStack();
    const database = `t_${randomUUID().replaceAll('-', '').slice(0, 16)}`;
    const admin = new pg.Client({ connectionString: withDatabase(stack.mainUrl, 'postgres') });
    await admin.connect();
    await admin.query(`CREATE DATABASE ${database} TEMPLATE ${stack.template}`);
    await admin.end();
    recordSite(stack, { database, namespace: `outpost:${database}` });
    const config: Config = {
      port: 0,
      site: 'test-site',
      role: 'secondary',
      mainDatabaseUrl: withDatabase(stack.mainUrl, database),
      replicaDatabaseUrl: withDatabase(stack.replicaUrl, database),
      replicaIsMain: false,
      redisUrl: stack.redisUrl,
      partitions: options.partitions ?? 4,
      adminToken: 'test-admin-token',
      maxAttempts: 3,
      claimIdleMs: 2_000,
      consumer: `test-${database}`,
      streamRetentionMs: 7 * 86_400_000,
      integritySchedule: '*/30 * * * *',
      postDeployRefreshDelayMs: 600_000,
      maxBodyBytes: 1024 * 1024,
      appendfsync: 'always',
      batchSize: 500,
      ackIntervalMs: 10,
      namespace: `outpost:${database}`,
      logLevel: (process.env.TEST_LOG_LEVEL as Config['logLevel']) ?? 'silent',
      ...options.config,
    };
    const harness = new Harness(stack, database, config);
    try {
      await waitFor(async () => {
        const probe = new pg.Client({ connectionString: config.replicaDatabaseUrl });
        await probe.connect();
        await probe.end();
        return true;
      }, 'the test database on the replica');
      if (options.role !== 'none') {
        await harness.startService(options.role ?? 'all');
      }
    } catch (err) {
      // The test never gets the harness to close: its pools and Redis client close here.
      await harness.close().catch(() => undefined);
      throw err;
    }
    return harness;
  }

  /** Starts (another) service in this process; several share the site like separate processes. */
  async startService(role: Role = 'all', config: Partial<Config> = {}): Promise<Service> {
    const service = await startService(
      { ...this.config, ...config },
      createLogger(this.config.logLevel),
      role,
    );
    this.services.push(service);
    return service;
  }

  async stopService(service: Service): Promise<void> {
    await service.stop();
    this.services.splice(this.services.indexOf(service), 1);
  }

  get url(): string {
    const api = this.services.find((s) => s.port > 0);
    if (!api) {
      throw new Error('no API is running in this process');
    }
    return `http://127.0.0.1:${api.port}`;
  }

  async request(
    method: string,
    path: string,
    body?: unknown,
    headers: Record<string, string> = {},
  ): Promise<HttpResult> {
    const init: RequestInit = { method, headers: { ...headers } };
    if (body !== undefined) {
      init.body =
        typeof body === 'string' || body instanceof Uint8Array
          ? (body as string)
          : JSON.stringify(body);
      (init.headers as Record<string, string>)['content-type'] ??= 'application/json';
    }
    const response = await fetch(`${this.url}${path}`, init);
    const text = await response.text();
    let parsed: unknown;
    try {
      parsed = text ? JSON.parse(text) : undefined;
    } catch {
      parsed = undefined;
    }
    return { status: response.status, body: parsed, headers: response.headers, text };
  }

  post(path: string, body?: unknown, headers?: Record<string, string>) {
    return this.request('POST', path, body, headers);
  }

  get(path: string, headers?: Record<string, string>) {
    return this.request('GET', path, undefined, headers);
  }

  /** The environment that makes a separate `outpost serve` process run this harness's site. */
  envOf(overrides: Record<string, string> = {}): NodeJS.ProcessEnv {
    const c = this.config;
    return {
      PATH: process.env.PATH,
      HOME: process.env.HOME,
      OUTPOST_PORT: String(c.port),
      OUTPOST_SITE: c.site,
      OUTPOST_SITE_ROLE: c.role,
      MAIN_DATABASE_URL: c.mainDatabaseUrl,
      REPLICA_DATABASE_URL: c.replicaDatabaseUrl,
      REDIS_URL: c.redisUrl,
      OUTPOST_PARTITIONS: String(c.partitions),
      OUTPOST_ADMIN_TOKEN: c.adminToken ?? '',
      OUTPOST_MAX_ATTEMPTS: String(c.maxAttempts),
      OUTPOST_CLAIM_IDLE_MS: String(c.claimIdleMs),
      OUTPOST_CONSUMER: c.consumer,
      OUTPOST_BATCH_SIZE: String(c.batchSize),
      OUTPOST_ACK_INTERVAL_MS: String(c.ackIntervalMs),
      OUTPOST_NAMESPACE: c.namespace,
      LOG_LEVEL: process.env.TEST_LOG_LEVEL ?? 'warn',
      ...overrides,
    };
  }

  /** Runs `outpost serve` as a separate process, for faults such as `kill -9`. */
  async spawnServe(role: Role, overrides: Record<string, string> = {}): Promise<SpawnedService> {
    const port = await freePort();
    const args = ['bin/outpost.js', 'serve', ...(role === 'all' ? [] : ['--only', role])];
    const child = spawn(process.execPath, args, {
      cwd: PROJECT_ROOT,
      env: this.envOf({ OUTPOST_PORT: String(port), ...overrides }),
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let output = '';
    const collect = (chunk: Buffer) => {
      output += chunk.toString();
      if (process.env.TEST_LOG_LEVEL) {
        process.stderr.write(chunk);
      }
    };
    // pino logs to stdout, start-up failures go to stderr: keep both.
    child.stdout?.on('data', collect);
    child.stderr?.on('data', collect);
    this.#children.add(child);
    killOnExit(child);
    child.once('exit', () => this.#children.delete(child));
    const url = `http://127.0.0.1:${port}`;
    return {
      child,
      port,
      url,
      output: () => output,
      ready: () =>
        waitFor(
          async () => child.exitCode === null && (await fetch(`${url}/health`)).status === 200,
          `outpost serve --only ${role} on port ${port} to answer /health`,
          30_000,
        ),
    };
  }

  /** Pauses the replica's replay, and waits until it has stopped, not just been asked to. */
  async pauseReplay(): Promise<void> {
    await this.replica.query('SELECT pg_wal_replay_pause()');
    await waitFor(
      async () =>
        (await this.replicaRows<{ s: string }>('SELECT pg_get_wal_replay_pause_state() AS s'))[0]
          ?.s === 'paused',
      'replay to pause',
    );
  }

  async resumeReplay(): Promise<void> {
    await this.replica.query('SELECT pg_wal_replay_resume()');
  }

  async mainRows<T extends pg.QueryResultRow>(text: string, params: unknown[] = []): Promise<T[]> {
    return (await this.main.query<T>(text, params)).rows;
  }

  async replicaRows<T extends pg.QueryResultRow>(
    text: string,
    params: unknown[] = [],
  ): Promise<T[]> {
    return (await this.replica.query<T>(text, params)).rows;
  }

  /** A Redis client configured like the service's, for direct log inspection. */
  serviceRedis(): Redis {
    return createRedis(this.config);
  }

  /** A steady load on this site's writes, abandoned by `close` if the test failed before stopping it. */
  steadyLoad(ratePerSecond: number, label: string): SteadyLoad {
    const load = steadyLoad(
      (path, body, headers) => this.post(path, body, headers),
      ratePerSecond,
      label,
    );
    this.#loads.push(load);
    return load;
  }

  /**
   * After a test that stopped or killed one of the stack's servers: starts them again for the
   * files after this one, then closes, whether or not they started.
   */
  async restartStackAndClose(): Promise<void> {
    try {
      await stackUp(this.stackOptions());
    } finally {
      await this.close();
    }
  }

  async close(): Promise<void> {
    for (const load of this.#loads.splice(0)) {
      load.abandon();
    }
    for (const child of this.#children) {
      child.kill('SIGKILL');
    }
    // Every service stops and every connection closes, even past one that fails to: the
    // first failure is reported once they have.
    const failures: unknown[] = [];
    for (const service of this.services.splice(0)) {
      await service.stop().catch((err: unknown) => failures.push(err));
    }
    // The database and Redis keys stay: the runner drops them once the file passed, and keeps
    // them for inspection when it failed.
    this.redis.disconnect();
    await this.main.end().catch((err: unknown) => failures.push(err));
    await this.replica.end().catch((err: unknown) => failures.push(err));
    if (failures.length > 0) {
      throw failures[0];
    }
  }
}
