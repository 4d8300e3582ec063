import type pg from 'pg';
import { type ListFilter, listRows, replicaRowsWithEvents } from '../db/queries/read.ts';
import type { AggregateType, Envelope, EventType } from '../domain/events.ts';
import { type AggregateState, evolve } from '../domain/fold.ts';
import { partitionOf } from '../domain/ids.ts';
import { CURRENT_VERSIONS } from '../domain/upcast.ts';
import type { LogEntry } from '../log/codec.ts';
import type { CreationFilter, EventLog } from '../log/event-log.ts';

export type Consistency = {
  source: 'replica' | 'replica+pending' | 'pending';
  pending_events: number;
};
export type MergedAggregate = {
  state: AggregateState;
  consistency: Consistency;
  pending: LogEntry[];
};

export type ReadDeps = { replica: pg.Pool; eventLog: EventLog; partitions: number };

/**
 * Folds an aggregate's unacknowledged events over its replica row. Redis is read before the
 * replica: an event acknowledged in between is then already on the replica, never missing from
 * both. Events the replica already holds are skipped by event_id, so none is folded twice.
 */
export const readMerged = async (
  deps: ReadDeps,
  type: AggregateType,
  id: string,
): Promise<MergedAggregate | undefined> =>
  (await readMergedMany(deps, type, [{ id, partition: partitionOf(id, deps.partitions) }]))[0];

/**
 * An aggregate as its events in flight alone make it, without the replica: whether an id created
 * at this site and not yet acknowledged exists, when no database can be asked.
 */
export const readInflightOnly = async (
  deps: Pick<ReadDeps, 'eventLog' | 'partitions'>,
  type: AggregateType,
  id: string,
): Promise<AggregateState | undefined> => {
  const [entries = []] = await inflightOf(deps.eventLog, type, [
    { id, partition: partitionOf(id, deps.partitions) },
  ]);
  return foldPending(
    undefined,
    pendingOnly(entries, new Set()).map((entry) => entry.event),
  ).state;
};

/**
 * `readMerged` for many aggregates of one type at once, as a list needs for every aggregate with
 * events in flight: their entries from Redis first, then their rows and the events the replica
 * holds in one statement, so a list costs one replica round trip however long the backlog (one
 * per aggregate took 4.5 s a list with 20,000 units pending). Those found, in the order given.
 */
export const readMergedMany = async (
  deps: ReadDeps,
  type: AggregateType,
  aggregates: readonly { id: string; partition: number }[],
): Promise<MergedAggregate[]> => {
  const inflight = await inflightOf(deps.eventLog, type, aggregates);
  const { rows, visible } = await replicaRowsWithEvents(
    deps.replica,
    type,
    aggregates.map(({ id }) => id),
    inflight.flatMap((entries) => entries.map((e) => e.event.event_id)),
  );
  const found: MergedAggregate[] = [];
  aggregates.forEach(({ id }, i) => {
    const row = rows.get(id);
    const pending = pendingOnly(inflight[i] ?? [], visible);
    const { state, folded } = foldPending(
      row,
      pending.map((entry) => entry.event),
    );
    if (state) {
      // What the state shows: an event left out of the fold is not counted as merged into it.
      const source = !row ? 'pending' : folded > 0 ? 'replica+pending' : 'replica';
      found.push({ state, consistency: { source, pending_events: folded }, pending });
    }
  });
  return found;
};

/**
 * The in-flight entries of each aggregate, in the order given, read partition by partition. Only
 * the type's index: an id of another type finds nothing there and no row in the type's table, so
 * it is not found, as it should be.
 */
const inflightOf = async (
  eventLog: EventLog,
  type: AggregateType,
  aggregates: readonly { id: string; partition: number }[],
): Promise<LogEntry[][]> => {
  const byPartition = new Map<number, number[]>();
  aggregates.forEach(({ partition }, i) => {
    const positions = byPartition.get(partition);
    if (positions) {
      positions.push(i);
    } else {
      byPartition.set(partition, [i]);
    }
  });
  const inflight: LogEntry[][] = new Array(aggregates.length);
  await Promise.all(
    [...byPartition].map(async ([partition, positions]) => {
      const ids = positions.map((i) => aggregates[i]?.id as string);
      // As the projector will apply them: none past one it cannot read.
      const found = await eventLog.readInflightMany(ids, partition, type, {
        upToUndecodable: true,
      });
      positions.forEach((position, k) => {
        const id = ids[k];
        inflight[position] = (found[k] ?? []).filter(
          (entry) => entry.event.aggregate_id === id && entry.event.aggregate_type === type,
        );
      });
    }),
  );
  return inflight;
};

/**
 * The in-flight entries whose events the replica does not hold yet, each event once: an event
 * appended twice (a replay racing another) is one pending event, folded once.
 */
export const pendingOnly = (
  entries: readonly LogEntry[],
  visible: ReadonlySet<string>,
): LogEntry[] => {
  const seen = new Set<string>();
  return entries.filter((entry) => {
    const eventId = entry.event.event_id;
    if (visible.has(eventId) || seen.has(eventId)) {
      return false;
    }
    seen.add(eventId);
    return true;
  });
};

/**
 * A pending event that cannot fold is left out of the view, with every later event of its
 * aggregate: it fails in the projector too and ends in the dead letters, and the projector holds
 * those later events behind it (they follow it there), so a view with them folded in would show a
 * state the main database never reaches. An entry written past the API can fail with any error,
 * not only a FoldError, and must not turn every read of its aggregate into a 500.
 */
const foldPending = (row: AggregateState | undefined, events: readonly Envelope[]) => {
  let state = row;
  let folded = 0;
  for (const event of events) {
    try {
      state = evolve(state, event);
    } catch {
      break;
    }
    folded += 1;
  }
  return { state, folded };
};

export type ListPage = {
  items: (AggregateState & { consistency: Consistency })[];
  next_cursor: string | null;
};

/** Fields a creation event sets for good, by the type of the aggregate it creates. */
const SET_AT_CREATION: Partial<Record<AggregateType, { column: string; creation: EventType }>> = {
  executed_obs_unit: { column: 'obs_unit_id', creation: 'ExecutedObsUnitStarted' },
  raw_data_file: { column: 'executed_obs_unit_id', creation: 'RawDataFileRegistered' },
};

/**
 * A filter on a field set at creation, as Redis searches the creation events in flight for it:
 * an aggregate whose creation event lacks the value is left out of the merge, since no later
 * event can change it. A list by one unit's `obs_unit_id` over 200,000 pending units then merges
 * the few that hold it, where it merged them all. Other filters (a status changes with later
 * events) are left to the merge.
 */
const creationFilter = (
  type: AggregateType,
  filters: readonly ListFilter[],
): CreationFilter | undefined => {
  const field = SET_AT_CREATION[type];
  const filter = field && filters.find((f) => f.column === field.column);
  return (
    field &&
    filter && {
      type: field.creation,
      version: CURRENT_VERSIONS[field.creation],
      // As the event's data was written: JSON.stringify of an object whose field holds the value.
      needle: `${JSON.stringify(field.column)}:${JSON.stringify(filter.value)}`,
    }
  );
};

/** Aggregates with events in flight merged at a time while a list page fills. */
const LIST_MERGE_CHUNK = 1000;

const byIdOrder = (a: { id: string }, b: { id: string }) =>
  a.id < b.id ? -1 : a.id > b.id ? 1 : 0;

/**
 * One page of a list, ordered by id (UUIDv7, so by creation): replica rows merged with the
 * aggregates of the type that still have events in flight, filtered after the merge. Those are
 * merged in id order, a chunk at a time, until the page is settled: every item below the next
 * unmerged id is final, so a backlog of 200,000 units costs an unfiltered page one chunk, not
 * 200,000 merges. A filter few of them match merges them all, a chunk at a time, unless it is on
 * a field set at creation (creationFilter).
 */
export const listMerged = async (
  deps: ReadDeps,
  type: AggregateType,
  filters: readonly ListFilter[],
  after: string | undefined,
  limit: number,
): Promise<ListPage> => {
  // The log before the replica, as for one aggregate: what is acknowledged in between is then
  // on the replica's page or merged, never missing from both.
  const inflight = (await deps.eventLog.inflightAggregateIds(type, creationFilter(type, filters)))
    .filter(({ id }) => after === undefined || id > after)
    .sort(byIdOrder);
  const rows = await listRows(deps.replica, type, filters, after, limit + 1);
  // Rows past the replica page's last id may be missing from it: cut the page there.
  const lastReplicaId = rows.length > limit ? rows[limit - 1]?.id : undefined;
  const candidates =
    lastReplicaId === undefined ? inflight : inflight.filter(({ id }) => id <= lastReplicaId);
  const byId = new Map<string, AggregateState & { consistency: Consistency }>();
  for (const row of rows) {
    byId.set(row.id, { ...row, consistency: { source: 'replica', pending_events: 0 } });
  }
  const matches = (state: AggregateState) =>
    filters.every((f) => String((state as Record<string, unknown>)[f.column]) === f.value);
  let mergedUpTo = 0;
  /** The first id not merged yet: items below it are final. */
  const unsettledFrom = () => candidates[mergedUpTo]?.id;
  while (mergedUpTo < candidates.length) {
    const chunk = candidates.slice(mergedUpTo, mergedUpTo + LIST_MERGE_CHUNK);
    for (const { state, consistency } of await readMergedMany(deps, type, chunk)) {
      byId.delete(state.id);
      if (matches(state)) {
        byId.set(state.id, { ...state, consistency });
      }
    }
    mergedUpTo += chunk.length;
    const from = unsettledFrom();
    if (from !== undefined && [...byId.keys()].filter((id) => id < from).length >= limit) {
      break;
    }
  }
  // Stopped early, at least `limit` items lie below the first unmerged id, so the page is theirs.
  const ordered = [...byId.values()]
    .filter((item) => lastReplicaId === undefined || item.id <= lastReplicaId)
    .sort(byIdOrder);
  const items = ordered.slice(0, limit);
  const more = unsettledFrom() !== undefined || ordered.length > limit || rows.length > limit;
  // A short page with more to come: pending events took replica rows out of the filter, and
  // everything up to the replica page's end is settled, so the next page starts after it.
  const pageEnd = items.length < limit ? lastReplicaId : undefined;
  return { items, next_cursor: more ? (pageEnd ?? items.at(-1)?.id ?? null) : null };
};
