import type { Envelope, EventType } from './events.ts';

/**
 * The schema version each event type is written with today. Older events stay in the log as they
 * were written, never rewritten, and are upcast as they are read from it: the projector stores
 * them upcast, at today's version (rows an earlier build stored keep theirs).
 */
export const CURRENT_VERSIONS: Record<EventType, number> = {
  // v2 always carries instrument_configuration_id, notes and metadata (v1 omitted them when empty).
  ExecutedObsUnitStarted: 2,
  ExecutedObsUnitUpdated: 1,
  ExecutedObsUnitFinished: 1,
  RawDataFileRegistered: 1,
  RawDataPackageCreated: 1,
  InstrumentConfigurationCreated: 1,
};

type Upcaster = (data: Record<string, unknown>) => Record<string, unknown>;

/** `UPCASTERS[type][v]` turns version v of the type's data into version v + 1. */
const UPCASTERS: Partial<Record<EventType, Record<number, Upcaster>>> = {
  ExecutedObsUnitStarted: {
    1: (data) => ({
      instrument_configuration_id: null,
      notes: null,
      metadata: {},
      ...data,
    }),
  },
};

export class UnknownVersionError extends Error {
  constructor(type: string, version: number) {
    super(
      `${type} v${version} is newer than this build understands (v${CURRENT_VERSIONS[type as EventType] ?? '?'})`,
    );
    this.name = 'UnknownVersionError';
  }
}

/** Brings an event of any known older version to the current shape of its type. */
export const upcast = (event: Envelope): Envelope => {
  const current = CURRENT_VERSIONS[event.type];
  if (event.version > current || event.version < 1 || !Number.isInteger(event.version)) {
    throw new UnknownVersionError(event.type, event.version);
  }
  let data = event.data as Record<string, unknown>;
  for (let version = event.version; version < current; version += 1) {
    const step = UPCASTERS[event.type]?.[version];
    if (!step) {
      throw new UnknownVersionError(event.type, version);
    }
    data = step(data);
  }
  return { ...event, data, version: current } as Envelope;
};
