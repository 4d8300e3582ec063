import type pg from 'pg';
import { type ListFilter, listRows, replicaRowWithEvents } from '../db/queries/read.ts';
import type { AggregateType, Envelope } from '../domain/events.ts';
import { type AggregateState, evolve, FoldError } from '../domain/fold.ts';
import { partitionOf } from '../domain/ids.ts';
import type { LogEntry } from '../log/codec.ts';
import type { EventLog } from '../log/event-log.ts';

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
): Promise<MergedAggregate | undefined> => {
  // Only the type's index: an id of another type finds nothing there and no row in the type's
  // table, so it is not found, as it should be.
  const inflight = (
    await deps.eventLog.readInflight(id, partitionOf(id, deps.partitions), type)
  ).filter((entry) => entry.event.aggregate_id === id && entry.event.aggregate_type === type);
  const { row, visible } = await replicaRowWithEvents(
    deps.replica,
    type,
    id,
    inflight.map((e) => e.event.event_id),
  );
  const pending = inflight.filter((entry) => !visible.has(entry.event.event_id));
  const state = foldPending(
    row,
    pending.map((entry) => entry.event),
  );
  if (!state) {
    return undefined;
  }
  const source = !row ? 'pending' : pending.length > 0 ? 'replica+pending' : 'replica';
  return { state, consistency: { source, pending_events: pending.length }, pending };
};

/** A pending event that cannot fold (it will fail in the projector too) is left out of the view. */
const foldPending = (row: AggregateState | undefined, events: readonly Envelope[]) => {
  let state = row;
  const seen = new Set<string>();
  for (const event of events) {
    if (seen.has(event.event_id)) {
      continue;
    }
    seen.add(event.event_id);
    try {
      state = evolve(state, event);
    } catch (err) {
      if (!(err instanceof FoldError)) {
        throw err;
      }
    }
  }
  return state;
};

export type ListPage = {
  items: (AggregateState & { consistency: Consistency })[];
  next_cursor: string | null;
};

/**
 * One page of a list, ordered by id (UUIDv7, so by creation): replica rows merged with every
 * aggregate of the type that still has events in flight, filtered after the merge.
 */
export const listMerged = async (
  deps: ReadDeps,
  type: AggregateType,
  filters: readonly ListFilter[],
  after: string | undefined,
  limit: number,
): Promise<ListPage> => {
  const inflightIds = await deps.eventLog.inflightAggregateIds(type);
  const merged = (
    await Promise.all(inflightIds.map(({ id }) => readMerged(deps, type, id)))
  ).filter((m): m is MergedAggregate => m !== undefined);
  const rows = await listRows(deps.replica, type, filters, after, limit + 1);
  const byId = new Map<string, AggregateState & { consistency: Consistency }>();
  for (const row of rows) {
    byId.set(row.id, { ...row, consistency: { source: 'replica', pending_events: 0 } });
  }
  const matches = (state: AggregateState) =>
    filters.every((f) => String((state as Record<string, unknown>)[f.column]) === f.value) &&
    (after === undefined || state.id > after);
  for (const { state, consistency } of merged) {
    byId.delete(state.id);
    if (matches(state)) {
      byId.set(state.id, { ...state, consistency });
    }
  }
  // Rows past the replica page's last id may be missing from it: cut the page there.
  const lastReplicaId = rows.length > limit ? rows[limit - 1]?.id : undefined;
  const ordered = [...byId.values()]
    .filter((item) => lastReplicaId === undefined || item.id <= lastReplicaId)
    .sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  const items = ordered.slice(0, limit);
  const more = ordered.length > limit || rows.length > limit;
  return { items, next_cursor: more ? (items.at(-1)?.id ?? null) : null };
};
