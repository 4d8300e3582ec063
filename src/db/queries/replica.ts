import type { Queryable } from '../client.ts';

export type ReplicaPosition = {
  /** The LSN up to which the read replica has replayed (or the primary flushed, without replica). */
  lsn: string;
  /** Seconds since the last replayed transaction while the replica is behind; 0 when caught up. */
  lagSeconds: number;
};

/**
 * Where reads are served from. A NULL replay position means the "replica" is not a standby: that
 * is a misconfiguration, not "caught up", unless the site runs without a separate replica.
 */
export const replicaPosition = async (
  replica: Queryable,
  replicaIsMain: boolean,
): Promise<ReplicaPosition> => {
  const { rows } = await replica.query<{
    replay: string | null;
    flush: string | null;
    lag: number | null;
  }>(
    `SELECT pg_last_wal_replay_lsn()::text AS replay,
            CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_flush_lsn()::text END AS flush,
            CASE WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0
                 ELSE COALESCE(extract(epoch FROM now() - pg_last_xact_replay_timestamp()), 0)
            END::float8 AS lag`,
  );
  const row = rows[0];
  if (row?.replay) {
    return { lsn: row.replay, lagSeconds: Math.max(0, row.lag ?? 0) };
  }
  if (replicaIsMain && row?.flush) {
    return { lsn: row.flush, lagSeconds: 0 };
  }
  throw new Error('the replica is not a standby: pg_last_wal_replay_lsn() is NULL');
};

export const mainWalLsn = async (main: Queryable): Promise<string> => {
  const { rows } = await main.query<{ lsn: string }>('SELECT pg_current_wal_lsn()::text AS lsn');
  return rows[0]?.lsn ?? '0/0';
};
