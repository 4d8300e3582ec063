import { parseLsn } from '../db/lsn.ts';
import type { ReplayState, ReplicaPosition } from '../db/queries/replica.ts';

/**
 * Received WAL left unreplayed this long is held back, not merely on its way: a standby replays
 * what it receives within milliseconds unless paused or blocked by a conflicting query.
 */
const HELD_BACK_SECONDS = 5;

/**
 * Why the replica does not replay the main database's commits, in PostgreSQL's own terms, or
 * undefined when nothing holds it back (it replays all it receives, and streams). The question an
 * operator has when entries wait for the replica; answered here so they need not run the queries
 * on the replica to find out.
 */
export const replicaDelayReason = (
  state: ReplayState,
  replay: ReplicaPosition,
): string | undefined => {
  if (state.pause !== 'not paused') {
    return `replay is ${state.pause} on the replica (pg_wal_replay_pause()): nothing is acknowledged until SELECT pg_wal_replay_resume() is run on it`;
  }
  if (state.receiver === 'stopped') {
    return "the replica's WAL receiver is not running: it receives nothing from the main database (link down, main database stopped, or a wrong primary_conninfo); see the replica's log";
  }
  if (state.receiver !== null && state.receiver !== 'streaming') {
    return `the replica's WAL receiver is ${state.receiver}, not streaming from the main database; see the replica's log`;
  }
  const unreplayed =
    state.receiveLsn === null ? 0n : parseLsn(state.receiveLsn) - parseLsn(replay.lsn);
  if (unreplayed > 0n && replay.lagSeconds >= HELD_BACK_SECONDS) {
    return `the replica received WAL up to ${state.receiveLsn} but has replayed nothing past ${replay.lsn} for ${Math.round(replay.lagSeconds)} s: replay is held back, by a query on the replica that conflicts with it (see pg_stat_activity there, and max_standby_streaming_delay) or by its recovery_min_apply_delay`;
  }
  return undefined;
};

/**
 * The replay state as /health and `outpost pending` show it; all null on a site without a standby,
 * or when the replica did not say.
 */
export const replayStateView = (
  state: ReplayState | undefined,
  position: ReplicaPosition | undefined,
) => {
  const known = state && position ? { state, position } : undefined;
  return {
    receive_lsn: known?.state.receiveLsn ?? null,
    replay_paused: known ? known.state.pause !== 'not paused' : null,
    wal_receiver: known?.state.receiver ?? null,
    reason: (known && replicaDelayReason(known.state, known.position)) ?? null,
  };
};
