import { createHash, randomBytes, randomInt } from 'node:crypto';
import { v7 as uuidv7 } from 'uuid';

/**
 * Every id Outpost generates is a UUIDv7 whose last 32 random bits also name its partition
 * (`tail mod partitions`). Any process can then find an aggregate's stream from its id alone,
 * with no lookup table that would span Redis Cluster slots, and the ids of a unit's files and
 * packages are minted in the unit's partition so the whole tree stays in order on one stream.
 */
export type Uuid = string & { readonly __brand: 'Uuid' };

// Both cases spelt out rather than flagged /i: the OpenAPI document carries this pattern without
// its flags, and would call an upper-case id that this API takes invalid.
export const UUID_PATTERN =
  /^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$/;
const TAIL_RANGE = 0x1_0000_0000;

export const isUuid = (value: string): value is Uuid => UUID_PATTERN.test(value);

/** A UUID as PostgreSQL writes one back: hyphenated, lower case. */
export const isCanonicalUuid = (value: string): value is Uuid =>
  isUuid(value) && !/[A-F]/.test(value);

export const partitionOf = (id: string, partitions: number): number =>
  Number.parseInt(id.slice(-8), 16) % partitions;

/** Random bytes drawn in bulk: one syscall per 256 ids instead of two per id. */
const POOL_SIZE = 16 * 256;
let pool = randomBytes(POOL_SIZE);
let offset = 0;
const nextRandom = (): Buffer => {
  if (offset + 16 > POOL_SIZE) {
    pool = randomBytes(POOL_SIZE);
    offset = 0;
  }
  offset += 16;
  return pool.subarray(offset - 16, offset);
};

/**
 * The last id's millisecond and 31-bit counter (RFC 9562's method 1, as uuid's v7 keeps it when
 * given no options, which it is not here): ids minted in one millisecond by one process ascend,
 * so a request's files are listed in `ids[]` order, and an id minted after a list's cursor sorts
 * after it. A clock that steps back keeps the last millisecond.
 */
const v7State = { msecs: Number.NEGATIVE_INFINITY, seq: 0 };

const nextV7Position = (random: Buffer): { msecs: number; seq: number } => {
  const now = Date.now();
  if (now > v7State.msecs) {
    v7State.msecs = now;
    v7State.seq = random.readUInt32BE(6) & 0x7fffffff;
  } else {
    v7State.seq = (v7State.seq + 1) | 0;
    if (v7State.seq === 0) {
      v7State.msecs += 1;
    }
  }
  return { ...v7State };
};

export const newIdInPartition = (partition: number, partitions: number): Uuid => {
  const random = nextRandom();
  const id = uuidv7({ random, ...nextV7Position(random) });
  let tail = random.readUInt32BE(12) % TAIL_RANGE;
  tail = tail - (tail % partitions) + partition;
  if (tail >= TAIL_RANGE) {
    tail -= partitions;
  }
  return `${id.slice(0, -8)}${tail.toString(16).padStart(8, '0')}` as Uuid;
};

/**
 * The partition of an idempotency scope, from its SHA-256 in hex: where its key is claimed, and
 * where a new root created under it is minted. Its first 32 bits, so it can be told again from a
 * stored key's name when the partition count changes.
 */
export const partitionOfScopeHash = (scopeHash: string, partitions: number): number =>
  Number.parseInt(scopeHash.slice(0, 8), 16) % partitions;

/** A partition chosen from a stable text (an idempotency scope), so retries land together. */
export const partitionForText = (text: string, partitions: number): number =>
  partitionOfScopeHash(createHash('sha256').update(text).digest('hex'), partitions);

export const randomPartition = (partitions: number): number => randomInt(partitions);
