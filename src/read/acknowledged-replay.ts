import { setTimeout as sleep } from 'node:timers/promises';
import type pg from 'pg';
import { formatLsn, type Lsn, parseLsn } from '../db/lsn.ts';

/** How long a new connection to the read replica waits for it to show what was acknowledged. */
export const CATCH_UP_WAIT_MS = 2_000;
const CATCH_UP_POLL_MS = 25;
/** How long the main database is not asked again after it could not tell its WAL position. */
const MAIN_UNTOLD_MS = 10_000;

/** The read replica has not replayed the commits of events no longer held in flight. */
export class ReplicaBehindError extends Error {
  constructor(replayed: Lsn, acknowledged: Lsn) {
    super(
      `the read replica has replayed up to ${formatLsn(replayed)}, and this site's events are acknowledged (no longer held in flight) up to ${formatLsn(acknowledged)}: it came back at an earlier point (after a crash, or from a snapshot) and has not caught up, does not stream, or is not the replica the acker confirms against. Reads wait for it rather than show older state`,
    );
    this.name = 'ReplicaBehindError';
  }
}

export type GateDeps = {
  /** The highest commit LSN acknowledged in any partition (EventLog.acknowledgedThrough). */
  acknowledgedThrough: () => Promise<Lsn | undefined>;
  /** Forgets every partition's mark (EventLog.forgetAcknowledgedThrough). */
  forgetAcknowledged: () => Promise<void>;
  /** The main database's current WAL position; rejects when it cannot tell (soon). */
  mainPosition: () => Promise<Lsn>;
  /** Told of each connection refused, with the reason; `first` of a spell of refusals. */
  onBehind?: (err: ReplicaBehindError, spell: { first: boolean }) => void;
  /** Told when a connection is let through after a spell of refusals. */
  onCaughtUp?: () => void;
  waitMs?: number;
};

/**
 * A check of each new connection to the read replica, before the pool hands it out (pg-pool's
 * `onConnect`): the replica has replayed at least as far as this site's events are acknowledged.
 * An acknowledged event has left Redis's in-flight index, so a merged read (or a write's check of
 * an id) finds it only on the replica; a replica that comes back at an earlier point (a hot
 * standby opens for reads at its consistent point, which after a crash may lie below what it had
 * replayed; a snapshot restored) would answer a confirmed unit 404 until it caught up. The first
 * connection to find it behind waits up to `waitMs` for it; then, until one is let through, each
 * connection is refused at once (ReplicaBehindError) unless the replica has caught up by then.
 *
 * Checked per connection, not per read: within one run of the server, replay only moves forward,
 * and whatever is acknowledged later was confirmed on the replica as it is now. A restart ends
 * every connection, so the connections after it are checked again. A standby promoted since (or a
 * primary standing in for the replica) is not in recovery and is not checked. A main database
 * whose WAL is itself below the mark was restored or replaced (a cluster's WAL only grows): the
 * mark belongs to a history that is gone, and is forgotten. That is asked of the main database
 * afresh each time (a position read earlier may predate the mark), and not again for a while once
 * it could not tell: on a site cut off from its main database, refusals stay immediate.
 */
export class AcknowledgedReplayGate {
  readonly #deps: GateDeps;
  /** Whether connections are being refused: since one was, and none let through after it. */
  #refusing = false;
  #mainUntoldAt: number | undefined;

  constructor(deps: GateDeps) {
    this.#deps = deps;
  }

  /** The pool's `onConnect`. */
  readonly check = async (client: pg.ClientBase): Promise<void> => {
    // Unread, the mark cannot be checked: the connection fails, as reads and writes that need
    // the log do anyway (operators' reports read through a pool without this check).
    const acknowledged = await this.#deps.acknowledgedThrough();
    let replayed = acknowledged === undefined ? undefined : await replayedBy(client);
    if (acknowledged === undefined || replayed === undefined || replayed >= acknowledged) {
      return this.#caughtUp();
    }
    if (!this.#refusing) {
      const deadline = performance.now() + (this.#deps.waitMs ?? CATCH_UP_WAIT_MS);
      while (performance.now() < deadline) {
        await sleep(CATCH_UP_POLL_MS);
        replayed = await replayedBy(client);
        if (replayed === undefined || replayed >= acknowledged) {
          return this.#caughtUp();
        }
      }
    }
    if (await this.#mainBelow(acknowledged)) {
      await this.#deps.forgetAcknowledged();
      return this.#caughtUp();
    }
    const behind = new ReplicaBehindError(replayed, acknowledged);
    this.#deps.onBehind?.(behind, { first: !this.#refusing });
    this.#refusing = true;
    throw behind;
  };

  /** A connection let through: a spell of refusals, if there was one, is over. */
  #caughtUp(): void {
    if (this.#refusing) {
      this.#refusing = false;
      this.#deps.onCaughtUp?.();
    }
  }

  /** Whether the main database's WAL is below `lsn`; false when it cannot tell. */
  async #mainBelow(lsn: Lsn): Promise<boolean> {
    if (
      this.#mainUntoldAt !== undefined &&
      performance.now() - this.#mainUntoldAt < MAIN_UNTOLD_MS
    ) {
      return false;
    }
    try {
      const position = await this.#deps.mainPosition();
      this.#mainUntoldAt = undefined;
      return position < lsn;
    } catch {
      this.#mainUntoldAt = performance.now();
      return false;
    }
  }
}

/** How far a standby has replayed; undefined for a server not in recovery. */
const replayedBy = async (client: pg.ClientBase): Promise<Lsn | undefined> => {
  const { rows } = await client.query<{ replayed: string | null }>(
    'SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()::text END AS replayed',
  );
  const replayed = rows[0]?.replayed;
  return replayed ? parseLsn(replayed) : undefined;
};

/**
 * The WAL position of a primary (the main database): where its next record goes, past every
 * commit it made, written to disk yet or not.
 */
export const walPosition = async (db: pg.Pool): Promise<Lsn> => {
  const { rows } = await db.query<{ lsn: string }>(
    'SELECT pg_current_wal_insert_lsn()::text AS lsn',
  );
  return parseLsn(rows[0]?.lsn ?? '');
};
