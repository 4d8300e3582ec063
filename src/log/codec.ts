import {
  AGGREGATE_TYPES,
  type AggregateType,
  type Envelope,
  EVENT_TYPES,
  isEventType,
} from '../domain/events.ts';
import { upcast } from '../domain/upcast.ts';

/** A stream entry as Redis returns it: `[id, [field, value, ...]]`. */
export type RawEntry = [id: string, fields: string[]];
export type LogEntry = { entryId: string; event: Envelope };

/** An entry that cannot be decoded is poison: it can never apply, however often it is retried. */
export class UndecodableEntryError extends Error {
  constructor(
    readonly entryId: string,
    reason: string,
  ) {
    super(`entry ${entryId} cannot be decoded: ${reason}`);
    this.name = 'UndecodableEntryError';
  }
}

/**
 * The stream fields of an event. The aggregate type is left out: it follows from the event type,
 * and at ≈ 27 bytes an entry it was the largest field a pending event need not carry in Redis.
 * Entries written by earlier builds carry it, and decode as before.
 */
export const encodeEntryFields = (event: Envelope): string[] => [
  'event_id',
  event.event_id,
  'aggregate_id',
  event.aggregate_id,
  'type',
  event.type,
  'v',
  String(event.version),
  'site',
  event.site,
  'at',
  String(event.accepted_at),
  'data',
  JSON.stringify(event.data),
  ...(event.written_by === undefined ? [] : ['written_by', event.written_by]),
];

const isAggregateType = (value: string): value is AggregateType =>
  (AGGREGATE_TYPES as readonly string[]).includes(value);

/** An entry's aggregate type: its own field (earlier builds), else its event type's. */
export const aggregateTypeOf = (record: {
  aggregate_type?: string;
  type?: string;
}): string | undefined =>
  record.aggregate_type ??
  (record.type !== undefined && isEventType(record.type)
    ? EVENT_TYPES[record.type].aggregate
    : undefined);

export const decodeEntry = ([entryId, fields]: RawEntry): LogEntry => {
  const record: Record<string, string> = {};
  for (let i = 0; i + 1 < fields.length; i += 2) {
    record[fields[i] as string] = fields[i + 1] as string;
  }
  const { event_id, aggregate_id, type, v, site, at, data, written_by } = record;
  const aggregate_type = aggregateTypeOf(record);
  if (!event_id || !aggregate_id || !aggregate_type || !type || !v || !site || !at || !data) {
    throw new UndecodableEntryError(entryId, 'missing fields');
  }
  if (!isEventType(type) || !isAggregateType(aggregate_type)) {
    throw new UndecodableEntryError(entryId, `unknown type ${aggregate_type}/${type}`);
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(data);
  } catch {
    throw new UndecodableEntryError(entryId, 'data is not JSON');
  }
  const stored = {
    event_id,
    aggregate_id,
    aggregate_type,
    type,
    version: Number(v),
    site,
    accepted_at: Number(at),
    data: parsed,
    // Entries written before tokens existed have no writer: they still decode.
    ...(written_by === undefined ? {} : { written_by }),
  } as Envelope;
  try {
    return { entryId, event: upcast(stored) };
  } catch (err) {
    throw new UndecodableEntryError(entryId, (err as Error).message);
  }
};
