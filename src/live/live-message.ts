import type { ChainableCommander } from 'ioredis';
import { z } from 'zod';
import { AGGREGATE_TYPES } from '../domain/events.ts';
import { isStreamEntryId } from '../log/entry-id.ts';

export const LIVE_STATES = ['accepted', 'applied', 'confirmed', 'dead'] as const;
export type LiveState = (typeof LIVE_STATES)[number];

/** One state change of one event, as every live client receives it. */
export type LiveMessage = {
  event_id: string;
  aggregate_id: string;
  aggregate_type: string;
  type: string;
  state: LiveState;
  partition: number;
  /** The event's entry in its partition stream (not the live feed's own id). */
  entry_id: string;
  /** When the state changed, ISO-8601. */
  at: string;
};

/**
 * Where state changes go: the live feed, or nothing. Never rejects. A step that writes its
 * message in its own Redis call asks `listening` first.
 */
export type LivePublisher = {
  publish(messages: readonly LiveMessage[]): Promise<void>;
  listening(): Promise<boolean>;
};

/** A message with its id in the live stream: the SSE `id:` and the resume position. */
export type LiveDelivery = { id: string; message: LiveMessage };

/**
 * Where the feed went quiet: written when a client arrives after a spell with no listener on
 * any process, during which nothing was published. A resume from before it may have missed
 * messages there; a replay meets it, and a live session the process's reader hands it on to.
 */
export type QuietMark = { id: string; quiet: true };

/**
 * Handed on by the process's reader of the stream, never written to it: the stream's trimming
 * overtook the reader (a site publishing faster than it hands messages on), so messages before
 * `id` may never have reached the process's sessions. Each reads on from the stream itself.
 */
export type ReaderOvertaken = { id: string; overtaken: true };

/** What the process's reader of the stream hands each session. */
export type LiveItem = LiveDelivery | QuietMark | ReaderOvertaken;

/** The live stream's field of a quiet mark. */
export const QUIET_FIELD = 'quiet';

const commaList = <T extends string>(values: readonly [T, ...T[]]) =>
  z
    .string()
    .transform((text) => text.split(',').map((s) => s.trim()))
    .pipe(z.array(z.enum(values)).min(1));

// Strict, as the lists: a misspelt filter ignored would stream every event as if filtered.
export const LiveQuery = z.strictObject({
  aggregate_type: commaList(
    AGGREGATE_TYPES as unknown as readonly [string, ...string[]],
  ).optional(),
  aggregate_id: z
    .string()
    .regex(/^[0-9a-fA-F-]{36}$/, 'not a UUID')
    .transform((id) => id.toLowerCase())
    .optional(),
  state: commaList(LIVE_STATES).optional(),
  /** Resume after this live-feed id (WebSocket; SSE clients send Last-Event-ID). */
  since: z.string().refine(isStreamEntryId, 'not a live-feed id').optional(),
  access_token: z.string().optional(),
});
export type LiveQuery = z.infer<typeof LiveQuery>;

export type LiveFilter = {
  aggregateTypes?: ReadonlySet<string>;
  aggregateId?: string;
  states?: ReadonlySet<string>;
};

export const filterOf = (query: LiveQuery): LiveFilter => ({
  ...(query.aggregate_type ? { aggregateTypes: new Set(query.aggregate_type) } : {}),
  ...(query.aggregate_id ? { aggregateId: query.aggregate_id } : {}),
  ...(query.state ? { states: new Set(query.state) } : {}),
});

export const matches = (filter: LiveFilter, m: LiveMessage): boolean =>
  (filter.aggregateTypes === undefined || filter.aggregateTypes.has(m.aggregate_type)) &&
  (filter.aggregateId === undefined || filter.aggregateId === m.aggregate_id) &&
  (filter.states === undefined || filter.states.has(m.state));

/** Live-stream fields of a message; one JSON field keeps an entry small and its decode trivial. */
export const encodeLive = (m: LiveMessage): string => JSON.stringify(m);

/** Queues the XADD of `message` to the live stream `key`, trimmed to about `maxLen` messages. */
export const addLiveMessage = (
  commands: ChainableCommander,
  key: string,
  maxLen: number,
  message: LiveMessage,
) => commands.xadd(key, 'MAXLEN', '~', maxLen, '*', 'm', encodeLive(message));

/** A stream entry as a replay reads it: a message, a quiet mark, or nothing it knows. */
export const decodeLiveOrMark = (
  id: string,
  fields: readonly string[],
): LiveDelivery | QuietMark | undefined =>
  fields[0] === QUIET_FIELD ? { id, quiet: true } : decodeLive(id, fields);

export const decodeLive = (id: string, fields: readonly string[]): LiveDelivery | undefined => {
  const at = fields.indexOf('m');
  const json = at >= 0 ? fields[at + 1] : undefined;
  if (json === undefined) {
    return undefined;
  }
  try {
    return { id, message: JSON.parse(json) as LiveMessage };
  } catch {
    return undefined;
  }
};
