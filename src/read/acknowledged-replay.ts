import { setTimeout as sleep } from 'node:timers/promises';
import type pg from 'pg';
import { formatLsn, type Lsn, parseLsn } from '../db/lsn.ts';

/** How long a new connection to the read replica waits for it to show what was acknowledged. */
export const CATCH_UP_WAIT_MS = 2_000;
const CATCH_UP_POLL_MS = 25;

/** The read replica has not replayed the commits of events no longer held in flight. */
export class ReplicaBehindError extends Error {
  constructor(replayed: Lsn, acknowledged: Lsn, waitedMs: number) {
    super(
      `the read replica has replayed up to ${formatLsn(replayed)}, and this site's events are acknowledged (no longer held in flight) up to ${formatLsn(acknowledged)}; it did not get there within ${waitedMs} ms. It came back at an earlier point (after a crash, or from a snapshot) or is not the replica the acker confirms against, and reads wait for it rather than show older state. After a main database restored from an earlier backup, the runbook's replay lets them go on`,
    );
    this.name = 'ReplicaBehindError';
  }
}

/**
 * A check for each new connection to the read replica, before the pool hands it out: the replica
 * has replayed at least as far as this site's events are acknowledged. An acknowledged event has
 * left Redis's in-flight index, so a merged read (or a write's check of an id) finds it only on
 * the replica; a replica that comes back at an earlier point (a hot standby opens for reads at its
 * consistent point, which after a crash may lie below what it had replayed; a snapshot restored)
 * would answer a confirmed unit 404 until it caught up. It waits up to `waitMs` for the replica,
 * then fails the connection with ReplicaBehindError.
 *
 * Checked per connection, not per read: within one run of the server, replay only moves forward,
 * and whatever is acknowledged later was confirmed on the replica as it is now. A restart ends
 * every connection, so the connections after it are checked again. A standby promoted since (or a
 * primary standing in for the replica) is not in recovery and is not checked. Where the log cannot
 * be asked, the connection goes ahead: reads that need the log fail on it anyway, and the
 * replica's own answers (an integrity report) are still worth giving.
 */
export const showsAcknowledged =
  (acknowledgedThrough: () => Promise<Lsn | undefined>, waitMs = CATCH_UP_WAIT_MS) =>
  async (client: pg.ClientBase): Promise<void> => {
    const acknowledged = await acknowledgedThrough().catch(() => undefined);
    if (acknowledged === undefined) {
      return;
    }
    const deadline = performance.now() + waitMs;
    for (;;) {
      const replayed = await replayedBy(client);
      if (replayed === undefined || replayed >= acknowledged) {
        return;
      }
      if (performance.now() >= deadline) {
        throw new ReplicaBehindError(replayed, acknowledged, waitMs);
      }
      await sleep(CATCH_UP_POLL_MS);
    }
  };

/** How far a standby has replayed; undefined for a server not in recovery. */
const replayedBy = async (client: pg.ClientBase): Promise<Lsn | undefined> => {
  const { rows } = await client.query<{ replayed: string | null }>(
    'SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()::text END AS replayed',
  );
  const replayed = rows[0]?.replayed;
  return replayed ? parseLsn(replayed) : undefined;
};
