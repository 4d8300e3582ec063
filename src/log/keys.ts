/**
 * Every Redis key Outpost uses is built here. Keys of one partition share the hash tag `{p<N>}`,
 * so a Redis Cluster would keep a partition's stream and its indexes on one slot (the live feed's
 * keys are the scripts' one exception, see `liveStreamKey`).
 */
export const CONSUMER_GROUP = 'projector';

export type PartitionKeys = {
  partition: number;
  /** The append-only log of the partition; consumer group `projector`. */
  stream: string;
  /**
   * event_id -> entry id for events not yet acknowledged (GET /events/{id}), spread over
   * EVENT_INDEX_BUCKETS small hashes by the event id (see eventIndexBucket).
   */
  eventIndex: (eventId: string) => string;
  /** Earlier builds' event index, one hash per partition: read, emptied and folded in at start. */
  legacyEventIndex: string;
  /** Applied, not yet replica-confirmed entries, in commit (and so LSN) order: the acker's queue. */
  applied: string;
  /** entry id -> commit LSN of applied, not yet acknowledged entries. */
  appliedLsn: string;
  /**
   * The highest commit LSN of the entries acknowledged so far, as sixteen hex digits: what a
   * replica must have replayed to show all of them (src/read/acknowledged-replay.ts).
   */
  acknowledgedThrough: string;
  /** Moved-aside events that failed N times, with their error and attempt history. */
  deadLetters: string;
  /** event_id -> dead-letter entry id. */
  deadIndex: string;
  /** Aggregates with a dead-lettered event: their later events follow it to the dead letters. */
  blockedAggregates: string;
  /** Audit records of discarded dead letters. */
  discarded: string;
  /** The newest entry id trimming has removed from the stream: replays before it are cut short. */
  trimmedThrough: string;
  /**
   * The newest entry id the stream held when its consumer group was created again from its first
   * entry (the group lost, its stream kept): up to it, entries acknowledged before are delivered a
   * second time, and those an operator discarded from the dead letters must not apply then.
   */
  redeliveredThrough: string;
  /** Attempts per entry id, for entries whose application failed on data. */
  attempts: string;
  /**
   * The in-flight index of an aggregate type, spread over INFLIGHT_BUCKETS small hashes by the
   * aggregate id: aggregate id -> its unacknowledged entry ids in stream order (space-separated).
   * The merged read's and the merged list's input. This is the bucket of `aggregateId`.
   */
  inflight: (aggregateType: string, aggregateId: string) => string;
  /** A bucket of a type's in-flight index by its number. */
  inflightBucket: (aggregateType: string, bucket: number) => string;
  /**
   * The entry ids of an aggregate with too many pending entries to keep in its bucket's field
   * (which then reads `spilled`), as a list. The scripts name it from the bucket's key
   * (scripts/lib/inflight.lua); this is the same name, for tests and for reading by hand.
   */
  inflightList: (aggregateType: string, aggregateId: string) => string;
  /**
   * The numbers of a type's in-flight buckets that hold anything, kept by the scripts that fill
   * and empty them: the merged list reads those buckets, not all INFLIGHT_BUCKETS.
   */
  inflightBucketsInUse: (aggregateType: string) => string;
  /** Earlier builds' in-flight index, one hash per type: read, emptied and folded in at start. */
  legacyInflightIndex: (aggregateType: string) => string;
  /** Older builds' layout (a list per aggregate, a set per type), folded in by ensureGroups. */
  legacyInflight: (aggregateId: string) => string;
  legacyInflightAggregates: (aggregateType: string) => string;
  /** The status of an executed obs unit, for atomic finish/patch checks in the append script. */
  unitState: (unitId: string) => string;
  /** A guarded request's entry ids by its first event id, for a minute: see append.lua. */
  guardedRun: (firstEventId: string) => string;
  idempotency: (scopeHash: string) => string;
  /**
   * The request hash a key was first sent with, kept in the key's own partition whichever
   * partition the request went to (see EventLog.append): the record lives beside its stream.
   */
  idempotencyClaim: (scopeHash: string) => string;
};

/**
 * Buckets of the event index per partition. Redis keeps a hash of up to 128 short fields as a
 * listpack, ≈ 60 bytes a field, against ≈ 120 in the hashtable one large hash becomes; with 1,024
 * buckets a partition stays compact up to ≈ 130,000 pending events (a million with 8 partitions).
 */
export const EVENT_INDEX_BUCKETS = 1024;

/**
 * Buckets of the in-flight index per partition and aggregate type, for the same reason as the
 * event index's (≈ 63 bytes a pending event as listpacks, ≈ 115 as one hashtable). Fewer than the
 * event index's, because the merged list reads every bucket of a type in use. With random ids
 * the first of a partition's 256 buckets passes 128 fields near 25,000 pending aggregates of one
 * type; an aggregate with more than four pending entries (a value over 64 bytes) also makes its
 * bucket a hashtable until the bucket empties.
 */
export const INFLIGHT_BUCKETS = 256;

const HEX3 = /^[0-9a-f]{3}$/i;

/**
 * An id's bucket out of `buckets`: three hex digits of its random part (characters 24-26, before
 * the last eight, which carry the partition), modulo `buckets`. Any text is accepted: an id
 * without hex there (one from elsewhere) goes to bucket 0.
 */
export const idBucket = (id: string, buckets: number): number => {
  const digits = id.slice(24, 27);
  return HEX3.test(digits) ? Number.parseInt(digits, 16) % buckets : 0;
};

export const eventIndexBucket = (eventId: string): number => idBucket(eventId, EVENT_INDEX_BUCKETS);

export const partitionKeys = (namespace: string, partition: number): PartitionKeys => {
  const prefix = `${namespace}:{p${partition}}`;
  // Earlier builds' one hash per type is named as the buckets are without their number.
  const inflightIndex = (aggregateType: string) => `${prefix}:inflight-ids:${aggregateType}`;
  const inflightBucket = (aggregateType: string, bucket: number) =>
    `${inflightIndex(aggregateType)}:${bucket}`;
  return {
    partition,
    stream: `${prefix}:events`,
    eventIndex: (eventId) => `${prefix}:event-index:${eventIndexBucket(eventId)}`,
    legacyEventIndex: `${prefix}:event-index`,
    applied: `${prefix}:applied`,
    appliedLsn: `${prefix}:applied-lsn`,
    acknowledgedThrough: `${prefix}:acknowledged-through`,
    deadLetters: `${prefix}:dead-letters`,
    attempts: `${prefix}:attempts`,
    deadIndex: `${prefix}:dead-index`,
    blockedAggregates: `${prefix}:blocked-aggregates`,
    discarded: `${prefix}:discarded`,
    trimmedThrough: `${prefix}:trimmed-through`,
    redeliveredThrough: `${prefix}:redelivered-through`,
    inflight: (aggregateType, aggregateId) =>
      inflightBucket(aggregateType, idBucket(aggregateId, INFLIGHT_BUCKETS)),
    inflightBucket,
    inflightList: (aggregateType, aggregateId) =>
      `${prefix}:inflight-list:${aggregateType}:${aggregateId}`,
    inflightBucketsInUse: (aggregateType) => `${prefix}:inflight-buckets:${aggregateType}`,
    legacyInflightIndex: inflightIndex,
    legacyInflight: (aggregateId) => `${prefix}:inflight:${aggregateId}`,
    legacyInflightAggregates: (aggregateType) => `${prefix}:inflight-aggregates:${aggregateType}`,
    unitState: (unitId) => `${prefix}:unit:${unitId}`,
    guardedRun: (firstEventId) => `${prefix}:guarded-run:${firstEventId}`,
    idempotency: (scopeHash) => `${prefix}:idem:${scopeHash}`,
    idempotencyClaim: (scopeHash) => `${prefix}:idem-claim:${scopeHash}`,
  };
};

/**
 * The site's live feed: one stream of state changes that every process reads without a group.
 * It belongs to no partition, so it carries no hash tag. The append and the applied record write
 * to it in the same call as the step they report, so the feed's order is the log's; that puts a
 * second slot into those calls, which Redis Cluster would refuse (see ADR 0007).
 */
export const liveStreamKey = (namespace: string) => `${namespace}:live`;

/** The partition count the site's log is written with (src/ops/partition-count.ts). */
export const partitionCountKey = (namespace: string) => `${namespace}:partitions`;

/** The OUTPOST_SITE the log was first served under (ops/site-name.ts). */
export const siteNameKey = (namespace: string) => `${namespace}:site`;

/** The log's own id, told apart from another site's log run under the same name (ops/site-name.ts). */
export const logIdKey = (namespace: string) => `${namespace}:log-id`;

/** `text` matched literally by a SCAN MATCH pattern. */
export const globEscaped = (text: string) => text.replace(/[*?[\]\\]/g, '\\$&');

/** The site's running processes with their partition counts (ops/partition-count.ts). */
export const processRosterKey = (namespace: string) => `${namespace}:processes`;

/** Exists while some process of the site has had a live client lately (LiveFeed). */
export const liveListenersKey = (namespace: string) => `${namespace}:live:listeners`;

/** Messages the live stream keeps, roughly: how far back a client can resume. */
export const DEFAULT_LIVE_MAX_LEN = 100_000;

/** The outcome of an admin action under one Idempotency-Key scope (not a partition's). */
export const adminIdempotencyKey = (namespace: string, scopeHash: string) =>
  `${namespace}:admin-idem:${scopeHash}`;

export const allPartitionKeys = (namespace: string, partitions: number): PartitionKeys[] =>
  Array.from({ length: partitions }, (_, partition) => partitionKeys(namespace, partition));
