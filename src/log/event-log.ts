import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type { ChainableCommander, Redis } from 'ioredis';
import type { Lsn } from '../db/lsn.ts';
import {
  AGGREGATE_TYPES,
  type AggregateType,
  type Envelope,
  type UnitStatus,
} from '../domain/events.ts';
import { encodeLive, type LiveMessage } from '../live/live-message.ts';
import type { Logger } from '../observability/logger.ts';
import { projectPath } from '../paths.ts';
import { isOutOfMemory, probeWriteRefusal, writeRefusal } from './capacity.ts';
import {
  decodeEntry,
  encodeEntryFields,
  type LogEntry,
  type RawEntry,
  UndecodableEntryError,
} from './codec.ts';
import { compareEntryIds } from './entry-id.ts';
import {
  allPartitionKeys,
  CONSUMER_GROUP,
  DEFAULT_LIVE_MAX_LEN,
  INFLIGHT_BUCKETS,
  liveListenersKey,
  liveStreamKey,
  type PartitionKeys,
  partitionCountKey,
  partitionKeys,
  processRosterKey,
} from './keys.ts';
import {
  APPEND_COMMAND,
  COMMAND_TIMEOUT_MS,
  commandTimedOut,
  forEachHashPage,
  isCommandTimeout,
  pipelineReplies,
  withinCommandTimeout,
} from './redis.ts';

const readScript = (path: string) =>
  readFileSync(projectPath(`src/log/scripts/${path}.lua`), 'utf8');

/**
 * A script's source, after the helpers it uses from scripts/lib (Redis scripts cannot include).
 * Its `#!lua flags=…` line, when it has one, stays first, where Redis reads it.
 */
export const script = (
  name: string,
  ...libraries: ('applied' | 'entry-ids' | 'groups' | 'holder' | 'inflight' | 'letters' | 'live')[]
) => {
  const [, shebang = '', body = ''] = /^(#!lua[^\n]*\n)?([\s\S]*)$/.exec(readScript(name)) ?? [];
  return shebang + [...libraries.map((library) => readScript(`lib/${library}`)), body].join('\n');
};

/**
 * A unit's status is kept in Redis for this long after its last event; past it, the append path
 * seeds the status from the replica, which by then has long applied every event of the unit.
 */
const UNIT_STATE_TTL_SECONDS = 30 * 24 * 3600;
const IDEMPOTENCY_TTL_SECONDS = 24 * 3600;

/** The request hash a key's claim holds: the claim is the hash and its attempt's mark. */
const claimedHash = (claim: string) => claim.split(' ', 1)[0];
/**
 * The most entries counted, one script call, where a restart left Redis's lag unknown (a few
 * milliseconds of Redis's time, once): past it, the most that can wait is reported until the
 * group catches up (scripts/undelivered.lua).
 */
const UNDELIVERED_COUNT_LIMIT = 10_000;
/** How long a guarded request is known by its first event id once its events are acknowledged. */
const GUARDED_RUN_TTL_SECONDS = 60;

export type Guard = {
  unitId: string;
  /** Statuses from which the request may proceed; absent: any status. */
  allowed?: readonly UnitStatus[];
  /** The status after the request; `=` keeps the current one. */
  next: UnitStatus | '=';
  /** The status read from the replica, used when Redis no longer holds one. */
  seed?: UnitStatus;
  /**
   * False: the seed serves this request only and is not recorded, for a unit another site
   * started, which is changed and finished only there.
   */
  recordSeed?: boolean;
  /** Without a status in Redis and without a seed, answer `unknown` instead of appending. */
  require: boolean;
};

/** A request as its Idempotency-Key names it. */
export type RequestUnderKey = {
  scopeHash: string;
  requestHash: string;
  /** The key's own partition: where a new root created with this key is minted. */
  keyPartition: number;
};

export type AppendRequest = {
  partition: number;
  events: readonly Envelope[];
  idempotency?: RequestUnderKey & { response: string };
  guard?: Guard;
};

export type AppendResult =
  | { kind: 'appended'; entryIds: string[] }
  | { kind: 'replayed'; response: string }
  | { kind: 'idempotency_conflict' }
  | { kind: 'unknown' }
  | { kind: 'conflict'; state: string };

/**
 * A record of an applied entry waiting for the replica:
 * `lsn entry event aggregate aggregate_type [event_type]`. The event type (for the live feed's
 * confirmed message) is optional so records queued by an older build still parse.
 */
export type AppliedRecord = {
  lsn: string;
  entryId: string;
  eventId: string;
  aggregateId: string;
  aggregateType: string;
  type?: string;
};

// ack.lua compares records as text: formatting a parsed record must give back the same text.
export const formatApplied = (r: AppliedRecord) =>
  `${r.lsn} ${r.entryId} ${r.eventId} ${r.aggregateId} ${r.aggregateType}${r.type ? ` ${r.type}` : ''}`;

export const parseApplied = (record: string): AppliedRecord => {
  const [lsn = '', entryId = '', eventId = '', aggregateId = '', aggregateType = '', type] =
    record.split(' ');
  return { lsn, entryId, eventId, aggregateId, aggregateType, ...(type ? { type } : {}) };
};

type Commands = {
  outpostAppend(numKeys: number, ...args: string[]): Promise<string[][]>;
  outpostRecordApplied(numKeys: number, ...args: string[]): Promise<number>;
  outpostRecordAttempt(numKeys: number, ...args: string[]): Promise<number | null>;
  outpostAck(numKeys: number, ...args: string[]): Promise<number>;
  outpostForgetApplied(numKeys: number, ...args: string[]): Promise<number>;
  outpostForgetAppliedEntries(numKeys: number, ...args: string[]): Promise<number>;
  outpostReadInflight(numKeys: number, ...args: string[]): Promise<RawEntry[][]>;
  outpostInflightMayMatch(numKeys: number, ...args: string[]): Promise<string[]>;
  outpostUpgradeInflight(numKeys: number, ...args: string[]): Promise<number>;
  outpostUpgradeInflightIndex(numKeys: number, ...args: string[]): Promise<number>;
  outpostRebuildBucketsInUse(numKeys: number, ...args: string[]): Promise<number>;
  outpostUpgradeEventIndex(numKeys: number, ...args: string[]): Promise<number>;
  outpostReleaseClaim(numKeys: number, ...args: string[]): Promise<number>;
  outpostHoldKey(numKeys: number, ...args: string[]): Promise<number>;
  outpostPartitionCount(numKeys: number, ...args: string[]): Promise<RosterOutcome>;
  outpostTrim(numKeys: number, ...args: string[]): Promise<number>;
  outpostCreateGroup(numKeys: number, ...args: string[]): Promise<0 | 1>;
  outpostUndelivered(numKeys: number, ...args: string[]): Promise<[number, string]>;
  outpostReplayPage(numKeys: number, ...args: string[]): Promise<[RawEntry[], string | null]>;
};

/** What listing a process in the site's roster found: see scripts/partition-count.lua. */
export type RosterOutcome = ['listed'] | ['moved', string] | ['running', ...string[]] | ['held'];

export type Attempt = { at: string; error: string };

/** An entry's recorded attempts; one that does not read (written by hand, say) shows as none. */
export const attemptsOf = (text: string | undefined): Attempt[] => {
  try {
    const attempts: unknown = JSON.parse(text ?? '[]');
    return Array.isArray(attempts) ? (attempts as Attempt[]) : [];
  } catch {
    return [];
  }
};

/**
 * The most events one append call carries: the script blocks Redis while it runs, and a few
 * hundred XADDs take about a millisecond.
 */
const MAX_EVENTS_PER_CALL = 1000;

/**
 * The least time an append must have left of its command timeout to be sent: a Redis slower than
 * this per call is stalled, and the append's own call would take the whole timeout again.
 */
const MIN_TIME_TO_SEND_MS = 1_000;

const chunksOf = <T>(items: readonly T[], size: number): T[][] => {
  const chunks: T[][] = [];
  for (let i = 0; i < items.length; i += size) {
    chunks.push(items.slice(i, i + size));
  }
  return chunks;
};

/**
 * A list's filter on a field a creation event sets for good: the creation event's type and
 * version, and the field with its value as JSON.stringify writes them into the event's data.
 */
export type CreationFilter = { type: string; version: number; needle: string };

/**
 * An in-flight entry this build can read, or none. One it cannot (an event type or version of a
 * newer build, after a rollback; data written past the API) is left out, as a pending event that
 * cannot fold is: the projector dead-letters it, and every read of its aggregate must not be a 500
 * meanwhile.
 */
export const decodableEntry = (raw: RawEntry): LogEntry[] => {
  try {
    return [decodeEntry(raw)];
  } catch (err) {
    if (err instanceof UndecodableEntryError) {
      return [];
    }
    throw err;
  }
};

/**
 * An aggregate's in-flight entries in stream order, whichever index each came from, those this
 * build cannot read left out; with `upToUndecodable`, every entry after the first of those too:
 * the projector dead-letters such an entry and holds its aggregate's later ones behind it.
 */
const inStreamOrder = (raw: readonly RawEntry[], upToUndecodable: boolean): LogEntry[] => {
  const ordered = raw.length > 1 ? [...raw].sort((a, b) => compareEntryIds(a[0], b[0])) : raw;
  const entries: LogEntry[] = [];
  for (const one of ordered) {
    const decoded = decodableEntry(one);
    if (decoded.length === 0 && upToUndecodable) {
      break;
    }
    entries.push(...decoded);
  }
  return entries;
};

/** Aggregates per in-flight read script: a few milliseconds of Redis at most. */
const INFLIGHT_READ_CHUNK = 256;

type GatheredAppend = {
  request: AppendRequest;
  /** When (a `performance.now()` time) it is refused if it is still waiting to be sent. */
  deadline: number;
  resolve: (reply: string[]) => void;
  reject: (err: unknown) => void;
};

/** Takes the oldest waiting requests, up to MAX_EVENTS_PER_CALL events but at least one. */
const takeBatch = (waiting: GatheredAppend[]): GatheredAppend[] => {
  let events = 0;
  let count = 0;
  while (count < waiting.length) {
    events += waiting[count]?.request.events.length ?? 0;
    if (count > 0 && events > MAX_EVENTS_PER_CALL) {
      break;
    }
    count += 1;
  }
  return waiting.splice(0, count);
};

/** A request's answer from its key's record, as the append script reads it: the request's hash, a newline, the response. */
const recordOutcome = (
  record: string,
  requestHash: string,
): Extract<AppendResult, { kind: 'replayed' | 'idempotency_conflict' }> => {
  const newline = record.indexOf('\n');
  return record.slice(0, newline) === requestHash
    ? { kind: 'replayed', response: record.slice(newline + 1) }
    : { kind: 'idempotency_conflict' };
};

/**
 * One request as the append script reads it, and its keys: idempotency record, unit status,
 * each event's in-flight bucket, each event's event index bucket, the in-use buckets of each
 * event's in-flight index, then a guarded request's run record. `k` is the index of the
 * first of them in the script's KEYS.
 */
const encodeAppend = (request: AppendRequest, keys: PartitionKeys, k: number) => ({
  keys: [
    keys.idempotency(request.idempotency?.scopeHash ?? 'none'),
    keys.unitState(request.guard?.unitId ?? 'none'),
    ...request.events.map((event) => keys.inflight(event.aggregate_type, event.aggregate_id)),
    ...request.events.map((event) => keys.eventIndex(event.event_id)),
    ...request.events.map((event) => keys.inflightBucketsInUse(event.aggregate_type)),
    keys.guardedRun(request.guard ? (request.events[0]?.event_id ?? 'none') : 'none'),
  ],
  payload: {
    k,
    idem: request.idempotency && {
      hash: request.idempotency.requestHash,
      response: request.idempotency.response,
      ttl: IDEMPOTENCY_TTL_SECONDS,
    },
    guard: request.guard && {
      ...request.guard,
      unitId: undefined,
      ttl: UNIT_STATE_TTL_SECONDS,
      run_ttl: GUARDED_RUN_TTL_SECONDS,
    },
    events: request.events.map((event) => ({
      fields: encodeEntryFields(event),
      event_id: event.event_id,
      aggregate_id: event.aggregate_id,
      aggregate_type: event.aggregate_type,
      type: event.type,
    })),
  },
});

type EncodedAppend = ReturnType<typeof encodeAppend>['payload'];

const appendResult = ([kind, ...rest]: string[]): AppendResult => {
  switch (kind) {
    case 'appended':
      return { kind, entryIds: rest };
    case 'replayed':
      return { kind, response: rest[0] ?? '' };
    case 'conflict':
      return { kind, state: rest[0] ?? '' };
    case 'idempotency_conflict':
    case 'unknown':
      return { kind };
    default:
      throw new Error(`append script answered ${String(kind)}`);
  }
};

/** An append refused because its process stops: nothing was sent to Redis. */
export class AppendsClosedError extends Error {
  override name = 'AppendsClosedError';

  constructor() {
    super(
      'this process is stopping: nothing was appended; send the write again, to another process or once this one is back',
    );
  }
}

/**
 * The append script's refusal: the site's recorded partition count is no longer this process's,
 * so its events would go where the site's other processes do not look (ops/partition-count.ts).
 */
export class PartitionCountMovedError extends Error {
  override name = 'PartitionCountMovedError';

  constructor(
    readonly recorded: number,
    readonly own: number,
  ) {
    super(
      `this site's partition count was changed to ${recorded} while this process runs with ${own}: it refuses writes, which would go to partitions the site's other processes do not read; restart it with OUTPOST_PARTITIONS=${recorded}`,
    );
  }
}

/** The site's local log: partition streams in Redis and the indexes the read path needs. */
export class EventLog {
  readonly #redis: Redis & Commands;
  /** Built once: every append and read needs its partition's keys. */
  readonly #keys: PartitionKeys[];
  /** The live stream and its listeners key, which every append names. */
  readonly #liveKeys: [string, string];

  constructor(
    redis: Redis,
    readonly namespace: string,
    readonly partitions: number,
    readonly liveMaxLen: number = DEFAULT_LIVE_MAX_LEN,
  ) {
    redis.defineCommand(APPEND_COMMAND, { lua: script('append', 'inflight', 'live') });
    redis.defineCommand('outpostRecordApplied', { lua: script('record-applied') });
    redis.defineCommand('outpostRecordAttempt', { lua: script('record-attempt', 'holder') });
    redis.defineCommand('outpostAck', { lua: script('ack', 'applied', 'inflight') });
    redis.defineCommand('outpostForgetApplied', { lua: script('forget-applied', 'applied') });
    redis.defineCommand('outpostForgetAppliedEntries', { lua: script('forget-applied-entries') });
    redis.defineCommand('outpostReadInflight', { lua: script('read-inflight', 'inflight') });
    redis.defineCommand('outpostInflightMayMatch', {
      lua: script('inflight-may-match', 'inflight'),
    });
    redis.defineCommand('outpostUpgradeInflight', { lua: script('upgrade-inflight', 'inflight') });
    redis.defineCommand('outpostUpgradeInflightIndex', {
      lua: script('upgrade-inflight-index', 'inflight'),
    });
    redis.defineCommand('outpostRebuildBucketsInUse', {
      lua: script('rebuild-buckets-in-use', 'inflight'),
    });
    redis.defineCommand('outpostUpgradeEventIndex', { lua: script('upgrade-event-index') });
    redis.defineCommand('outpostReleaseClaim', { lua: script('release-claim') });
    redis.defineCommand('outpostHoldKey', { lua: script('hold-key') });
    redis.defineCommand('outpostPartitionCount', {
      lua: script('partition-count', 'entry-ids', 'groups'),
    });
    redis.defineCommand('outpostTrim', { lua: script('trim', 'entry-ids') });
    redis.defineCommand('outpostCreateGroup', { lua: script('create-group') });
    redis.defineCommand('outpostUndelivered', {
      lua: script('undelivered', 'entry-ids', 'groups'),
    });
    redis.defineCommand('outpostReplayPage', { lua: script('replay-page') });
    this.#redis = redis as Redis & Commands;
    this.#keys = allPartitionKeys(namespace, partitions);
    this.#liveKeys = [liveStreamKey(namespace), liveListenersKey(namespace)];
  }

  keys(partition: number): PartitionKeys {
    // A partition past the configured count (a dead letter from before a resize) still has keys.
    return this.#keys[partition] ?? partitionKeys(this.namespace, partition);
  }

  allKeys(): readonly PartitionKeys[] {
    return this.#keys;
  }

  /**
   * The live feed's keys and the arguments a script that announces a state takes (lib/live.lua):
   * stream and listeners, then max length, now and partition.
   */
  liveScriptArgs(partition: number): { keys: [string, string]; args: [string, string, string] } {
    return {
      keys: this.#liveKeys,
      args: [String(this.liveMaxLen), new Date().toISOString(), String(partition)],
    };
  }

  /**
   * Creates a partition's consumer group again after Redis lost it (restarted without its data,
   * or the group destroyed by hand), from the stream's first entry: whatever the stream holds is
   * delivered, and entries applied before are recognised as applied, not applied again.
   * `logger` is the partition's own, which names it.
   */
  async recreateGroup(partition: number, logger: Logger): Promise<void> {
    logger.error(
      "the partition's consumer group is gone (Redis lost its data, or the group was destroyed): creating it again from the stream's first entry",
    );
    await this.#createGroup(this.keys(partition));
  }

  /**
   * From the stream's first entry; a group that is there already is left as it is. Created over
   * entries the stream already holds, it delivers again what was acknowledged before: how far is
   * kept, so that the projector leaves out the events an operator discarded among them.
   */
  async #createGroup(keys: PartitionKeys): Promise<void> {
    await this.#redis.outpostCreateGroup(2, keys.stream, keys.redeliveredThrough, CONSUMER_GROUP);
  }

  /**
   * Creates the consumer groups and runs the start-up upkeep. Answers Redis's refusal of writes
   * when it refuses them (a full disk): groups that exist are then enough, and the upkeep waits
   * for a start that can write.
   */
  async ensureGroups(): Promise<string | undefined> {
    for (const keys of this.allKeys()) {
      try {
        await this.#createGroup(keys);
      } catch (err) {
        // A full log, or one that cannot save, refuses the CREATE before it finds the group
        // there: a service that starts still serves reads and says why writes are refused, and
        // drains a full log, so a group that exists is enough.
        const exists = async () =>
          ((await this.#redis.xinfo('GROUPS', keys.stream).catch(() => [])) as unknown[][]).some(
            (group) => group.includes(CONSUMER_GROUP),
          );
        const refused = isOutOfMemory(err) || writeRefusal(err) !== undefined;
        if (!(refused && (await exists()))) {
          throw err;
        }
      }
    }
    const refusal = await probeWriteRefusal(this.#redis);
    if (refusal !== undefined) {
      // Healing the in-use sets can wait for a start that can write; moving an earlier build's
      // keys cannot: this build would not see what they hold.
      if (await this.#holdsEarlierBuildKeys()) {
        throw new Error(
          `the log holds keys of an earlier build that this one must move before it starts, and Redis refuses writes (${refusal}): start it once Redis takes writes again`,
        );
      }
      return refusal;
    }
    await this.#upgradeInflight();
    await this.#upgradeInflightIndex();
    await this.#upgradeEventIndex();
    await this.#rebuildBucketsInUse();
    return undefined;
  }

  /**
   * Sets each type's in-use set to the buckets that hold anything, atomically. The scripts keep it
   * so; this heals one that drifted (a script that failed half-way, a key removed by hand), which
   * would otherwise hide pending aggregates from the merged list.
   */
  async #rebuildBucketsInUse(): Promise<void> {
    for (const keys of this.allKeys()) {
      for (const type of AGGREGATE_TYPES) {
        const buckets = Array.from({ length: INFLIGHT_BUCKETS }, (_, n) =>
          keys.inflightBucket(type, n),
        );
        await this.#redis.outpostRebuildBucketsInUse(
          buckets.length + 1,
          keys.inflightBucketsInUse(type),
          ...buckets,
        );
      }
    }
  }

  async #holdsEarlierBuildKeys(): Promise<boolean> {
    for (const keys of this.allKeys()) {
      const earlier = [
        keys.legacyEventIndex,
        ...AGGREGATE_TYPES.flatMap((type) => [
          keys.legacyInflightIndex(type),
          keys.legacyInflightAggregates(type),
        ]),
      ];
      if ((await this.#redis.exists(...earlier)) > 0) {
        return true;
      }
    }
    return false;
  }

  /** Moves an earlier build's one-hash in-flight index of each type into its buckets. */
  async #upgradeInflightIndex(): Promise<void> {
    for (const keys of this.allKeys()) {
      for (const type of AGGREGATE_TYPES) {
        const legacy = keys.legacyInflightIndex(type);
        await forEachHashPage(this.#redis, legacy, (entries) => {
          const aggregateIds = entries.map(([field]) => field);
          return this.#redis.outpostUpgradeInflightIndex(
            aggregateIds.length + 2,
            legacy,
            keys.inflightBucketsInUse(type),
            ...aggregateIds.map((id) => keys.inflight(type, id)),
            ...aggregateIds,
          );
        });
      }
    }
  }

  /** Moves an earlier build's one-hash event index into the buckets, a chunk per call. */
  async #upgradeEventIndex(): Promise<void> {
    for (const keys of this.allKeys()) {
      await forEachHashPage(this.#redis, keys.legacyEventIndex, (entries) => {
        const eventIds = entries.map(([field]) => field);
        return this.#redis.outpostUpgradeEventIndex(
          eventIds.length + 1,
          keys.legacyEventIndex,
          ...eventIds.map(keys.eventIndex),
          ...eventIds,
        );
      });
    }
  }

  /**
   * Moves in-flight lists written by earlier builds into the in-flight index. It runs at every
   * start and finds nothing once a site has been upgraded; processes of an earlier build must be
   * stopped first, or what they append meanwhile waits here until the next start.
   */
  async #upgradeInflight(): Promise<void> {
    for (const keys of this.allKeys()) {
      for (const type of AGGREGATE_TYPES) {
        const legacySet = keys.legacyInflightAggregates(type);
        for (const aggregateId of await this.#redis.smembers(legacySet)) {
          await this.#redis.outpostUpgradeInflight(
            4,
            keys.legacyInflight(aggregateId),
            legacySet,
            keys.inflight(type, aggregateId),
            keys.inflightBucketsInUse(type),
            aggregateId,
          );
        }
      }
    }
  }

  #appendsClosed = false;

  /**
   * Sends no append from now on, and refuses those waiting for their partition's call: the process
   * stops, and the connections of its requests are cut. An append sent after that would run all
   * the same, and its client, told nothing, would send it again as a second write.
   */
  closeAppends(): void {
    this.#appendsClosed = true;
    for (const waiting of this.#gathering.values()) {
      for (const item of waiting) {
        item.reject(new AppendsClosedError());
      }
    }
    this.#gathering.clear();
  }

  /** Appends one request's events, first claiming its idempotency key if it has one (#claimKey). */
  async append(request: AppendRequest): Promise<AppendResult> {
    if (this.#appendsClosed) {
      throw new AppendsClosedError();
    }
    const { idempotency } = request;
    if (!idempotency) {
      return this.#appendGathered(request);
    }
    const claim = await withinCommandTimeout(() => this.#claimKey(idempotency));
    if (claim.kind === 'taken') {
      return { kind: 'idempotency_conflict' };
    }
    if (claim.kind === 'retried') {
      // A retry. Its first attempt's record is where that attempt appended, unless the site's
      // partition count changed since: then it was copied to the key's partition, which this
      // append does not look at (carryIdempotencyKeys). Records are never rewritten, so one found
      // here answers as the script would.
      const carried = await withinCommandTimeout(() =>
        this.#redis.get(this.keys(idempotency.keyPartition).idempotency(idempotency.scopeHash)),
      );
      if (carried !== null) {
        return recordOutcome(carried, idempotency.requestHash);
      }
    }
    const result = await this.#appendGathered(request);
    const claimKey = this.keys(idempotency.keyPartition).idempotencyClaim(idempotency.scopeHash);
    const refused =
      result.kind === 'unknown' ||
      result.kind === 'conflict' ||
      result.kind === 'idempotency_conflict';
    if (refused && claim.kind === 'claimed') {
      // Only a claim this request took is given back. One it found is another attempt's with the
      // same body, perhaps one that has since appended: given back, the record would be left
      // without the claim that keeps the key from another body in another partition. And a claim
      // taken by a body the key's record then refused would refuse the record's own body.
      // Best effort: the refusal is the answer; a claim left behind only keeps the key for this
      // body, as before claims were given back.
      // Not raced (withinCommandTimeout): run late, after a retry of this body found the claim,
      // it would take the claim from under that retry's record.
      await this.releaseKey(claimKey, claim.value).catch(() => undefined);
    } else if (result.kind === 'appended' && claim.kind === 'retried') {
      // The claim dates from the first attempt, the record from now: the claim must last as long
      // as the record, or another body could pass it in the record's last hours.
      // Best effort too: the events are in the stream, and a failed refresh must not answer 503
      // to a write that was accepted. It only leaves the claim its first attempt's expiry.
      await withinCommandTimeout(() =>
        this.#redis.set(claimKey, idempotency.requestHash, 'EX', IDEMPOTENCY_TTL_SECONDS, 'XX'),
      ).catch(() => undefined);
    }
    return result;
  }

  /**
   * What the first run of an idempotent request answered, read without writing anything: while
   * Redis refuses writes (the log full, a save failed), a retry of a write that was accepted
   * must still get its first answer back, not be told to come back later. Undefined when the key
   * has no record yet (nor a claim by another body).
   */
  async recordedAnswer(
    partition: number | undefined,
    idempotency: RequestUnderKey,
  ): Promise<Extract<AppendResult, { kind: 'replayed' | 'idempotency_conflict' }> | undefined> {
    const [record, claim] = await withinCommandTimeout(() =>
      Promise.all([
        partition === undefined
          ? this.#recordInAnyPartition(idempotency.scopeHash)
          : this.#redis.get(this.keys(partition).idempotency(idempotency.scopeHash)),
        this.#redis.get(
          this.keys(idempotency.keyPartition).idempotencyClaim(idempotency.scopeHash),
        ),
      ]),
    );
    if (record !== null) {
      return recordOutcome(record, idempotency.requestHash);
    }
    return claim !== null && claimedHash(claim) !== idempotency.requestHash
      ? { kind: 'idempotency_conflict' }
      : undefined;
  }

  /** A key's record wherever its request appended: for a caller that cannot tell where. */
  async #recordInAnyPartition(scopeHash: string): Promise<string | null> {
    const pipeline = this.#redis.pipeline();
    for (const keys of this.allKeys()) {
      pipeline.get(keys.idempotency(scopeHash));
    }
    const records = (await pipelineReplies(pipeline)) as (string | null)[];
    return records.find((record) => record !== null) ?? null;
  }

  /**
   * An idempotency record lives beside the stream it guards, in its hash slot, so checking it
   * stays atomic with the append. A route whose partition follows from its body
   * (files and packages go to their unit's) could then meet a reused key in another partition
   * and not see it. So first the key is claimed, SET NX, in its own partition with the request's
   * hash, whichever partition the request goes to: the same key with another body meets the
   * claim and is refused. With the same body it proceeds to the append, whose record answers a
   * replay, or appends if the first attempt never got that far.
   */
  async #claimKey(
    idempotency: NonNullable<AppendRequest['idempotency']>,
  ): Promise<{ kind: 'claimed' | 'retried' | 'taken'; value: string }> {
    // The request's hash and this attempt's own mark: a claim that ioredis sent again after its
    // reply was lost with the connection finds the value it set itself, and must know it for its
    // own, not another attempt's, or a refused request would keep the key for its body.
    // 64 random bits tell two attempts apart; the claim is kept 24 h per keyed write.
    const value = `${idempotency.requestHash} ${randomBytes(8).toString('base64url')}`;
    const earlier = (await this.#redis.call(
      'SET',
      this.keys(idempotency.keyPartition).idempotencyClaim(idempotency.scopeHash),
      value,
      'NX',
      'GET',
      'EX',
      IDEMPOTENCY_TTL_SECONDS,
    )) as string | null;
    if (earlier === null || earlier === value) {
      return { kind: 'claimed', value };
    }
    return { kind: claimedHash(earlier) === idempotency.requestHash ? 'retried' : 'taken', value };
  }

  /**
   * Requests for a partition that arrive while its previous script call is out wait for it and
   * then go together in one call (group commit): under load a call carries many writes, and alone
   * a write goes at once. One still waiting when the command timeout has passed since it was
   * asked, or when the call before it timed out (Redis stalled, or too slow to count as there),
   * is refused, and never sent. One sent is answered by its call, whose timeout runs from when it
   * left (APPEND_COMMAND is not auto-pipelined) and marks it settled, so a reconnect does not
   * send it again (dropLateResends). A race of ours would not: its caller told it timed out could
   * write again, and a reconnect would then run it after that. A Redis that resumes still runs
   * what it received before it stalled: a 503 does not say the write was not made (a retry with
   * its Idempotency-Key finds it). So a write whose first call meets a stalled Redis hears within
   * the timeout of asking.
   */
  #appendGathered(request: AppendRequest): Promise<AppendResult> {
    let timer: NodeJS.Timeout | undefined;
    return new Promise<string[]>((resolve, reject) => {
      // Closed while its key was claimed.
      if (this.#appendsClosed) {
        reject(new AppendsClosedError());
        return;
      }
      const item = {
        request,
        deadline: performance.now() + COMMAND_TIMEOUT_MS,
        resolve,
        reject,
      };
      const waiting = this.#gathering.get(request.partition);
      if (waiting) {
        waiting.push(item);
      } else {
        this.#gathering.set(request.partition, [item]);
      }
      if (!this.#sending.has(request.partition)) {
        // Sent now, with no call before it to wait for.
        this.#sendGathered(request.partition);
        return;
      }
      timer = setTimeout(() => {
        if (this.#stopWaiting(item)) {
          reject(commandTimedOut());
        }
      }, COMMAND_TIMEOUT_MS);
    })
      .finally(() => clearTimeout(timer))
      .then(appendResult);
  }

  /** Takes a request out of its partition's next call; false when it was sent already. */
  #stopWaiting(item: GatheredAppend): boolean {
    const waiting = this.#gathering.get(item.request.partition);
    const at = waiting?.indexOf(item) ?? -1;
    if (!waiting || at === -1) {
      return false;
    }
    waiting.splice(at, 1);
    if (waiting.length === 0) {
      this.#gathering.delete(item.request.partition);
    }
    return true;
  }

  /** Refuses, unsent, every request waiting for a partition's next call. */
  #refuseWaiting(partition: number): void {
    for (const { reject } of this.#gathering.get(partition) ?? []) {
      reject(commandTimedOut());
    }
    this.#gathering.delete(partition);
  }

  readonly #gathering = new Map<number, GatheredAppend[]>();
  readonly #sending = new Set<number>();

  #sendGathered(partition: number): void {
    const waiting = this.#gathering.get(partition) ?? [];
    const batch = takeBatch(waiting);
    if (batch.length === 0) {
      return;
    }
    if (waiting.length === 0) {
      this.#gathering.delete(partition);
    }
    const keys = this.keys(partition);
    const live = this.liveScriptArgs(partition);
    const scriptKeys = [keys.stream, ...live.keys, partitionCountKey(this.namespace)];
    const sent: GatheredAppend[] = [];
    const requests: EncodedAppend[] = [];
    for (const item of batch) {
      if (item.deadline - performance.now() < MIN_TIME_TO_SEND_MS) {
        // It waited out nearly all of its time behind the call before it, on a stalled Redis:
        // refused unsent rather than sent to wait the whole command timeout again.
        item.reject(commandTimedOut());
        continue;
      }
      // A request that cannot be encoded fails alone, before anything is sent.
      try {
        const encoded = encodeAppend(item.request, keys, scriptKeys.length + 1);
        scriptKeys.push(...encoded.keys);
        requests.push(encoded.payload);
        sent.push(item);
      } catch (err) {
        item.reject(err);
      }
    }
    if (sent.length === 0) {
      this.#sendGathered(partition);
      return;
    }
    this.#sending.add(partition);
    // Through a promise constructor, so even a synchronous throw reaches the handlers below and
    // the partition's next batch is still sent.
    new Promise<string[][]>((resolve) =>
      resolve(
        this.#redis.outpostAppend(
          scriptKeys.length,
          ...scriptKeys,
          JSON.stringify(requests),
          ...live.args,
          String(this.partitions),
        ),
      ),
    )
      .then(
        (replies) => {
          const [refusal] = replies;
          if (refusal?.[0] === 'count_moved') {
            const moved = new PartitionCountMovedError(Number(refusal[1]), this.partitions);
            for (const { reject } of sent) {
              reject(moved);
            }
            return;
          }
          for (const [i, { resolve, reject }] of sent.entries()) {
            const reply = replies[i];
            if (reply === undefined || reply[0] === 'failed') {
              reject(new Error(`append failed in Redis: ${reply?.[1] ?? 'no reply'}`));
            } else {
              resolve(reply);
            }
          }
        },
        (err: unknown) => {
          for (const { reject } of sent) {
            reject(err);
          }
          if (isCommandTimeout(err)) {
            // Redis left the call unanswered for the whole timeout: those that waited behind it
            // would be sent to wait it out again.
            this.#refuseWaiting(partition);
          }
        },
      )
      .finally(() => {
        this.#sending.delete(partition);
        this.#sendGathered(partition);
      });
  }

  /**
   * Unacknowledged events of one aggregate, oldest first. Without its type (a read by id alone),
   * the index of every type is asked: only one holds the aggregate. An earlier build's one-hash
   * index is asked too: it holds what such a build appended after this process folded it in.
   */
  async readInflight(
    aggregateId: string,
    partition: number,
    aggregateType?: AggregateType,
  ): Promise<LogEntry[]> {
    return (await this.readInflightMany([aggregateId], partition, aggregateType))[0] ?? [];
  }

  /**
   * `readInflight` for many aggregates of one partition, in the order given: a script call per
   * few hundred aggregates, not one each, and never one so long that it holds Redis up.
   */
  async readInflightMany(
    aggregateIds: readonly string[],
    partition: number,
    aggregateType?: AggregateType,
    { upToUndecodable = false }: { upToUndecodable?: boolean } = {},
  ): Promise<LogEntry[][]> {
    const keys = this.keys(partition);
    const types = aggregateType ? [aggregateType] : AGGREGATE_TYPES;
    const replies = await withinCommandTimeout(() =>
      Promise.all(
        chunksOf(aggregateIds, INFLIGHT_READ_CHUNK).map((ids) => {
          const indexes = ids.flatMap((id) =>
            types.flatMap((type) => [keys.inflight(type, id), keys.legacyInflightIndex(type)]),
          );
          return this.#redis.outpostReadInflight(
            indexes.length + 1,
            keys.stream,
            ...indexes,
            String(types.length * 2),
            ...ids,
          );
        }),
      ),
    );
    return replies.flat().map((raw) => inStreamOrder(raw, upToUndecodable));
  }

  /**
   * Aggregates of a type with unacknowledged events: the fields of its buckets in use (and of an
   * earlier build's one hash). Partitions are asked at once, so on the auto-pipelined connection
   * this is two round trips however many there are. With `creation`, only those that may match a
   * filter on a field their creation event sets (see inflight-may-match.lua), searched in Redis one
   * bucket a call.
   */
  async inflightAggregateIds(
    aggregateType: string,
    creation?: CreationFilter,
  ): Promise<{ id: string; partition: number }[]> {
    // The earlier build's hash first: an aggregate the upgrade moves meanwhile is then seen
    // there, or in a bucket the set already names. Raced: a list is a read, and its first calls
    // are the ones that meet a Redis stalled before it was asked.
    const firstLook = await withinCommandTimeout(() =>
      Promise.all(
        this.allKeys().map(async (keys) => {
          const [earlier, inUse] = await Promise.all([
            this.#redis.hkeys(keys.legacyInflightIndex(aggregateType)),
            this.#redis.smembers(keys.inflightBucketsInUse(aggregateType)),
          ]);
          return { keys, earlier, inUse };
        }),
      ),
    );
    const perPartition = await Promise.all(
      firstLook.map(async ({ keys, earlier, inUse }) => {
        const buckets = inUse.map((bucket) => keys.inflightBucket(aggregateType, Number(bucket)));
        // A filtered list's search takes one bucket a call: about a hundred aggregates with
        // 200,000 units pending, each an XRANGE and a string search (≈ 4 µs), so a call does not
        // hold Redis up for long even while a backlog of a million grows the buckets.
        const inBuckets = await Promise.all(
          buckets.map((bucket) =>
            creation
              ? this.#redis.outpostInflightMayMatch(
                  2,
                  keys.stream,
                  bucket,
                  creation.type,
                  String(creation.version),
                  creation.needle,
                )
              : this.#redis.hkeys(bucket),
          ),
        );
        // An aggregate is in a bucket and an earlier build's hash while the upgrade folds it in.
        return [...new Set([...earlier, ...inBuckets.flat()])].map((id) => ({
          id,
          partition: keys.partition,
        }));
      }),
    );
    return perPartition.flat();
  }

  async entryIdOfEvent(eventId: string, partition: number): Promise<string | null> {
    const keys = this.keys(partition);
    // Both asked at once (one round trip on the auto-pipelined connection): the old one-hash
    // index holds what an earlier build appended after this process folded it in.
    const [inBucket, inLegacy] = await withinCommandTimeout(() =>
      Promise.all([
        this.#redis.hget(keys.eventIndex(eventId), eventId),
        this.#redis.hget(keys.legacyEventIndex, eventId),
      ]),
    );
    return inBucket ?? inLegacy;
  }

  /** Which of these events of one partition are still unacknowledged (in the event index). */
  async unacknowledged(eventIds: readonly string[], partition: number): Promise<boolean[]> {
    const entryIds = await Promise.all(eventIds.map((id) => this.entryIdOfEvent(id, partition)));
    return entryIds.map((entryId) => entryId !== null);
  }

  /** One entry as it lies in the stream, decodable by this build or not. */
  async readRawEntry(entryId: string, partition: number): Promise<RawEntry | undefined> {
    const found = (await this.#redis.xrange(
      this.keys(partition).stream,
      entryId,
      entryId,
    )) as RawEntry[];
    return found[0];
  }

  /**
   * Queues applied entries for the acker with their commit LSN, and publishes `live` (their
   * `applied` messages, when the site has live clients) in the same transaction. Answers how many
   * of those messages could not be published; a failure to record rejects.
   */
  async recordApplied(
    partition: number,
    records: readonly AppliedRecord[],
    live: readonly LiveMessage[] = [],
  ): Promise<number> {
    if (records.length === 0) {
      return 0;
    }
    const keys = this.keys(partition);
    return this.#redis.outpostRecordApplied(
      3,
      keys.applied,
      keys.appliedLsn,
      this.#liveKeys[0],
      String(records.length),
      ...records.map(formatApplied),
      ...records.flatMap((r) => [r.entryId, r.lsn]),
      String(this.liveMaxLen),
      ...live.map(encodeLive),
    );
  }

  /**
   * Which of these aggregates are blocked behind a dead letter: their events not yet applied will
   * follow it into the dead letters. The projector asks only when its read found the partition's
   * blocked set non-empty (the SCARD it sends with each read).
   */
  async blocked(partition: number, aggregateIds: readonly string[]): Promise<Set<string>> {
    if (aggregateIds.length === 0) {
      return new Set();
    }
    const key = this.keys(partition).blockedAggregates;
    const flags = (await this.#redis.call('SMISMEMBER', key, ...aggregateIds)) as number[];
    return new Set(aggregateIds.filter((_, i) => flags[i] === 1));
  }

  /**
   * The highest commit LSN of the events acknowledged in any partition: a replica that has
   * replayed less does not show all of them, though they are no longer held in flight. Undefined
   * before the first acknowledgement, or once forgotten.
   */
  async acknowledgedThrough(): Promise<Lsn | undefined> {
    const marks = await Promise.all(
      this.allKeys().map((keys) => this.#redis.get(keys.acknowledgedThrough)),
    );
    let highest: Lsn | undefined;
    for (const mark of marks) {
      const lsn = mark === null ? undefined : BigInt(`0x${mark}`);
      if (lsn !== undefined && (highest === undefined || lsn > highest)) {
        highest = lsn;
      }
    }
    return highest;
  }

  /**
   * Forgets how far the events of these partitions (all, by default) were acknowledged: the main
   * database lost commits (restored from an earlier backup, failed over), and its WAL, which a
   * replica then follows, starts again below them.
   */
  async forgetAcknowledgedThrough(
    partitions: readonly number[] = this.allKeys().map((k) => k.partition),
  ): Promise<void> {
    // One key per call: the partitions' keys lie in different hash slots.
    await Promise.all(
      partitions.map((partition) => this.#redis.del(this.keys(partition).acknowledgedThrough)),
    );
  }

  /** The commit LSN of an applied, unacknowledged entry. */
  async appliedLsnOf(entryIds: readonly string[], partition: number): Promise<(string | null)[]> {
    if (entryIds.length === 0) {
      return [];
    }
    return this.#redis.hmget(this.keys(partition).appliedLsn, ...entryIds);
  }

  /** The oldest applied records waiting for the replica, in commit order. */
  async peekApplied(partition: number, count: number): Promise<AppliedRecord[]> {
    const records = await this.#redis.lrange(this.keys(partition).applied, 0, count - 1);
    return records.map(parseApplied);
  }

  /**
   * XACKs a prefix of the applied queue and drops its entries from the read indexes. Answers how
   * many of `records`, from the first, it settled: fewer when another acker got there first.
   */
  async ack(partition: number, records: readonly AppliedRecord[]): Promise<number> {
    if (records.length === 0) {
      return 0;
    }
    const keys = this.keys(partition);
    const recordKeys = records.flatMap((r) => [
      keys.inflight(r.aggregateType, r.aggregateId),
      keys.eventIndex(r.eventId),
      keys.legacyInflightIndex(r.aggregateType),
      keys.inflightBucketsInUse(r.aggregateType),
    ]);
    const allKeys = [
      keys.stream,
      keys.legacyEventIndex,
      keys.applied,
      keys.appliedLsn,
      keys.attempts,
      keys.acknowledgedThrough,
      ...recordKeys,
    ];
    return this.#redis.outpostAck(
      allKeys.length,
      ...allKeys,
      CONSUMER_GROUP,
      ...records.map(formatApplied),
    );
  }

  /**
   * Takes records off the head of the applied queue without acknowledging their entries, so the
   * projector applies them again: for events the main database no longer has. The number taken.
   */
  async forgetApplied(partition: number, records: readonly AppliedRecord[]): Promise<number> {
    if (records.length === 0) {
      return 0;
    }
    const keys = this.keys(partition);
    return this.#redis.outpostForgetApplied(
      2,
      keys.applied,
      keys.appliedLsn,
      ...records.map(formatApplied),
    );
  }

  /**
   * Takes the records of these entries out of the applied queue, wherever they stand, without
   * acknowledging the entries: for events found missing from the main database by the projector,
   * which applies them again. The number taken.
   */
  async forgetAppliedEntries(partition: number, entryIds: readonly string[]): Promise<number> {
    if (entryIds.length === 0) {
      return 0;
    }
    const keys = this.keys(partition);
    return this.#redis.outpostForgetAppliedEntries(2, keys.applied, keys.appliedLsn, ...entryIds);
  }

  /**
   * Counts a failed attempt at an entry; its attempts so far. Given `consumer`, only while that
   * consumer holds the entry: undefined, counting nothing, once another does or none.
   */
  async recordAttempt(
    partition: number,
    entryId: string,
    error: string,
    consumer = '',
  ): Promise<Attempt[] | undefined> {
    const keys = this.keys(partition);
    const history = attemptsOf((await this.#redis.hget(keys.attempts, entryId)) ?? undefined);
    history.push({ at: new Date().toISOString(), error });
    // Past maxmemory too: an event that fails on its data must still reach the dead letters, or
    // it would hold its partition until the log had room again.
    const counted = await this.#redis.outpostRecordAttempt(
      2,
      keys.attempts,
      keys.stream,
      entryId,
      JSON.stringify(history),
      CONSUMER_GROUP,
      consumer,
    );
    return counted === null ? undefined : history;
  }

  async pendingCount(partition: number): Promise<number> {
    const summary = (await this.#redis.xpending(this.keys(partition).stream, CONSUMER_GROUP)) as [
      number,
      ...unknown[],
    ];
    return Number(summary[0]);
  }

  async streamLength(partition: number): Promise<number> {
    return this.#redis.xlen(this.keys(partition).stream);
  }

  get redis(): Redis {
    return this.#redis;
  }

  /**
   * Sets `key` to `value` for `seconds` while it still holds `held` or is gone, never over what
   * another holder set since. False when another holder has it.
   */
  async holdKey(key: string, held: string, value: string, seconds: number): Promise<boolean> {
    return (await this.#redis.outpostHoldKey(1, key, held, value, String(seconds))) === 1;
  }

  /**
   * Lists a process in the site's roster under its partition count, taking that count as the
   * site's if no listed process runs with another (scripts/partition-count.lua).
   */
  listProcess(listing: {
    found: string;
    member: string;
    listedMs: number;
  }): Promise<RosterOutcome> {
    // Taking a change of count, the log under the count found must hold nothing still to apply.
    const changing = listing.found !== '' && Number(listing.found) !== this.partitions;
    const held = changing
      ? new EventLog(this.#redis, this.namespace, Number(listing.found))
          .allKeys()
          .flatMap((keys) => [keys.stream, keys.deadLetters])
      : [];
    return this.#redis.outpostPartitionCount(
      2 + held.length,
      partitionCountKey(this.namespace),
      processRosterKey(this.namespace),
      ...held,
      String(this.partitions),
      listing.found,
      listing.member,
      String(listing.listedMs),
      CONSUMER_GROUP,
    );
  }

  /**
   * Trims a partition's acknowledged entries below `edge` (an entry id), never one pending or not
   * yet delivered, and moves its trimmed-through mark forward over them; the number removed.
   */
  async trimBelow(partition: number, edge: string): Promise<number> {
    const keys = this.keys(partition);
    return this.#redis.outpostTrim(2, keys.stream, keys.trimmedThrough, CONSUMER_GROUP, edge);
  }

  /**
   * Queues on `pipeline` the count of a partition's entries the projector group has yet to be
   * delivered, and the group's last delivered id: [0, '0-0'] without the group. Redis's own lag
   * can be unknown or stale after a restart (scripts/undelivered.lua); this is never less than
   * what waits, and exact once the group has caught up.
   */
  undeliveredIn(pipeline: ChainableCommander, partition: number): void {
    void (pipeline as ChainableCommander & Pick<Commands, 'outpostUndelivered'>).outpostUndelivered(
      1,
      this.keys(partition).stream,
      CONSUMER_GROUP,
      String(UNDELIVERED_COUNT_LIMIT),
    );
  }

  /**
   * Up to `count` entries of `partition`'s stream from `from` to `to` (XRANGE's forms), with the
   * mark of what trimming has removed, read in one step (scripts/replay-page.lua).
   */
  async pageWithTrimMark(
    partition: number,
    from: string,
    to: string,
    count: number,
  ): Promise<[RawEntry[], string | null]> {
    const keys = this.keys(partition);
    return this.#redis.outpostReplayPage(
      2,
      keys.stream,
      keys.trimmedThrough,
      from,
      to,
      String(count),
    );
  }

  /** Deletes `key` only while it holds `held`: a holder never frees what another holder set. */
  async releaseKey(key: string, held: string): Promise<boolean> {
    return (await this.#redis.outpostReleaseClaim(1, key, held)) === 1;
  }
}
