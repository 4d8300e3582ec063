import { createHash } from 'node:crypto';
import type { Context } from 'hono';
import stringify from 'safe-stable-stringify';
import { type DomainEvent, type Envelope, EVENT_TYPES } from '../domain/events.ts';
import { newIdInPartition, partitionForText, randomPartition } from '../domain/ids.ts';
import { CURRENT_VERSIONS } from '../domain/upcast.ts';
import {
  isOutOfMemory,
  type LogMemory,
  logFullReason,
  writeRefusal,
  writeRefusedReason,
} from '../log/capacity.ts';
import {
  type AppendRequest,
  type AppendResult,
  AppendsClosedError,
  type Guard,
  PartitionCountMovedError,
  type RequestUnderKey,
} from '../log/event-log.ts';
import { type AppDeps, fastJson } from './context.ts';
import { ApiError } from './errors.ts';

const sha256 = (text: string) => createHash('sha256').update(text).digest('hex');

const IDEMPOTENCY_KEY = /^[\x21-\x7e]{1,255}$/;

/** The idempotency scope of a request: method, concrete path and the client's key. */
export const idempotencyScope = (c: Context): string | undefined => {
  const key = c.req.header('idempotency-key');
  if (key === undefined) {
    return undefined;
  }
  if (!IDEMPOTENCY_KEY.test(key)) {
    throw new ApiError(
      'validation_failed',
      'Idempotency-Key must be 1-255 visible ASCII characters',
      [{ path: 'Idempotency-Key', message: 'invalid header value' }],
    );
  }
  // Routes are lower case and ids are taken in either case: a retry that spells the id in the
  // other case names the same resource, and must meet its first attempt. The path as the router
  // read it, percent-encoded unreserved characters decoded: `/executed_obs_units/st%61rt` is the
  // route it reached.
  return `${c.req.method} ${c.req.path.toLowerCase()} ${key}`;
};

/**
 * The partition of a request that creates a new root aggregate. With an idempotency key it follows
 * from the key, so a retry meets its first attempt's record in the same partition.
 */
export const partitionForNewRoot = (scope: string | undefined, partitions: number): number =>
  scope === undefined ? randomPartition(partitions) : partitionForText(scope, partitions);

export type NewEvent = DomainEvent & { aggregate_id: string };

/**
 * The envelope of a new event. Its fields are named one by one: spreading `event` into the literal
 * took V8 off its fast object-literal path and cost more than the rest of the envelope.
 */
export const envelope = (
  deps: AppDeps,
  partition: number,
  acceptedAt: number,
  event: NewEvent,
): Envelope =>
  ({
    type: event.type,
    aggregate_id: event.aggregate_id,
    data: event.data,
    event_id: newIdInPartition(partition, deps.config.partitions),
    aggregate_type: EVENT_TYPES[event.type].aggregate,
    version: CURRENT_VERSIONS[event.type],
    site: deps.config.site,
    accepted_at: acceptedAt,
  }) as Envelope;

/** A full log takes longer to get room again than a lost connection takes to come back. */
export const logFull = (memory: LogMemory | undefined, cause?: unknown) =>
  new ApiError('log_unavailable', logFullReason(memory), undefined, {
    cause,
    retryAfterSeconds: 5,
  });

/**
 * The log's refusal of a write, as the answer a client and an operator can act on: Redis full
 * (OOM), unable to save (MISCONF), read-only (READONLY) or short of replicas (NOREPLICAS), or the
 * site's partition count no longer this process's. Undefined for any other failure.
 */
export const redisRefusal = (err: unknown): ApiError | undefined => {
  if (isOutOfMemory(err)) {
    return logFull(undefined, err);
  }
  if (err instanceof PartitionCountMovedError) {
    return countMoved(err.message, err);
  }
  const refusal = writeRefusal(err);
  return refusal === undefined
    ? undefined
    : new ApiError('log_unavailable', writeRefusedReason(refusal), undefined, {
        cause: err,
        retryAfterSeconds: 5,
      });
};

/**
 * A failure of the local log as the client's answer: Redis's own refusal when it is one, else
 * `message`, to retry shortly (the connection comes back within seconds).
 */
export const logUnavailable = (err: unknown, message: string): ApiError =>
  redisRefusal(err) ??
  new ApiError(
    'log_unavailable',
    err instanceof AppendsClosedError ? err.message : message,
    undefined,
    { cause: err, retryAfterSeconds: 1 },
  );

/**
 * Refuses what would add events to a log that has no room left but the drain's, or that would not
 * keep them through a crash (its fsync turned off since the start, say): a 201 means durable.
 */
export const refuseUnlessLogKeepsWrites = (deps: Pick<AppDeps, 'capacity'>): void => {
  const full = deps.capacity?.full;
  if (full) {
    throw logFull(full);
  }
  const unsafe = deps.capacity?.unsafe;
  if (unsafe !== undefined) {
    throw new ApiError(
      'log_unavailable',
      `the local log would not keep writes through a crash: ${unsafe}; writes resume within a second of the change`,
      undefined,
      { retryAfterSeconds: 5 },
    );
  }
};

/**
 * The refusal of a process with another partition count than the site's: it waits for its
 * operator's restart.
 */
const countMoved = (message: string, cause?: unknown) =>
  new ApiError('log_unavailable', message, undefined, { cause, retryAfterSeconds: 30 });

/**
 * Refuses what finds events by partition while the site's recorded partition count is not this
 * process's: new events would go to partitions the site's other processes do not look in, reads
 * would miss what they wrote, and a replay or a retry would walk partitions they do not read
 * (ops/partition-count.ts). Every domain request meets it in createApp's middleware; the admin
 * routes call it where they walk partitions.
 */
export const refuseWhenCountMoved = (deps: Pick<AppDeps, 'partitionCount'>): void => {
  const countError = deps.partitionCount?.countError;
  if (countError !== undefined) {
    throw countMoved(countError);
  }
};

export type Accepted = { status: 201 | 202; body: unknown };
export type AcceptOutcome =
  | { kind: 'appended' | 'replayed'; response: Accepted }
  | { kind: 'unknown' }
  | { kind: 'conflict'; state: string };

/**
 * Appends the request's events in one atomic call, honouring Idempotency-Key: the same key with
 * the same body answers the original response and appends nothing.
 */
export const accept = async (
  c: Context,
  deps: AppDeps,
  request: {
    scope: string | undefined;
    rawBody: unknown;
    partition: number;
    events: Envelope[];
    guard?: Guard;
    response: Accepted;
  },
): Promise<AcceptOutcome> => {
  const { scope } = request;
  const idempotency = scope
    ? {
        ...requestUnderKey(deps, scope, request.rawBody),
        response: JSON.stringify(request.response),
      }
    : undefined;
  const writer = c.get('writer') as string | undefined;
  const events =
    writer === undefined
      ? request.events
      : request.events.map((e) => ({ ...e, written_by: writer }));
  let result: AppendResult;
  try {
    refuseUnlessLogKeepsWrites(deps);
    result = await deps.eventLog.append({
      partition: request.partition,
      events,
      idempotency,
      guard: request.guard,
    });
  } catch (err) {
    if (isOutOfMemory(err)) {
      // Look at the memory again now: the log is full.
      deps.capacity?.refresh();
    }
    const refusal =
      err instanceof ApiError
        ? err
        : logUnavailable(err, 'the local log cannot accept writes right now');
    result = await answerOnRecord(deps, request.partition, idempotency, err, refusal);
  }
  switch (result.kind) {
    case 'appended': {
      for (const event of request.events) {
        deps.metrics.eventsAccepted.inc({ type: event.type });
      }
      return { kind: 'appended', response: request.response };
    }
    case 'replayed':
    case 'idempotency_conflict':
      return recordedOutcome(c, result);
    default:
      return result;
  }
};

const requestUnderKey = (deps: AppDeps, scope: string, rawBody: unknown): RequestUnderKey => ({
  scopeHash: sha256(scope),
  requestHash: sha256(stringify(rawBody) ?? ''),
  keyPartition: partitionForText(scope, deps.config.partitions),
});

/** The first answer a key's record holds, as this request's; or the key reused with another body. */
const recordedOutcome = (
  c: Context,
  recorded: Extract<AppendResult, { kind: 'replayed' | 'idempotency_conflict' }>,
): AcceptOutcome => {
  if (recorded.kind === 'idempotency_conflict') {
    throw new ApiError(
      'idempotency_key_reused',
      'this Idempotency-Key was used with a different request body',
    );
  }
  c.header('Idempotent-Replayed', 'true');
  return { kind: 'replayed', response: JSON.parse(recorded.response) as Accepted };
};

/**
 * A request refused by a check against what the site knows (an id in its body it cannot find)
 * may be the retry of one that passed that check and was accepted: what it named was discarded
 * since. Under an Idempotency-Key, the key's record answers it as its first run; without a
 * record, it gets the refusal. `partition` is where the first run appended, if the route can tell
 * without what the check could not find.
 */
export const recordedOrRefused = async (
  c: Context,
  deps: AppDeps,
  request: { scope: string | undefined; rawBody: unknown; partition?: number },
  refusal: unknown,
): Promise<AcceptOutcome> => {
  if (request.scope === undefined || !(refusal instanceof ApiError)) {
    throw refusal;
  }
  const recorded = await deps.eventLog
    .recordedAnswer(request.partition, requestUnderKey(deps, request.scope, request.rawBody))
    .catch(() => undefined);
  if (recorded === undefined) {
    throw refusal;
  }
  return recordedOutcome(c, recorded);
};

/**
 * A write refused because the log takes no writes (full, or Redis refusing them) may be the retry
 * of one that was accepted: its key's record, which Redis still reads, answers it as its first
 * run. Anything else, or a record that cannot be read, gets the refusal.
 */
const answerOnRecord = async (
  deps: AppDeps,
  partition: number,
  idempotency: AppendRequest['idempotency'],
  err: unknown,
  refusal: ApiError,
): Promise<AppendResult> => {
  const refusedWrites = err instanceof ApiError || redisRefusal(err) !== undefined;
  if (idempotency === undefined || !refusedWrites) {
    throw refusal;
  }
  const recorded = await deps.eventLog
    .recordedAnswer(partition, idempotency)
    .catch(() => undefined);
  if (recorded === undefined) {
    throw refusal;
  }
  return recorded;
};

/** Answers a successful append (or its idempotent replay) and records the ingest latency. */
export const respond = (c: Context, deps: AppDeps, outcome: AcceptOutcome, startedMs: number) => {
  if (outcome.kind !== 'appended' && outcome.kind !== 'replayed') {
    throw new Error(`unexpected append outcome ${outcome.kind}`);
  }
  deps.metrics.ingestDuration.observe((performance.now() - startedMs) / 1000);
  const { body, status } = outcome.response;
  // A replay carries the Idempotent-Replayed header set above, which only c.json applies.
  return outcome.kind === 'replayed' ? c.json(body as object, status) : fastJson(c, body, status);
};
