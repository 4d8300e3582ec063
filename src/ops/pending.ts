import { setTimeout as sleep } from 'node:timers/promises';
import type pg from 'pg';
import { parseLsn } from '../db/lsn.ts';
import { mainWalLsn, replicaPosition, replicaReplayState } from '../db/queries/replica.ts';
import { decodeEntry, type RawEntry } from '../log/codec.ts';
import { compareEntryIds } from '../log/entry-id.ts';
import { attemptsOf, type EventLog } from '../log/event-log.ts';
import { CONSUMER_GROUP, type PartitionKeys } from '../log/keys.ts';
import { isNoGroup, pipelineReplies } from '../log/redis.ts';
import {
  databaseReason,
  isDatabaseAnswer,
  isDatabaseUnreachable,
  isStatementTimeout,
} from '../projector/errors.ts';
import { reasonOf } from '../reason.ts';
import { replayStateView } from './replica-delay.ts';

export type PendingFilter = {
  partition?: number;
  minIdleMs?: number;
  consumer?: string;
  limit: number;
};

export type PendingPartition = {
  partition: number;
  count: number;
  lowest_id: string | null;
  highest_id: string | null;
  oldest_idle_ms: number;
  consumers: Record<string, number>;
  /** Appended but not yet delivered to any projector (not in the pending list yet). */
  undelivered: number;
  /**
   * The partition has no consumer group (or no stream): no service of this configuration has
   * started on this Redis, or Redis lost its data. Absent otherwise.
   */
  no_group?: true;
};

export type PendingEntry = {
  entry_id: string;
  partition: number;
  consumer: string;
  idle_ms: number;
  deliveries: number;
  event_id: string | null;
  aggregate_id: string | null;
  type: string | null;
  commit_lsn: string | null;
  waiting_for: 'projection' | 'replica';
  /**
   * Failed attempts at applying it, as counted towards the dead letters (a database out of reach
   * counts none), and the last one's error. `deliveries` counts reads, which a retried batch
   * repeats: it does not tell a failing entry from one behind an outage.
   */
  attempts: number;
  last_error: string | null;
};

export type PendingReport = {
  partitions: PendingPartition[];
  /** The oldest pending entries that match, at most the filter's limit, by partition. */
  entries: PendingEntry[];
  /** More entries match than the limit let through. */
  truncated: boolean;
  replica: {
    replay_lsn: string | null;
    lag_bytes: number | null;
    /** WAL the replica has received; it replays up to here. */
    receive_lsn: string | null;
    replay_paused: boolean | null;
    /** pg_stat_wal_receiver.status, 'stopped' without a receiver; null when unknown. */
    wal_receiver: string | null;
    /** Why the replica does not replay the main database's commits, when something holds it. */
    reason: string | null;
    error?: string;
    /** What the main database answered when asked for its WAL position, if it refused. */
    main_refusal?: string;
  };
};

type Deps = { eventLog: EventLog; main: pg.Pool; replica: pg.Pool; replicaIsMain: boolean };

type XPendingSummary = [number, string | null, string | null, [string, string][] | null];
type XPendingEntry = [string, string, number, number];

/**
 * What is stuck and why: XPENDING per partition, and for each pending entry its event, how long
 * it has been idle, how often it was delivered, and whether it waits for the projector (not yet
 * applied) or for the replica (applied, commit LSN not yet replayed). The entries listed are the
 * `limit` oldest that match, whichever partitions hold them: filled partition by partition, a
 * stuck entry of a late partition would hide behind healthy ones of the first. `truncated` says
 * more match.
 */
export const inspectPending = async (deps: Deps, filter: PendingFilter): Promise<PendingReport> => {
  const { eventLog } = deps;
  const keys = eventLog
    .allKeys()
    .filter((k) => filter.partition === undefined || k.partition === filter.partition);
  const partitions: PendingPartition[] = [];
  const candidates: { partition: number; pending: XPendingEntry }[] = [];
  for (const k of keys) {
    const summary = await partitionSummary(eventLog, k.partition);
    partitions.push({ partition: k.partition, ...summary });
    if (summary.count > 0) {
      // One more than asked for: a partition with more that match makes the list truncated.
      for (const pending of await matchingPending(eventLog, k.stream, filter, filter.limit + 1)) {
        candidates.push({ partition: k.partition, pending });
      }
    }
  }
  const chosen = candidates
    .sort((a, b) => compareEntryIds(a.pending[0], b.pending[0]) || a.partition - b.partition)
    .slice(0, filter.limit);
  const entries: PendingEntry[] = [];
  for (const k of keys) {
    const own = chosen.filter((c) => c.partition === k.partition).map((c) => c.pending);
    entries.push(...(await describePending(eventLog, k, own)));
  }
  return {
    partitions,
    entries,
    truncated: candidates.length > filter.limit,
    replica: await replicaReport(deps),
  };
};

const partitionSummary = async (
  eventLog: EventLog,
  partition: number,
): Promise<Omit<PendingPartition, 'partition'>> => {
  const { stream } = eventLog.keys(partition);
  const summary = (await eventLog.redis
    .xpending(stream, CONSUMER_GROUP)
    .catch((err: unknown) => (isNoGroup(err) ? undefined : Promise.reject(err)))) as
    | XPendingSummary
    | undefined;
  if (summary === undefined) {
    return {
      count: 0,
      lowest_id: null,
      highest_id: null,
      oldest_idle_ms: 0,
      consumers: {},
      undelivered: 0,
      no_group: true,
    };
  }
  const [count, lowest, highest, consumers] = summary;
  const oldest = lowest
    ? ((await eventLog.redis.xpending(
        stream,
        CONSUMER_GROUP,
        lowest,
        lowest,
        1,
      )) as XPendingEntry[])
    : [];
  const lag = eventLog.redis.pipeline();
  eventLog.undeliveredIn(lag, partition);
  const [[undelivered]] = (await pipelineReplies(lag)) as [[number, string]];
  return {
    count: Number(count),
    lowest_id: lowest,
    highest_id: highest,
    oldest_idle_ms: Number(oldest[0]?.[2] ?? 0),
    consumers: Object.fromEntries((consumers ?? []).map(([name, n]) => [name, Number(n)])),
    undelivered,
  };
};

/** A partition's oldest pending entries that pass the filter, at most `count`. */
const matchingPending = async (
  eventLog: EventLog,
  stream: string,
  filter: PendingFilter,
  count: number,
): Promise<XPendingEntry[]> => {
  const args: (string | number)[] = [stream, CONSUMER_GROUP];
  if (filter.minIdleMs !== undefined) {
    args.push('IDLE', filter.minIdleMs);
  }
  args.push('-', '+', count);
  if (filter.consumer !== undefined) {
    args.push(filter.consumer);
  }
  return (await eventLog.redis.call('XPENDING', ...args)) as XPendingEntry[];
};

/** Pending entries of one partition with their events, commit LSNs and what they wait for. */
const describePending = async (
  eventLog: EventLog,
  k: PartitionKeys,
  pending: readonly XPendingEntry[],
): Promise<PendingEntry[]> => {
  if (pending.length === 0) {
    return [];
  }
  const pipeline = eventLog.redis.pipeline();
  for (const [id] of pending) {
    pipeline.xrange(k.stream, id, id);
  }
  for (const [id] of pending) {
    pipeline.hget(k.attempts, id);
  }
  const replies = await pipelineReplies(pipeline);
  const ranges = replies.slice(0, pending.length);
  const attempts = replies
    .slice(pending.length)
    .map((text) => attemptsOf((text as string | null) ?? undefined));
  const lsns = await eventLog.appliedLsnOf(
    pending.map(([id]) => id),
    k.partition,
  );
  const acknowledged = await acknowledgedSince(
    eventLog,
    k.stream,
    pending.filter((_, i) => !lsns[i]).map(([id]) => id),
  );
  return pending.flatMap(([id, consumer, idle, deliveries], i) => {
    if (acknowledged.has(id)) {
      return [];
    }
    const raw = (ranges[i] as RawEntry[] | undefined)?.[0];
    let event: { event_id: string; aggregate_id: string; type: string } | undefined;
    try {
      event = raw ? decodeEntry(raw).event : undefined;
    } catch {
      event = undefined;
    }
    const lsn = lsns[i] ?? null;
    return [
      {
        entry_id: id,
        partition: k.partition,
        consumer,
        idle_ms: Number(idle),
        deliveries: Number(deliveries),
        event_id: event?.event_id ?? null,
        aggregate_id: event?.aggregate_id ?? null,
        type: event?.type ?? null,
        commit_lsn: lsn,
        waiting_for: lsn ? 'replica' : 'projection',
        attempts: attempts[i]?.length ?? 0,
        last_error: attempts[i]?.at(-1)?.error ?? null,
      },
    ];
  });
};

/**
 * Which of `entryIds` are no longer pending. The acker drops an entry's commit LSN with its
 * acknowledgement, so one acknowledged between the list of pending entries and the read of their
 * LSNs would read as waiting for projection: an operator told the main database or the event is
 * the problem, when nothing is stuck (many at once, just after a paused replica resumes).
 */
const acknowledgedSince = async (
  eventLog: EventLog,
  stream: string,
  entryIds: readonly string[],
): Promise<Set<string>> => {
  if (entryIds.length === 0) {
    return new Set();
  }
  const pipeline = eventLog.redis.pipeline();
  for (const id of entryIds) {
    pipeline.xpending(stream, CONSUMER_GROUP, id, id, 1);
  }
  const still = await pipelineReplies(pipeline);
  return new Set(entryIds.filter((_, i) => (still[i] as unknown[]).length === 0));
};

/**
 * Those of `entries` still pending after `graceMs`. An entry the replica replayed a moment before
 * the look is normally acknowledged within the acker's next pass; one still pending after many
 * passes is stuck.
 */
export const stillPendingAfter = async (
  eventLog: EventLog,
  entries: readonly PendingEntry[],
  graceMs: number,
): Promise<PendingEntry[]> => {
  if (entries.length === 0) {
    return [];
  }
  await sleep(graceMs);
  const pipeline = eventLog.redis.pipeline();
  for (const entry of entries) {
    const { stream } = eventLog.keys(entry.partition);
    pipeline.xpending(stream, CONSUMER_GROUP, entry.entry_id, entry.entry_id, 1);
  }
  const replies = await pipelineReplies(pipeline);
  return entries.filter((_, i) => ((replies[i] as unknown[] | undefined)?.length ?? 0) > 0);
};

const replicaReport = async (deps: Deps): Promise<PendingReport['replica']> => {
  try {
    // The replay state is an explanation: a replica that will not give it (a managed service
    // restricting the functions, say) still gives its position.
    const [position, state] = await Promise.all([
      replicaPosition(deps.replica, deps.replicaIsMain),
      replicaReplayState(deps.replica).catch(() => undefined),
    ]);
    let mainRefusal: string | undefined;
    const main = await mainWalLsn(deps.main).catch((err: unknown) => {
      // Answered, but refused: a standby in recovery named as the main database after a
      // failover, a privilege revoked. Its words, not "cannot be reached", say what to mend.
      if (isDatabaseAnswer(err) && !isDatabaseUnreachable(err) && !isStatementTimeout(err)) {
        mainRefusal = databaseReason(err);
      }
      return undefined;
    });
    return {
      replay_lsn: position.lsn,
      lag_bytes: main ? Math.max(0, Number(parseLsn(main) - parseLsn(position.lsn))) : null,
      ...replayStateView(state, position),
      ...(mainRefusal === undefined ? {} : { main_refusal: mainRefusal }),
    };
  } catch (err) {
    return {
      replay_lsn: null,
      lag_bytes: null,
      ...replayStateView(undefined, undefined),
      error: reasonOf(err),
    };
  }
};
