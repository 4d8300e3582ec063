import pg from 'pg';

// int8 counts and sizes are bounded by the API to Number.MAX_SAFE_INTEGER, so numbers are exact.
pg.types.setTypeParser(pg.types.builtins.INT8, (value) => Number(value));

export type Queryable = pg.Pool | pg.PoolClient | pg.Client;

export type PoolOptions = {
  url: string;
  max: number;
  applicationName: string;
  /** Client-side limit on one query; defaults suit batch work. */
  queryTimeoutMs?: number;
  /** Every commit on these connections waits for the WAL flush, whatever the server default. */
  synchronousCommit?: boolean;
  /** The server ends a transaction left idle this long (a frozen or partitioned client). */
  idleInTransactionTimeoutMs?: number;
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
  idleInTransactionTimeoutMs = 60_000,
}: PoolOptions): pg.Pool =>
  new pg.Pool({
    connectionString: url,
    ...(synchronousCommit ? { options: '-c synchronous_commit=on' } : {}),
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
  });

/**
 * Runs `work` in one transaction on one connection, rolling back on any error, and returns the
 * connection to the pool. `commit` gives the text that ends it: `COMMIT`, possibly followed by
 * statements that must run after it, sent in the same round trip; their results come back in
 * `committed`.
 */
export const withTransaction = async <T>(
  pool: pg.Pool,
  work: (client: pg.PoolClient) => Promise<T>,
  commit: (result: T) => string = () => 'COMMIT',
): Promise<{ result: T; committed: pg.QueryResult[] }> => {
  const client = await pool.connect();
  // A checked-out client whose server goes away between statements emits 'error'; without a
  // listener that would crash the process instead of failing this transaction.
  const swallow = () => undefined;
  client.on('error', swallow);
  const releaseOnce = (err?: Error) => {
    client.removeListener('error', swallow);
    client.release(err);
  };
  try {
    await client.query('BEGIN');
    const result = await work(client);
    // Several statements in one simple query answer an array of results, one statement a result.
    const reply = (await client.query(commit(result))) as pg.QueryResult | pg.QueryResult[];
    releaseOnce();
    return { result, committed: Array.isArray(reply) ? reply : [reply] };
  } catch (err) {
    if (!isServerError(err)) {
      // A timeout or a dead socket: a ROLLBACK would only wait out another timeout. Destroying
      // the connection makes the server roll back.
      releaseOnce(err as Error);
      throw err;
    }
    const rollbackError = await client.query('ROLLBACK').then(
      () => undefined,
      (e: unknown) => e as Error,
    );
    releaseOnce(rollbackError);
    throw err;
  }
};

/** An error PostgreSQL itself reported (the connection is fine), as opposed to one of the link. */
const isServerError = (err: unknown): boolean =>
  typeof err === 'object' && err !== null && 'severity' in err && 'code' in err;
