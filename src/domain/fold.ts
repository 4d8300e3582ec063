import {
  type AggregateType,
  type Envelope,
  FINISHED_STATUSES,
  type JsonObject,
  type UnitStatus,
} from './events.ts';

/**
 * Aggregate states are the projection rows themselves (snake_case, as stored and as served), so the
 * projector, the merged read path and rebuild-projections share this one fold.
 */
type Common = {
  id: string;
  site: string;
  accepted_at: string;
  updated_at: string;
  version: number;
};

export type ExecutedObsUnit = Common & {
  obs_unit_id: string;
  instrument: string;
  status: UnitStatus;
  start_time: string;
  end_time: string | null;
  instrument_configuration_id: string | null;
  notes: string | null;
  metadata: JsonObject;
};
export type RawDataFile = Common & {
  executed_obs_unit_id: string;
  path: string;
  size_bytes: number;
  checksum: string;
  checksum_algorithm: 'xxh64' | 'sha256';
  created_at: string;
};
export type RawDataPackage = Common & {
  name: string;
  executed_obs_unit_id: string;
  file_ids: string[];
};
export type InstrumentConfiguration = Common & { instrument: string; configuration: JsonObject };

export type AggregateState =
  | ExecutedObsUnit
  | RawDataFile
  | RawDataPackage
  | InstrumentConfiguration;
export type StateOf<T extends AggregateType> = {
  executed_obs_unit: ExecutedObsUnit;
  raw_data_file: RawDataFile;
  raw_data_package: RawDataPackage;
  instrument_configuration: InstrumentConfiguration;
}[T];

/** An event that cannot apply to the state it meets: a data failure, never retried as transient. */
export class FoldError extends Error {
  constructor(
    message: string,
    readonly eventId: string,
  ) {
    super(message);
    this.name = 'FoldError';
  }
}

/** A file before its unit, a package before a file: what it derives from is not applied. */
export class UpstreamNotAppliedError extends FoldError {
  constructor(
    type: string,
    readonly upstreamId: string,
    eventId: string,
  ) {
    super(`${type} for ${upstreamId}, which is not applied`, eventId);
  }
}

/**
 * A new aggregate's state: the common fields, then the creating event's data, then `extra`, in one
 * object literal. Spreading a separately built object of the common fields first cost ≈ 5.5 µs an
 * event in V8 against ≈ 0.6 µs for this (a loop of 100,000 unit starts), a tenth of the projector's
 * CPU in a drain.
 */
const created = <E extends Envelope, X extends object = object>(
  event: E,
  extra?: X,
): Common & E['data'] & X => {
  const at = new Date(event.accepted_at).toISOString();
  return {
    id: event.aggregate_id,
    site: event.site,
    accepted_at: at,
    updated_at: at,
    version: 1,
    ...event.data,
    ...(extra as X),
  };
};

const touched = <S extends AggregateState>(state: S, event: Envelope): S => ({
  ...state,
  updated_at: new Date(event.accepted_at).toISOString(),
  version: state.version + 1,
});

export const evolve = (state: AggregateState | undefined, event: Envelope): AggregateState => {
  if (state === undefined) {
    switch (event.type) {
      case 'ExecutedObsUnitStarted':
        return created(event, { status: 'running' as const, end_time: null });
      case 'RawDataFileRegistered':
      case 'RawDataPackageCreated':
      case 'InstrumentConfigurationCreated':
        return created(event);
      default:
        throw new FoldError(
          `${event.type} for unknown aggregate ${event.aggregate_id}`,
          event.event_id,
        );
    }
  }
  if (state.id !== event.aggregate_id) {
    throw new FoldError(`event of ${event.aggregate_id} folded onto ${state.id}`, event.event_id);
  }
  switch (event.type) {
    case 'ExecutedObsUnitUpdated':
    case 'ExecutedObsUnitFinished': {
      if (!('obs_unit_id' in state)) {
        throw new FoldError(`${event.type} for a ${event.aggregate_type}`, event.event_id);
      }
      if (FINISHED_STATUSES.includes(state.status)) {
        throw new FoldError(
          `executed obs unit ${state.id} is already ${state.status}`,
          event.event_id,
        );
      }
      return touched({ ...state, ...event.data, ...endTimeOf(event) }, event);
    }
    default:
      throw new FoldError(`${event.type} for existing aggregate ${state.id}`, event.event_id);
  }
};

const endTimeOf = (event: Envelope): { end_time?: string } =>
  event.type === 'ExecutedObsUnitFinished' ? { end_time: event.data.end_time } : {};

export const fold = (
  state: AggregateState | undefined,
  events: readonly Envelope[],
): AggregateState | undefined => events.reduce<AggregateState | undefined>(evolve, state);
