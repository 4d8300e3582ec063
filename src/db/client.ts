import pg from 'pg';

// int8 counts and sizes are bounded by the API to Number.MAX_SAFE_INTEGER, so numbers are exact.
pg.types.setTypeParser(pg.types.builtins.INT8, (value) => Number(value));

export type Queryable = pg.Pool | pg.PoolClient | pg.Client;

export type PoolOptions = { url: string; max: number; applicationName: string };

/**
 * Pools are built to notice a silently dead link in seconds rather than hang: a connect timeout,
 * TCP keepalives, and statement and idle-in-transaction timeouts on the server side.
 */
export const createPool = ({ url, max, applicationName }: PoolOptions): pg.Pool =>
  new pg.Pool({
    connectionString: url,
    max,
    application_name: applicationName,
    connectionTimeoutMillis: 5_000,
    idleTimeoutMillis: 30_000,
    keepAlive: true,
    keepAliveInitialDelayMillis: 2_000,
    // A batch takes milliseconds; a query still unanswered after this is a dead link, not work.
    statement_timeout: 8_000,
    query_timeout: 10_000,
    idle_in_transaction_session_timeout: 60_000,
  });

/** Runs `work` in one transaction on one connection, rolling back on any error. */
export const withTransaction = async <T>(
  pool: pg.Pool,
  work: (client: pg.PoolClient) => Promise<T>,
): Promise<{ result: T; client: pg.PoolClient; release: (err?: Error) => void }> => {
  const client = await pool.connect();
  try {
    await client.query('BEGIN');
    const result = await work(client);
    await client.query('COMMIT');
    return { result, client, release: (err) => client.release(err) };
  } catch (err) {
    // A connection that cannot even roll back is broken: destroy it instead of pooling it.
    const rollbackError = await client.query('ROLLBACK').then(
      () => undefined,
      (e: unknown) => e as Error,
    );
    client.release(rollbackError);
    throw err;
  }
};
