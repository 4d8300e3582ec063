import { createHash } from 'node:crypto';
import pg from 'pg';

// int8 counts and sizes are bounded by the API to Number.MAX_SAFE_INTEGER, so numbers are exact.
pg.types.setTypeParser(pg.types.builtins.INT8, (value) => Number(value));

export type Queryable = pg.Pool | pg.PoolClient | pg.Client;

/**
 * A connection's target with server settings of ours (`-c name=value`) added to any the site's
 * URL carries in `options`. pg lets the URL's `options` replace the config's whole, which would
 * drop ours without a word (the session's UTC time zone among them); ours come last, so they win
 * over the URL's for the same setting.
 */
export const withServerSettings = (
  url: string,
  settings: readonly string[],
): { connectionString: string; options: string } => {
  const parsed = URL.canParse(url) ? new URL(url) : undefined;
  if (!parsed?.searchParams.has('options')) {
    return { connectionString: url, options: settings.join(' ') };
  }
  const fromUrl = parsed.searchParams.get('options');
  parsed.searchParams.delete('options');
  return {
    connectionString: parsed.toString(),
    options: [fromUrl, ...settings].filter(Boolean).join(' '),
  };
};

export type PoolOptions = {
  url: string;
  max: number;
  applicationName: string;
  /** Client-side limit on one query; defaults suit batch work. */
  queryTimeoutMs?: number;
  /** Every commit on these connections waits for the WAL flush, whatever the server default. */
  synchronousCommit?: boolean;
  /**
   * Every statement on these connections reaches its rows by key, so none is planned as a
   * sequential scan. A prepared statement keeps the generic plan it got when first run five
   * times, until autovacuum next analyzes its tables: on a site's new database that plan was made
   * for empty tables, and a sequential scan is cheapest there. The LSN stamp then read the whole
   * growing events table on every batch (2.4 ms per batch of five at 10,000 events, growing).
   */
  keyLookupsOnly?: boolean;
  /** The server ends a transaction left idle this long (a frozen or partitioned client). */
  idleInTransactionTimeoutMs?: number;
  /** Awaited on each new connection before the pool hands it out; one that fails is closed. */
  onConnect?: (client: pg.ClientBase) => Promise<void>;
  /** Connections are closed (and made again, so checked again) after this long; 0: never. */
  maxLifetimeSeconds?: number;
};

/**
 * Pools are built to notice a silently dead link in seconds rather than hang: a connect timeout,
 * TCP keepalives, and statement and idle-in-transaction timeouts on the server side.
 */
export const createPool = ({
  url,
  max,
  applicationName,
  queryTimeoutMs = 10_000,
  synchronousCommit = false,
  keyLookupsOnly = false,
  idleInTransactionTimeoutMs = 60_000,
  onConnect,
  maxLifetimeSeconds = 0,
}: PoolOptions): pg.Pool => {
  // Settings in the startup packet outrank the server's, database's and role's defaults.
  const settings = [
    // Timestamps come back through to_jsonb, which writes the session zone's offset. In a zone
    // whose past used local mean time (America/Santiago before 1910: -04:42:46) the offset has
    // seconds, which JavaScript's Date cannot parse: such a row could not be read back.
    '-c timezone=UTC',
    ...(synchronousCommit ? ['-c synchronous_commit=on'] : []),
    ...(keyLookupsOnly ? ['-c enable_seqscan=off'] : []),
  ];
  return new pg.Pool({
    ...withServerSettings(url, settings),
    max,
    application_name: applicationName,
    connectionTimeoutMillis: Math.min(5_000, queryTimeoutMs),
    idleTimeoutMillis: 30_000,
    keepAlive: true,
    keepAliveInitialDelayMillis: 2_000,
    // A batch takes milliseconds; a query still unanswered after this is a dead link, not work.
    statement_timeout: Math.max(1_000, queryTimeoutMs - 2_000),
    query_timeout: queryTimeoutMs,
    idle_in_transaction_session_timeout: idleInTransactionTimeoutMs,
    onConnect,
    maxLifetimeSeconds,
  });
};

/**
 * Runs `work` on one connection and returns it to the pool. A connection that failed other than
 * by a server error (a timeout, a dead socket) is destroyed rather than reused: a ROLLBACK would
 * only wait out another timeout, and the server rolls back whatever it had open.
 */
export const withConnection = async <T>(
  pool: pg.Pool,
  work: (client: pg.PoolClient) => Promise<T>,
): Promise<T> => {
  const client = await pool.connect();
  // A checked-out client whose server goes away between statements emits 'error'; without a
  // listener that would crash the process instead of failing this work.
  const swallow = () => undefined;
  client.on('error', swallow);
  try {
    const result = await work(client);
    client.removeListener('error', swallow);
    client.release();
    return result;
  } catch (err) {
    // A server error inside an explicit transaction block leaves it aborted: end it before the
    // connection goes back. Outside one, ROLLBACK only draws a notice.
    const releaseError = isServerError(err)
      ? await client.query('ROLLBACK').then(
          () => undefined,
          (e: unknown) => e as Error,
        )
      : (err as Error);
    client.removeListener('error', swallow);
    client.release(releaseError);
    throw err;
  }
};

const statementNames = new Map<string, string>();

/**
 * A statement PostgreSQL parses and plans once per connection. The projector's statements repeat
 * batch after batch, and on the small batches of a steady trickle planning them cost as much as
 * running them (pg_stat_statements: 0.5 of 1.4 ms for the batch write of five events).
 */
export const prepared = (text: string, values: unknown[]): pg.QueryConfig => {
  let name = statementNames.get(text);
  if (name === undefined) {
    name = `outpost_${createHash('sha256').update(text).digest('hex').slice(0, 24)}`;
    statementNames.set(text, name);
  }
  return { name, text, values };
};

/** An error PostgreSQL itself reported (the connection is fine), as opposed to one of the link. */
const isServerError = (err: unknown): boolean =>
  typeof err === 'object' && err !== null && 'severity' in err && 'code' in err;
