import type pg from 'pg';
import { type Queryable, withConnection } from '../db/client.ts';
import { parseLsn } from '../db/lsn.ts';
import {
  type AggregateRow,
  appliedEventIdsAt,
  type EventRow,
  existingAggregateIds,
  type HeadRow,
  headSeqs,
  type LinkRow,
  type MainPosition,
  PROJECTION_TABLES,
  type ProjectionTable,
  projectionRows,
  stampCommitLsns,
  writeBatch,
} from '../db/queries/apply.ts';
import { FencedError, type Lease } from '../db/queries/leases.ts';
import { type Envelope, EVENT_TYPES, linksOf, upstreamIdsOf } from '../domain/events.ts';
import { type AggregateState, evolve, FoldError, UpstreamNotAppliedError } from '../domain/fold.ts';
import { isUuid } from '../domain/ids.ts';
import { appendTo } from '../lists.ts';
import type { LogEntry } from '../log/codec.ts';

export type BatchResult = {
  /** Entries whose events this batch applied. */
  applied: LogEntry[];
  /** Entries whose events were already in the main database (redelivery, duplicate XADD). */
  duplicates: LogEntry[];
  /** Entries whose events cannot apply: to the state they meet, or to PostgreSQL. */
  failed: { entry: LogEntry; error: Error }[];
  /** Entries held back behind a failed event of their aggregate: order before progress. */
  deferred: LogEntry[];
  /**
   * The WAL flush position read after the batch's commit and its commit_lsn update returned: at
   * or past both commit records. The acknowledgement gate waits for the replica to reach it.
   */
  commitLsn: string;
  /** The main database written to, at `commitLsn`: what the partition's next batch expects. */
  mainPosition?: MainPosition;
};

type Plan = {
  events: EventRow[];
  created: AggregateRow[];
  createdHeads: HeadRow[];
  advancedHeads: HeadRow[];
  links: LinkRow[];
  states: Map<ProjectionTable, AggregateState[]>;
  applied: LogEntry[];
  failed: { entry: LogEntry; error: FoldError }[];
  deferred: LogEntry[];
};

const loadStates = async (db: Queryable, fresh: readonly LogEntry[]) => {
  const upstreamIds = unique(fresh.flatMap((e) => upstreamIdsOf(e.event))).filter(isUuid);
  const upstreams =
    upstreamIds.length > 0 ? await existingAggregateIds(db, upstreamIds) : new Set<string>();
  const idsByTable = new Map<ProjectionTable, Set<string>>();
  for (const { event } of fresh) {
    if (!EVENT_TYPES[event.type].creates) {
      const table = PROJECTION_TABLES[event.aggregate_type];
      const ids = idsByTable.get(table) ?? new Set();
      idsByTable.set(table, ids.add(event.aggregate_id));
    }
  }
  const states = new Map<string, AggregateState>();
  const allIds: string[] = [];
  for (const [table, ids] of idsByTable) {
    allIds.push(...ids);
    for (const state of await projectionRows(db, table, [...ids])) {
      states.set(state.id, state);
    }
  }
  const seqs = allIds.length > 0 ? await headSeqs(db, allIds) : new Map<string, number>();
  return { states, seqs, upstreams };
};

/** Folds the fresh events in stream order over the stored states: pure, no I/O. */
const planBatch = (
  fresh: readonly LogEntry[],
  loaded: {
    states: Map<string, AggregateState>;
    seqs: Map<string, number>;
    /** The upstream aggregates of the batch's files and packages that are already applied. */
    upstreams: ReadonlySet<string>;
  },
  partition: number,
  heldAggregates: ReadonlySet<string>,
): Plan => {
  const plan: Plan = {
    events: [],
    created: [],
    createdHeads: [],
    advancedHeads: [],
    links: [],
    states: new Map(),
    applied: [],
    failed: [],
    deferred: [],
  };
  // What this batch folded, over the loaded states (which a combined batch shares between its
  // partitions, so they are read through rather than copied for each).
  const states = new Map<string, AggregateState>();
  const nextSeq = new Map<string, number>();
  const createdHere = new Set<string>();
  const heads = new Map<string, HeadRow>();
  const tableOf = new Map<string, ProjectionTable>();
  const held = new Set(heldAggregates);
  const applied = (upstream: string) => loaded.upstreams.has(upstream) || createdHere.has(upstream);
  for (const entry of fresh) {
    const { event } = entry;
    const id = event.aggregate_id;
    const upstreams = upstreamIdsOf(event);
    if (held.has(id) || upstreams.some((upstream) => held.has(upstream) && !applied(upstream))) {
      // Behind a failed event of its own aggregate, or behind the failed start of the one it
      // derives from (a file of a unit that is not there yet): applied now, it would stand
      // without what it belongs to. A unit that is there already holds back none of its files.
      plan.deferred.push(entry);
      held.add(id);
      continue;
    }
    const seq = nextSeq.get(id) ?? (loaded.seqs.has(id) ? (loaded.seqs.get(id) ?? 0) + 1 : 0);
    let state: AggregateState;
    let occurredAt: string;
    let row: ReturnType<typeof eventRow>;
    let links: ReturnType<typeof linksOf>;
    try {
      const missing = upstreams.find((upstream) => !applied(upstream));
      if (missing !== undefined) {
        // A file before its unit's start, a package before a file: the start failed or was
        // discarded. Applied, it would stand without what it belongs to (DESIGN §1).
        throw new UpstreamNotAppliedError(event.type, missing, event.event_id);
      }
      state = evolve(states.get(id) ?? loaded.states.get(id), event);
      occurredAt = new Date(event.accepted_at).toISOString();
      row = eventRow(event, seq, partition, entry.entryId, occurredAt);
      links = linksOf(event);
    } catch (err) {
      // Planning is pure: whatever fails here fails for this event's content (an entry written
      // past the API, without a time or with a package's file_ids missing), and would fail the
      // same on every retry. Counted against the event, it ends in the dead letters; thrown, it
      // would stop the whole partition for good.
      plan.failed.push({
        entry,
        error:
          err instanceof FoldError
            ? err
            : new FoldError(`cannot fold ${event.type}: ${(err as Error).message}`, event.event_id),
      });
      held.add(id);
      continue;
    }
    states.set(id, state);
    nextSeq.set(id, seq + 1);
    if (seq === 0) {
      createdHere.add(id);
      plan.created.push({
        id,
        type: event.aggregate_type,
        site: event.site,
        partition,
        created_at: occurredAt,
      });
    }
    heads.set(id, { aggregate_id: id, seq, event_id: event.event_id, at: occurredAt });
    tableOf.set(id, PROJECTION_TABLES[event.aggregate_type]);
    plan.events.push(row);
    plan.links.push(...links.map((link) => ({ ...link, downstream_id: id })));
    plan.applied.push(entry);
  }
  for (const [id, head] of heads) {
    (createdHere.has(id) ? plan.createdHeads : plan.advancedHeads).push(head);
    const state = states.get(id);
    const table = tableOf.get(id);
    if (state && table) {
      appendTo(plan.states, table, [state]);
    }
  }
  return plan;
};

const eventRow = (
  event: Envelope,
  seq: number,
  partition: number,
  entryId: string,
  occurredAt: string,
): EventRow => ({
  event_id: event.event_id,
  aggregate_id: event.aggregate_id,
  seq,
  type: event.type,
  version: event.version,
  data: event.data,
  site: event.site,
  partition,
  stream_entry_id: entryId,
  occurred_at: occurredAt,
  written_by: event.written_by ?? null,
});

/** One partition's batch: its entries in stream order, its lease, its aggregates held back. */
export type BatchRequest = {
  entries: readonly LogEntry[];
  lease: Lease;
  heldAggregates?: ReadonlySet<string>;
  /** Where the partition's last batch left the main database: refused if it is not there. */
  mainSeen?: MainSeen;
};

/**
 * Where a partition's batches left the main database, and the last event they applied: a main
 * database rolled back on the same timeline (a filesystem snapshot restored) soon has its WAL
 * past their commits again, from other partitions' batches, and lacks only their events.
 */
export type MainSeen = MainPosition & { eventId?: string };

const writePlans = async (db: pg.PoolClient, plans: readonly Plan[], leases: readonly Lease[]) => {
  const projections = new Map<ProjectionTable, AggregateState[]>();
  for (const plan of plans) {
    for (const [table, states] of plan.states) {
      appendTo(projections, table, states);
    }
  }
  const leased = await writeBatch(
    db,
    {
      aggregates: plans.flatMap((p) => p.created),
      events: plans.flatMap((p) => p.events),
      createdHeads: plans.flatMap((p) => p.createdHeads),
      advancedHeads: plans.flatMap((p) => p.advancedHeads),
      links: plans.flatMap((p) => p.links),
      projections,
    },
    leases,
  );
  if (!leased) {
    const [only] = leases;
    throw leases.length === 1 && only
      ? new FencedError(only.partition, only.token)
      : new CombinedFencedError(leases.map((l) => l.partition));
  }
};

/**
 * The main database is not the one the partition's earlier batches were committed to: another
 * cluster, another timeline, or its WAL behind their commits (restored from a backup, failed over
 * to a standby). Nothing is written: the partition checks its applied entries against it first.
 */
export class MainDatabaseChangedError extends Error {
  constructor(seen: MainSeen, now: MainPosition, lacksEvent: boolean) {
    super(
      `the main database changed under the projector: its batches were committed to system ${seen.system}, timeline ${seen.timeline}, up to ${seen.lsn}; it is now system ${now.system}, timeline ${now.timeline}, at ${now.lsn}${lacksEvent ? `, and lacks event ${seen.eventId}, the last they applied` : ''}`,
    );
    this.name = 'MainDatabaseChangedError';
  }
}

const movedFrom = (seen: MainPosition, now: MainPosition) =>
  seen.system !== now.system ||
  seen.timeline !== now.timeline ||
  parseLsn(now.lsn) < parseLsn(seen.lsn);

const changeFrom = (
  seen: MainSeen,
  now: MainPosition,
  known: ReadonlyMap<string, unknown>,
): MainDatabaseChangedError | undefined => {
  const lacksEvent = seen.eventId !== undefined && !known.has(seen.eventId);
  return movedFrom(seen, now) || lacksEvent
    ? new MainDatabaseChangedError(seen, now, lacksEvent)
    : undefined;
};

/**
 * The check a batch makes before it writes, for a partition with no batch to make: how the main
 * database is not where the partition's batches left it, if it is not.
 */
export const mainChangeSince = (
  pool: pg.Pool,
  seen: MainSeen,
): Promise<MainDatabaseChangedError | undefined> =>
  withConnection(pool, async (db) => {
    const { known, position } = await appliedEventIdsAt(db, seen.eventId ? [seen.eventId] : []);
    return changeFrom(seen, position, known);
  });

/** A lease of a combined batch lapsed; which one is found by applying each partition alone. */
export class CombinedFencedError extends Error {
  constructor(partitions: readonly number[]) {
    super(`partitions ${partitions.join(', ')}: a lease is no longer current; refusing to commit`);
    this.name = 'CombinedFencedError';
  }
}

/**
 * Applies the batches of one or several partitions as one: dedupe on event_id, fold each over its
 * own partition's state, then write events, heads, stats, links and projections in one statement
 * (one transaction), and stamp the commit LSN; one result per request. Events already applied are
 * reported as duplicates and never written again. The reads before the write need no transaction
 * around them: only a partition's lease holder writes its aggregates, and the write itself checks
 * that it still is. Partitions hold disjoint aggregates, so nothing one batch writes is read by
 * another.
 */
export const applyBatches = async (
  pool: pg.Pool,
  requests: readonly BatchRequest[],
): Promise<BatchResult[]> =>
  // The commit LSN gates acknowledgement, so it must stand for flushed commits: an asynchronously
  // committed batch lost in a crash would leave its LSN to be reached again by later WAL, and the
  // acker would acknowledge events that no longer exist. The projector's pool sets
  // synchronous_commit=on in each connection's startup packet, which outranks the server's,
  // database's and role's defaults (service.ts, projectorPool); the write alone relaxes it,
  // since the stamp's synchronous commit after it flushes both (writeBatch).
  withConnection(pool, async (db) => {
    const { known, position } = await appliedEventIdsAt(
      db,
      unique([
        ...requests.flatMap((r) => r.entries.map((e) => e.event.event_id)),
        ...requests.flatMap((r) => (r.mainSeen?.eventId ? [r.mainSeen.eventId] : [])),
      ]),
    );
    for (const { mainSeen } of requests) {
      const change = mainSeen && changeFrom(mainSeen, position, known);
      if (change) {
        throw change;
      }
    }
    const split = requests.map(({ entries }) => {
      const seen = new Set<string>();
      const fresh: LogEntry[] = [];
      const duplicates: LogEntry[] = [];
      for (const entry of entries) {
        const id = entry.event.event_id;
        (known.has(id) || seen.has(id) ? duplicates : fresh).push(entry);
        seen.add(id);
      }
      return { fresh, duplicates };
    });
    const loaded = await loadStates(
      db,
      split.flatMap((s) => s.fresh),
    );
    const plans = requests.map((request, i) =>
      planBatch(
        split[i]?.fresh ?? [],
        loaded,
        request.lease.partition,
        request.heldAggregates ?? new Set(),
      ),
    );
    await writePlans(
      db,
      plans,
      requests.map((r) => r.lease),
    );
    // Applied events, and duplicates committed earlier without their LSN (a crash in between).
    const lacksLsn = split.flatMap((s) =>
      s.duplicates.filter((e) => known.get(e.event.event_id) === false),
    );
    const commitLsn = await stampCommitLsns(
      db,
      [...plans.flatMap((p) => p.applied), ...lacksLsn].map((e) => e.event.event_id),
    );
    return plans.map((plan, i) => {
      // A second copy of an event in the same batch is a duplicate only if the first applied;
      // if the first failed it waits, rather than be recorded as applied when nothing was.
      const appliedHere = new Set(plan.applied.map((e) => e.event.event_id));
      const copies = split[i]?.duplicates ?? [];
      const settled = (e: LogEntry) =>
        known.has(e.event.event_id) || appliedHere.has(e.event.event_id);
      return {
        applied: plan.applied,
        duplicates: copies.filter(settled),
        failed: plan.failed,
        deferred: [...plan.deferred, ...copies.filter((e) => !settled(e))],
        commitLsn,
        mainPosition: { ...position, lsn: commitLsn },
      };
    });
  });

const unique = <T>(values: readonly T[]): T[] => [...new Set(values)];
