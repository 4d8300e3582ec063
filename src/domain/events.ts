import { isUuid } from './ids.ts';

/**
 * The observatory's events. Each is immutable once accepted; `version` is the schema version of
 * `data`, so the fold can upcast older shapes after a schema change.
 */
export const AGGREGATE_TYPES = [
  'executed_obs_unit',
  'raw_data_file',
  'raw_data_package',
  'instrument_configuration',
] as const;
export type AggregateType = (typeof AGGREGATE_TYPES)[number];

export const UNIT_STATUSES = ['running', 'paused', 'success', 'failed', 'interrupted'] as const;
export type UnitStatus = (typeof UNIT_STATUSES)[number];
export const FINISHED_STATUSES: readonly UnitStatus[] = ['success', 'failed', 'interrupted'];
export const OPEN_STATUSES: readonly UnitStatus[] = ['running', 'paused'];

export type JsonValue =
  | null
  | boolean
  | number
  | string
  | JsonValue[]
  | { [key: string]: JsonValue };
export type JsonObject = { [key: string]: JsonValue };

export type ExecutedObsUnitStarted = {
  type: 'ExecutedObsUnitStarted';
  data: {
    obs_unit_id: string;
    instrument: string;
    start_time: string;
    instrument_configuration_id: string | null;
    notes: string | null;
    metadata: JsonObject;
  };
};
export type ExecutedObsUnitUpdated = {
  type: 'ExecutedObsUnitUpdated';
  data: { status?: 'running' | 'paused'; notes?: string | null; metadata?: JsonObject };
};
export type ExecutedObsUnitFinished = {
  type: 'ExecutedObsUnitFinished';
  data: { status: 'success' | 'failed' | 'interrupted'; end_time: string; notes?: string | null };
};
export type RawDataFileRegistered = {
  type: 'RawDataFileRegistered';
  data: {
    executed_obs_unit_id: string;
    path: string;
    size_bytes: number;
    checksum: string;
    checksum_algorithm: 'xxh64' | 'sha256';
    created_at: string;
  };
};
export type RawDataPackageCreated = {
  type: 'RawDataPackageCreated';
  data: { name: string; file_ids: string[]; executed_obs_unit_id: string };
};
export type InstrumentConfigurationCreated = {
  type: 'InstrumentConfigurationCreated';
  data: { instrument: string; configuration: JsonObject };
};

export type DomainEvent =
  | ExecutedObsUnitStarted
  | ExecutedObsUnitUpdated
  | ExecutedObsUnitFinished
  | RawDataFileRegistered
  | RawDataPackageCreated
  | InstrumentConfigurationCreated;
export type EventType = DomainEvent['type'];

export const EVENT_TYPES: Record<EventType, { aggregate: AggregateType; creates: boolean }> = {
  ExecutedObsUnitStarted: { aggregate: 'executed_obs_unit', creates: true },
  ExecutedObsUnitUpdated: { aggregate: 'executed_obs_unit', creates: false },
  ExecutedObsUnitFinished: { aggregate: 'executed_obs_unit', creates: false },
  RawDataFileRegistered: { aggregate: 'raw_data_file', creates: true },
  RawDataPackageCreated: { aggregate: 'raw_data_package', creates: true },
  InstrumentConfigurationCreated: { aggregate: 'instrument_configuration', creates: true },
};

export const isEventType = (type: string): type is EventType => Object.hasOwn(EVENT_TYPES, type);

/** An event as it travels through the log: the domain event plus who, where and when. */
export type Envelope = DomainEvent & {
  event_id: string;
  aggregate_id: string;
  aggregate_type: AggregateType;
  version: number;
  site: string;
  /** Milliseconds since the epoch at which the site accepted the event. */
  accepted_at: number;
  /** Name of the API token that wrote the event; absent when the API is open or for older entries. */
  written_by?: string;
};

/**
 * The aggregate whose partition holds an event's stream entries: a file's and a package's unit
 * (a unit's whole tree stays in order on one stream), else the event's own aggregate.
 */
export const partitionRootOf = (event: Envelope): string => {
  if (event.type === 'RawDataFileRegistered' || event.type === 'RawDataPackageCreated') {
    const unit: unknown = event.data.executed_obs_unit_id;
    if (typeof unit === 'string') {
      return unit;
    }
  }
  return event.aggregate_id;
};

/**
 * The aggregates an event's aggregate derives from, which must be applied before it (DESIGN §1:
 * a file never before its unit's start); none for an entry too malformed to say.
 */
export const upstreamIdsOf = (event: DomainEvent): string[] => {
  try {
    return linksOf(event).map((link) => link.upstream_id);
  } catch {
    return [];
  }
};

/**
 * An upstream id as the API writes one. An entry written past the API may name its unit by null
 * or a number: looked up, that would throw far from the event, after its batch committed, and on
 * every re-read, so the partition would stop for good; refused here, the event fails its own fold
 * and ends in the dead letters.
 */
const upstreamIdIn = (value: unknown, field: string): string => {
  if (typeof value !== 'string' || !isUuid(value)) {
    throw new Error(`${field} is not a UUID: ${JSON.stringify(value) ?? 'missing'}`);
  }
  return value;
};

/** Upstream edges a derived aggregate must have (DESIGN §5 `missing_link`). */
export const linksOf = (
  event: DomainEvent,
): { upstream_id: string; kind: 'recorded_in' | 'packages' }[] => {
  switch (event.type) {
    case 'RawDataFileRegistered':
      return [
        {
          upstream_id: upstreamIdIn(event.data.executed_obs_unit_id, 'executed_obs_unit_id'),
          kind: 'recorded_in',
        },
      ];
    case 'RawDataPackageCreated':
      return event.data.file_ids.map((id) => ({
        upstream_id: upstreamIdIn(id, 'file_ids'),
        kind: 'packages' as const,
      }));
    default:
      return [];
  }
};
