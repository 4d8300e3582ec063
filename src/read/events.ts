import type pg from 'pg';
import { type StoredEvent, storedEvent, storedEventsOf } from '../db/queries/read.ts';
import { partitionOf } from '../domain/ids.ts';
import { aggregateTypeOf, entryRecord, type LogEntry, type RawEntry } from '../log/codec.ts';
import type { DeadLetters } from '../log/dead-letters.ts';
import { entryTime } from '../log/entry-id.ts';
import { decodableEntry, type EventLog } from '../log/event-log.ts';
import { pendingOnly } from './merged.ts';

export type EventState = 'pending' | 'applied' | 'confirmed' | 'dead';

export type EventView = {
  event_id: string;
  aggregate_id: string;
  aggregate_type: string;
  type: string;
  version: number;
  partition: number;
  entry_id: string;
  state: EventState;
  seq?: number;
  commit_lsn?: string;
  accepted_at: string;
  data: unknown;
  /** Why a dead-lettered event could not apply. */
  error?: string;
  /** Name of the API token that wrote the event; null when the API was open. */
  written_by?: string | null;
};

type Deps = { replica: pg.Pool; eventLog: EventLog; partitions: number; deadLetters?: DeadLetters };

const fromEntry = (
  entry: LogEntry,
  partition: number,
  state: EventState,
  extra: Partial<EventView>,
): EventView => ({
  event_id: entry.event.event_id,
  aggregate_id: entry.event.aggregate_id,
  aggregate_type: entry.event.aggregate_type,
  type: entry.event.type,
  version: entry.event.version,
  partition,
  entry_id: entry.entryId,
  state,
  accepted_at: acceptedAt(entry.event.accepted_at, entry.entryId),
  data: entry.event.data,
  written_by: entry.event.written_by ?? null,
  ...extra,
});

/**
 * An entry this build cannot decode (a newer build's event type or version, after a rollback),
 * by its raw fields, as the dead letters show one: the projector dead-letters it soon, and until
 * then it is pending, not a 500.
 */
const fromUndecodable = (
  [entryId, fields]: RawEntry,
  partition: number,
  state: EventState,
  extra: Partial<EventView>,
): EventView => {
  const record = entryRecord(fields);
  return {
    event_id: record.event_id ?? '',
    aggregate_id: record.aggregate_id ?? '',
    aggregate_type: aggregateTypeOf(record) ?? '',
    type: record.type ?? '',
    version: Number(record.v) || 1,
    partition,
    entry_id: entryId,
    state,
    accepted_at: acceptedAt(undefined, entryId),
    data: record,
    written_by: record.written_by ?? null,
    ...extra,
  };
};

/**
 * When an event was accepted, as ISO-8601: its own stamp, or, for an entry written past the API
 * with none that reads as a time (the projector dead-letters those), its stream entry's time.
 */
const acceptedAt = (stamp: number | undefined, entryId: string) => {
  const at = new Date(stamp ?? Number.NaN);
  return (Number.isNaN(at.getTime()) ? new Date(entryTime(entryId)) : at).toISOString();
};

const fromStored = (stored: StoredEvent): EventView => ({
  event_id: stored.event_id,
  aggregate_id: stored.aggregate_id,
  aggregate_type: stored.aggregate_type,
  type: stored.type,
  version: stored.version,
  partition: stored.partition,
  entry_id: stored.stream_entry_id,
  state: 'confirmed',
  seq: stored.seq,
  ...(stored.commit_lsn ? { commit_lsn: stored.commit_lsn } : {}),
  accepted_at: stored.occurred_at,
  data: stored.data,
  written_by: stored.written_by,
});

/**
 * Whether the replica's row of an event was applied from this entry. A second entry of the event
 * (appended twice, or given back by a replay) is a duplicate the projector only acknowledges: the
 * event is where the entry that applied it took it, at that commit.
 */
const appliedFrom = (stored: StoredEvent, partition: number, entryId: string): boolean =>
  stored.partition === partition && stored.stream_entry_id === entryId;

/**
 * Where an event is: pending (in the log, not applied), applied (committed on the main database,
 * waiting for the replica), confirmed (acknowledged: on the replica). Redis first, then the
 * replica, so an acknowledgement in between cannot hide the event.
 */
export const readEvent = async (
  deps: Deps,
  eventId: string,
  lookedAgain = false,
): Promise<EventView | undefined> => {
  const partition = partitionOf(eventId, deps.partitions);
  const entryId = await deps.eventLog.entryIdOfEvent(eventId, partition);
  if (entryId) {
    const [raw, [lsn]] = await Promise.all([
      deps.eventLog.readRawEntry(entryId, partition),
      deps.eventLog.appliedLsnOf([entryId], partition),
    ]);
    if (raw) {
      const stored = await storedEvent(deps.replica, eventId);
      if (stored && !appliedFrom(stored, partition, entryId)) {
        // Confirmed once the entry that applied it is acknowledged, whatever the duplicate does.
        const [ownLsn] = await deps.eventLog.appliedLsnOf(
          [stored.stream_entry_id],
          stored.partition,
        );
        const view = fromStored(stored);
        return ownLsn
          ? { ...view, state: 'applied', commit_lsn: stored.commit_lsn ?? ownLsn }
          : view;
      }
      const applied = lsn ?? stored?.commit_lsn ?? undefined;
      const state = applied || stored ? 'applied' : 'pending';
      const extra = {
        ...(stored ? { seq: stored.seq } : {}),
        ...(applied ? { commit_lsn: applied } : {}),
      };
      const [entry] = decodableEntry(raw);
      return entry
        ? fromEntry(entry, partition, state, extra)
        : fromUndecodable(raw, partition, state, extra);
    }
  }
  const stored = await storedEvent(deps.replica, eventId);
  if (stored) {
    return fromStored(stored);
  }
  const found = await deps.deadLetters?.getWithEvent(eventId, partition);
  if (!found && !lookedAgain && deps.deadLetters) {
    // A retry moves a dead event back into the log in one step, but between this read of the log
    // and that of the dead letters: missed by both, it is looked for once more, not answered 404.
    return readEvent(deps, eventId, true);
  }
  if (!found) {
    return undefined;
  }
  const { letter, event } = found;
  return {
    event_id: letter.event_id,
    aggregate_id: letter.aggregate_id,
    aggregate_type: letter.aggregate_type,
    type: letter.type,
    version: event?.version ?? 1,
    partition,
    entry_id: letter.original_entry_id,
    state: 'dead',
    // As the API stamped it at acceptance, kept through retries.
    accepted_at: acceptedAt(event?.accepted_at, letter.original_entry_id),
    data: letter.data,
    error: letter.error,
    written_by: letter.written_by,
  };
};

/** Applied and pending events of an aggregate, in order; undefined if it has none. */
export const readAggregateEvents = async (
  deps: Deps,
  aggregateId: string,
): Promise<EventView[] | undefined> => {
  const partition = partitionOf(aggregateId, deps.partitions);
  const inflight = (await deps.eventLog.readInflight(aggregateId, partition)).filter(
    (e) => e.event.aggregate_id === aggregateId,
  );
  // The commit LSNs before the replica: the acker drops an entry's LSN when it acknowledges it,
  // once the replica has it, so an entry not on the replica read after had its LSN read before,
  // if it had one. Read after the replica, one acknowledged in between would show as pending.
  const inflightLsns = await deps.eventLog.appliedLsnOf(
    inflight.map((e) => e.entryId),
    partition,
  );
  const lsnOf = new Map(inflight.map((e, i) => [e.entryId, inflightLsns[i]]));
  const stored = await storedEventsOf(deps.replica, aggregateId);
  const onReplica = new Set(stored.map((s) => s.event_id));
  const pending = pendingOnly(inflight, onReplica);
  const lsns = pending.map((e) => lsnOf.get(e.entryId));
  // An applied event still in flight: the replica may show its row before the commit LSN stamped
  // on it after the commit, which Redis already holds (as GET /events/{id} says it). In flight as
  // the entry that applied it, that is: a duplicate entry of it is only acknowledged.
  const eventOfEntry = new Map(inflight.map((e) => [e.entryId, e.event.event_id]));
  const items = [
    ...stored.map((s): EventView => {
      if (s.partition !== partition || eventOfEntry.get(s.stream_entry_id) !== s.event_id) {
        return fromStored(s);
      }
      const lsn = lsnOf.get(s.stream_entry_id) ?? s.commit_lsn;
      return { ...fromStored(s), state: 'applied', ...(lsn ? { commit_lsn: lsn } : {}) };
    }),
    ...pending.map((e, i) => {
      const lsn = lsns[i];
      return fromEntry(e, partition, lsn ? 'applied' : 'pending', lsn ? { commit_lsn: lsn } : {});
    }),
  ];
  return items.length === 0 ? undefined : items;
};
