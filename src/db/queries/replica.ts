import type { Queryable } from '../client.ts';
import { parseLsn } from '../lsn.ts';

export type ReplicaPosition = {
  /** The LSN up to which the read replica has replayed (or the primary flushed, without replica). */
  lsn: string;
  /**
   * Seconds since the last replayed transaction while the replica is behind, or while its WAL
   * receiver does not stream (it then has all it received, and still falls behind); 0 when
   * caught up and streaming.
   */
  lagSeconds: number;
};

/**
 * Where reads are served from. Only a server in recovery is a standby: a primary that once
 * recovered from a crash keeps reporting, forever, the LSN its recovery ended at, so a non-NULL
 * replay position alone would read as a standby stuck behind and nothing would be acknowledged
 * again. A primary is the read replica only when the site runs without a separate one.
 */
const LAG_SECONDS = `CASE WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn()
                      AND EXISTS (SELECT 1 FROM pg_stat_wal_receiver
                                   WHERE status IS NULL OR status = 'streaming') THEN 0
                 ELSE COALESCE(extract(epoch FROM now() - pg_last_xact_replay_timestamp()), 0)
            END::float8`;

/**
 * `withLag: false` leaves `lagSeconds` at 0 for callers that read only the position (the acker,
 * every 2 ms while batches land, and waits for a replay): the lag reads the WAL receiver's state.
 */
export const replicaPosition = async (
  replica: Queryable,
  replicaIsMain: boolean,
  { withLag = true }: { withLag?: boolean } = {},
): Promise<ReplicaPosition> => {
  const { rows } = await replica.query<{
    standby: boolean;
    replay: string | null;
    flush: string | null;
    lag: number | null;
  }>(
    `SELECT pg_is_in_recovery() AS standby,
            pg_last_wal_replay_lsn()::text AS replay,
            CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_flush_lsn()::text END AS flush,
            ${withLag ? LAG_SECONDS : '0::float8'} AS lag`,
  );
  const row = rows[0];
  if (row?.standby && row.replay) {
    return { lsn: row.replay, lagSeconds: Math.max(0, row.lag ?? 0) };
  }
  if (row?.standby) {
    throw new Error('the replica has replayed nothing yet: pg_last_wal_replay_lsn() is NULL');
  }
  if (replicaIsMain && row?.flush) {
    return { lsn: row.flush, lagSeconds: 0 };
  }
  throw new Error(
    'the replica is not a standby: pg_is_in_recovery() is false on it (promoted, or REPLICA_DATABASE_URL names a primary; a site without a separate replica names the main database in it, with the host, port, database and user MAIN_DATABASE_URL gives (a host name and its address are not taken as one, localhost and 127.0.0.1 are), or leaves it unset; the processes read it at start-up)',
  );
};

/**
 * Why a standby may be behind, as PostgreSQL itself reports it. Read only for operators (/health,
 * `outpost pending`, the gauges), never on the acknowledgement path.
 */
export type ReplayState = {
  /** pg_get_wal_replay_pause_state(): 'not paused', 'pause requested' or 'paused'. */
  pause: string;
  /** The WAL the standby has received and flushed; replay follows it. */
  receiveLsn: string | null;
  /**
   * pg_stat_wal_receiver.status ('streaming', 'waiting', …), 'stopped' when no WAL receiver runs,
   * or null when this role may not see it (it needs pg_read_all_stats).
   */
  receiver: string | null;
};

/** The replica's replay state, or undefined when it is not a standby (a site without one). */
export const replicaReplayState = async (replica: Queryable): Promise<ReplayState | undefined> => {
  const { rows } = await replica.query<{
    pause: string | null;
    received: string | null;
    receiver: string | null;
  }>(
    `SELECT CASE WHEN pg_is_in_recovery() THEN pg_get_wal_replay_pause_state() END AS pause,
            pg_last_wal_receive_lsn()::text AS received,
            CASE WHEN NOT EXISTS (SELECT 1 FROM pg_stat_wal_receiver) THEN 'stopped'
                 ELSE (SELECT status FROM pg_stat_wal_receiver LIMIT 1) END AS receiver`,
  );
  const row = rows[0];
  if (!row?.pause) {
    return undefined;
  }
  return { pause: row.pause, receiveLsn: row.received, receiver: row.receiver };
};

/**
 * Waits, at most `timeoutMs`, for the read replica to replay up to `lsn`: whoever just wrote to
 * the main database and reads the replica next then reads what they wrote. Answers whether it
 * did; a replica that is behind or away only means the wait ends without it.
 */
export const replicaReached = async (
  replica: Queryable,
  replicaIsMain: boolean,
  lsn: string,
  timeoutMs: number,
  onLookFailed?: (err: unknown) => void,
): Promise<boolean> => {
  const deadline = Date.now() + timeoutMs;
  const target = parseLsn(lsn);
  for (;;) {
    // Each look within what is left of the wait: a replica behind a link that drops packets
    // would otherwise hold the caller for its query timeout.
    let timer: NodeJS.Timeout | undefined;
    const position = await Promise.race([
      replicaPosition(replica, replicaIsMain, { withLag: false }).catch((err: unknown) => {
        onLookFailed?.(err);
        return undefined;
      }),
      new Promise<undefined>((resolve) => {
        timer = setTimeout(() => resolve(undefined), Math.max(0, deadline - Date.now()));
      }),
    ]);
    clearTimeout(timer);
    if (position && parseLsn(position.lsn) >= target) {
      return true;
    }
    if (Date.now() >= deadline) {
      return false;
    }
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
};

export const mainWalLsn = async (main: Queryable): Promise<string> => {
  const { rows } = await main.query<{ lsn: string }>('SELECT pg_current_wal_lsn()::text AS lsn');
  return rows[0]?.lsn ?? '0/0';
};

/** Which of these events the database has: an index probe each, in one statement. */
export const presentEventIds = async (
  db: Queryable,
  eventIds: readonly string[],
): Promise<Set<string>> => {
  const { rows } = await db.query<{ event_id: string }>(
    'SELECT event_id FROM events WHERE event_id = ANY($1::uuid[])',
    [eventIds],
  );
  return new Set(rows.map((r) => r.event_id));
};
