import { hostname } from 'node:os';
import { parse as parseConnectionString } from 'pg-connection-string';
import { z } from 'zod';
import { parseTokenEntries, type TokenEntry, TokenFileError } from './auth/api-tokens.ts';
import { isValidSchedule } from './integrity/schedule.ts';

/** Ports of the local stack that `outpost stack up` runs; the defaults when nothing is configured. */
export const LOCAL_STACK = {
  mainPort: 55432,
  replicaPort: 55433,
  redisPort: 56379,
} as const;

const localMainUrl = `postgres://postgres@127.0.0.1:${LOCAL_STACK.mainPort}/outpost`;
const localReplicaUrl = `postgres://postgres@127.0.0.1:${LOCAL_STACK.replicaPort}/outpost`;
const localRedisUrl = `redis://127.0.0.1:${LOCAL_STACK.redisPort}`;

const DURATION_UNITS_MS = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 } as const;

/** Parses `30000`, `500ms`, `10m`, `7d` into milliseconds. */
export const parseDurationMs = (text: string): number | undefined => {
  const match = /^(\d+)(ms|s|m|h|d)?$/.exec(text.trim());
  if (!match) {
    return undefined;
  }
  const unit = (match[2] ?? 'ms') as keyof typeof DURATION_UNITS_MS;
  return Number(match[1]) * DURATION_UNITS_MS[unit];
};

/** The longest wait Node's timers take: beyond it, they fire at once. */
const LONGEST_TIMER_MS = 2 ** 31 - 1;

const duration = (fallback: string, { timer = false } = {}) =>
  z
    .string()
    .default(fallback)
    .transform((text, ctx) => {
      const ms = parseDurationMs(text);
      if (ms === undefined) {
        ctx.addIssue({
          code: 'custom',
          message: `not a duration: ${text} (e.g. 30000, 30s, 10m, 7d)`,
        });
        return z.NEVER;
      }
      if (timer && ms > LONGEST_TIMER_MS) {
        ctx.addIssue({ code: 'custom', message: `at most 24 days (24d), not ${text}` });
        return z.NEVER;
      }
      return ms;
    });

/**
 * Where the API tokens come from: inline JSON (validated here, at start) or a file path (read and
 * validated by the token store at start and on every change, so tokens can be revoked live).
 */
export type ApiTokensSource =
  | { kind: 'inline'; entries: readonly TokenEntry[] }
  | { kind: 'file'; path: string };

const apiTokens = z
  .string()
  .optional()
  .transform((text, ctx): ApiTokensSource | undefined => {
    if (text === undefined) {
      return undefined;
    }
    if (!text.trimStart().startsWith('[')) {
      return { kind: 'file', path: text };
    }
    try {
      return { kind: 'inline', entries: parseTokenEntries(text) };
    } catch (err) {
      ctx.addIssue({
        code: 'custom',
        message: `inline tokens: ${err instanceof TokenFileError ? err.message : String(err)}`,
      });
      return z.NEVER;
    }
  });

/**
 * A whole number written in digits. Coercion read a blank value as 0 (a random port) and took
 * `0x50`, `8e3` or `12.0` for numbers nobody meant to write.
 */
const wholeNumber = (fallback: number, range: { min: number; max?: number }) =>
  z
    .string()
    .default(String(fallback))
    .transform((text, ctx) => {
      const value = /^\s*\d+\s*$/.test(text) ? Number(text) : Number.NaN;
      const { min, max = Number.MAX_SAFE_INTEGER } = range;
      if (!(value >= min && value <= max)) {
        ctx.addIssue({
          code: 'custom',
          message:
            max === Number.MAX_SAFE_INTEGER
              ? `must be a whole number of at least ${min}, not "${text}"`
              : `must be a whole number from ${min} to ${max}, not "${text}"`,
        });
        return z.NEVER;
      }
      return value;
    });

const positiveInt = (fallback: number) => wholeNumber(fallback, { min: 1 });
const UNPARSABLE_HINT =
  'a port that is not a number from 1 to 65535? a character in the password that must be percent-encoded?';

/**
 * A URL its driver can connect with, read by the driver's own parser: a driver reads one it
 * cannot parse as an error at every connect, so the service would start and then fail each
 * request. The value is never echoed: it may hold a password.
 */
const connectionUrl = (
  scheme: RegExp,
  example: string,
  read: (text: string) => unknown,
): z.ZodType<string> =>
  z.string().superRefine((text, ctx) => {
    if (!scheme.test(text)) {
      ctx.addIssue({ code: 'custom', message: `must be a URL such as ${example}` });
      return;
    }
    try {
      read(text);
    } catch (err) {
      // The parsers' own refusal of a URL names nothing; pg's also reads the TLS files the URL
      // names (sslcert, sslkey, sslrootcert), whose errors say which file.
      const reason =
        err instanceof Error && err.message !== 'Invalid URL' ? err.message : UNPARSABLE_HINT;
      ctx.addIssue({
        code: 'custom',
        message: `must be a URL such as ${example}, and cannot be read as one (${reason})`,
      });
    }
  });

const PG_EXAMPLE = 'postgres://user:password@host:5432/database';
const REDIS_EXAMPLE = 'redis://:password@host:6379 (rediss:// for TLS, unix:///path/to/redis.sock)';

// pg's own parser: it also takes a socket directory, as `?host=/var/run/postgresql`.
const pgUrl = connectionUrl(/^postgres(ql)?:\/\//, PG_EXAMPLE, parseConnectionString);

/** Where a Redis URL points, as ioredis reads it: a host, or a socket's path. */
export const redisEndpoint = (url: string): { host: string; port: string } | { path: string } => {
  const parsed = new URL(url);
  const path = parsed.protocol === 'unix:' ? parsed.pathname : parsed.searchParams.get('path');
  return path ? { path } : { host: parsed.hostname, port: parsed.port || '6379' };
};

/**
 * A Redis URL as ioredis will read it: it decodes the user name and password itself, and a `%`
 * not written as `%25` would throw "URI malformed" at start-up, naming no variable.
 */
const readRedisUrl = (url: string) => {
  const { username, password } = new URL(url);
  for (const part of [username, password]) {
    try {
      decodeURIComponent(part);
    } catch {
      throw new Error(
        'its user name or password holds a % not followed by two hex digits: write % as %25',
      );
    }
  }
  return redisEndpoint(url);
};

const redisUrl = connectionUrl(/^(rediss?|unix):\/\//, REDIS_EXAMPLE, readRedisUrl);

/**
 * A URL naming no server, which its driver takes to mean this machine's default one (for pg,
 * PGHOST's where that is set): a template whose host was left empty would reach a server that is
 * not the site's, and say nothing.
 */
const requireServer = (e: Record<string, unknown>, ctx: z.RefinementCtx) => {
  const database = (url: string) => parseConnectionString(url).host || e.PGHOST;
  const servers = [
    ['MAIN_DATABASE_URL', PG_EXAMPLE, database],
    ['REPLICA_DATABASE_URL', PG_EXAMPLE, database],
    [
      'REDIS_URL',
      REDIS_EXAMPLE,
      (url: string) => {
        const endpoint = redisEndpoint(url);
        return 'path' in endpoint ? endpoint.path : endpoint.host;
      },
    ],
  ] as const;
  for (const [variable, example, serverOf] of servers) {
    const url = e[variable];
    let server: unknown;
    try {
      server = typeof url === 'string' ? serverOf(url) : 'not given';
    } catch {
      continue; // refused above as unreadable
    }
    if (!server) {
      ctx.addIssue({
        code: 'custom',
        path: [variable],
        message: `must name the server, as in ${example}; without one the driver would connect to this machine's default server`,
      });
    }
  }
};

const Env = z
  .object({
    OUTPOST_PORT: wholeNumber(8080, { min: 0, max: 65535 }),
    // Stamped on every event and recorded as the site's name: a stray space or newline from a
    // template would make another site, for the main database, of the same one.
    OUTPOST_SITE: z
      .string()
      .min(1)
      .max(64)
      .regex(/^[^\s\p{Cc}](?:[^\p{Cc}]*[^\s\p{Cc}])?$/u, {
        message: 'must not begin or end with white space, nor hold control characters',
      })
      .default(hostname()),
    OUTPOST_SITE_ROLE: z.enum(['main', 'secondary']).optional(),
    MAIN_DATABASE_URL: pgUrl.optional(),
    REPLICA_DATABASE_URL: pgUrl.optional(),
    REDIS_URL: redisUrl.default(localRedisUrl),
    OUTPOST_PARTITIONS: wholeNumber(8, { min: 1, max: 1024 }),
    OUTPOST_ADMIN_TOKEN: z
      .string()
      .min(1)
      .refine(
        (token) => token === token.trim(),
        "has spaces or a line break around it (a secret file's last newline?): a request's token, read from its header, never does, so every admin call would be refused",
      )
      .optional(),
    OUTPOST_API_TOKENS: apiTokens,
    OUTPOST_LIVE_MAXLEN: positiveInt(100_000),
    OUTPOST_LIVE_CLIENT_BUFFER_BYTES: positiveInt(1024 * 1024),
    OUTPOST_MAX_ATTEMPTS: positiveInt(5),
    // The partition leases last this long and are renewed every third of it, at most every 50 ms.
    OUTPOST_CLAIM_IDLE_MS: wholeNumber(30_000, { min: 200, max: LONGEST_TIMER_MS }),
    OUTPOST_CONSUMER: z.string().min(1).max(200).optional(),
    OUTPOST_STREAM_RETENTION: duration('7d'),
    OUTPOST_INTEGRITY_SCHEDULE: z
      .string()
      .default('*/30 * * * *')
      .refine(isValidSchedule, 'not a 5-field cron schedule (e.g. */30 * * * *)'),
    OUTPOST_POST_DEPLOY_REFRESH_DELAY: duration('10m', { timer: true }),
    OUTPOST_MAX_BODY_BYTES: positiveInt(1024 * 1024),
    OUTPOST_APPENDFSYNC: z.enum(['always', 'everysec']).default('always'),
    OUTPOST_BATCH_SIZE: positiveInt(500),
    OUTPOST_ACK_INTERVAL_MS: wholeNumber(20, { min: 1, max: LONGEST_TIMER_MS }),
    OUTPOST_NAMESPACE: z
      .string()
      .regex(/^outpost(:[a-z0-9_-]+)?$/, 'must be "outpost" or "outpost:<suffix>"')
      .default('outpost'),
    LOG_LEVEL: z
      .enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'])
      .default('info'),
    // pg's own: where a database URL names no host, pg connects to PGHOST.
    PGHOST: z.string().optional(),
  })
  .superRefine(requireServer);

export type Config = {
  readonly port: number;
  readonly site: string;
  readonly role: 'main' | 'secondary';
  readonly mainDatabaseUrl: string;
  readonly replicaDatabaseUrl: string;
  /** True when reads and the ack gate use the main database itself (no separate replica). */
  readonly replicaIsMain: boolean;
  readonly redisUrl: string;
  readonly partitions: number;
  readonly adminToken: string | undefined;
  /** Scoped API tokens; absent: the domain endpoints are open (a single trusted network). */
  readonly apiTokens?: ApiTokensSource;
  /** Approximate number of messages the live feed stream keeps for resuming clients. */
  readonly liveMaxLen?: number;
  /** Bytes a live client may leave unread before it is dropped. */
  readonly liveClientBufferBytes?: number;
  /** Between live-feed heartbeats (and token re-checks); 15 s unless a test shortens it. */
  readonly liveHeartbeatMs?: number;
  readonly maxAttempts: number;
  readonly claimIdleMs: number;
  readonly consumer: string;
  readonly streamRetentionMs: number;
  readonly integritySchedule: string;
  /** Whether OUTPOST_INTEGRITY_SCHEDULE was set: `outpost migrate` gives the job only a chosen one. */
  readonly integrityScheduleGiven?: boolean;
  readonly postDeployRefreshDelayMs: number;
  readonly maxBodyBytes: number;
  readonly appendfsync: 'always' | 'everysec';
  readonly batchSize: number;
  readonly ackIntervalMs: number;
  /** Prefix of every Redis key: `outpost` in production; tests isolate themselves with a suffix. */
  readonly namespace: string;
  readonly logLevel: z.infer<typeof Env>['LOG_LEVEL'];
};

export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ConfigError';
  }
}

/**
 * The host and port name a process for as long as it runs there, so a restart re-reads its own
 * pending entries first. Port 0 (any free port) names no process: every such process on a host
 * would share one name, each reading the others' pending entries as its own, so it takes its pid.
 */
const defaultConsumer = (port: number) =>
  port === 0 ? `${hostname()}:pid${process.pid}` : `${hostname()}:${port}`;

/** Names of this machine's own loopback address: one server, however the URL names it. */
const LOOPBACK = new Set(['', 'localhost', '127.0.0.1', '::1', '[::1]']);

/**
 * Whether two database URLs name the same database: the same server, port, database and user,
 * however the URL is spelled (`postgresql://` or `postgres://`, the default port written or not,
 * the host's case, `localhost` or `127.0.0.1`, other parameters). A main site whose replica URL
 * spelled its own database differently was taken to have a replica that is not a standby, and
 * acknowledged nothing. Other names of one host are not resolved: the URLs are read at start-up,
 * before any name service answers.
 */
export const sameDatabase = (a: string, b: string): boolean => {
  if (a === b) {
    return true;
  }
  const target = (url: string) => {
    const { host, port, database, user } = parseConnectionString(url);
    const server = host?.toLowerCase() ?? '';
    return [
      LOOPBACK.has(server) ? 'localhost' : server,
      port || '5432',
      database ?? '',
      user ?? '',
    ].join('\n');
  };
  try {
    return target(a) === target(b);
  } catch {
    return false;
  }
};

/** Validates the environment once at start-up; the only reader of process.env. */
export const loadConfig = (env: NodeJS.ProcessEnv = process.env): Config => {
  const relevant = Object.fromEntries(
    Object.entries(env).filter(([key, value]) => key in Env.shape && value !== ''),
  );
  const parsed = Env.safeParse(relevant);
  if (!parsed.success) {
    const lines = parsed.error.issues.map(
      (issue) => `${issue.path.join('.') || 'environment'}: ${issue.message}`,
    );
    throw new ConfigError(`invalid configuration\n${lines.join('\n')}`);
  }
  const e = parsed.data;
  const onlyMainGiven = e.MAIN_DATABASE_URL !== undefined && e.REPLICA_DATABASE_URL === undefined;
  const mainDatabaseUrl = e.MAIN_DATABASE_URL ?? localMainUrl;
  const replicaDatabaseUrl =
    e.REPLICA_DATABASE_URL ??
    (e.MAIN_DATABASE_URL === undefined ? localReplicaUrl : mainDatabaseUrl);
  const role = e.OUTPOST_SITE_ROLE ?? (onlyMainGiven ? 'main' : 'secondary');
  return Object.freeze({
    port: e.OUTPOST_PORT,
    site: e.OUTPOST_SITE,
    role,
    mainDatabaseUrl,
    replicaDatabaseUrl,
    replicaIsMain: sameDatabase(replicaDatabaseUrl, mainDatabaseUrl),
    redisUrl: e.REDIS_URL,
    partitions: e.OUTPOST_PARTITIONS,
    adminToken: e.OUTPOST_ADMIN_TOKEN,
    apiTokens: e.OUTPOST_API_TOKENS,
    liveMaxLen: e.OUTPOST_LIVE_MAXLEN,
    liveClientBufferBytes: e.OUTPOST_LIVE_CLIENT_BUFFER_BYTES,
    maxAttempts: e.OUTPOST_MAX_ATTEMPTS,
    claimIdleMs: e.OUTPOST_CLAIM_IDLE_MS,
    consumer: e.OUTPOST_CONSUMER ?? defaultConsumer(e.OUTPOST_PORT),
    streamRetentionMs: e.OUTPOST_STREAM_RETENTION,
    integritySchedule: e.OUTPOST_INTEGRITY_SCHEDULE,
    integrityScheduleGiven: 'OUTPOST_INTEGRITY_SCHEDULE' in relevant,
    postDeployRefreshDelayMs: e.OUTPOST_POST_DEPLOY_REFRESH_DELAY,
    maxBodyBytes: e.OUTPOST_MAX_BODY_BYTES,
    appendfsync: e.OUTPOST_APPENDFSYNC,
    batchSize: e.OUTPOST_BATCH_SIZE,
    ackIntervalMs: e.OUTPOST_ACK_INTERVAL_MS,
    namespace: e.OUTPOST_NAMESPACE,
    logLevel: e.LOG_LEVEL,
  });
};

/** What start-up logs: everything but secrets and credentials in URLs. */
export const redactedConfig = (config: Config): Record<string, unknown> => {
  const stripCredentials = (url: string) => url.replace(/\/\/[^@/]*@/, '//***@');
  // Whether the admin API is on, not the token: a redacted token read "***" even when unset.
  const { adminToken, ...rest } = config;
  return {
    ...rest,
    admin: adminToken === undefined ? 'disabled: OUTPOST_ADMIN_TOKEN is not set' : 'enabled',
    mainDatabaseUrl: stripCredentials(config.mainDatabaseUrl),
    replicaDatabaseUrl: stripCredentials(config.replicaDatabaseUrl),
    redisUrl: stripCredentials(config.redisUrl),
    // Digests are not secrets, but a summary is all start-up needs to say.
    apiTokens:
      config.apiTokens === undefined
        ? undefined
        : config.apiTokens.kind === 'file'
          ? { file: config.apiTokens.path }
          : { inline: config.apiTokens.entries.map((e) => e.name) },
  };
};
