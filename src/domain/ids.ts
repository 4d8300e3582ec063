import { createHash, randomInt } from 'node:crypto';
import { v7 as uuidv7 } from 'uuid';

/**
 * Every id Outpost generates is a UUIDv7 whose last 32 random bits also name its partition
 * (`tail mod partitions`). Any process can then find an aggregate's stream from its id alone,
 * with no lookup table that would span Redis Cluster slots, and the ids of a unit's files and
 * packages are minted in the unit's partition so the whole tree stays in order on one stream.
 */
export type Uuid = string & { readonly __brand: 'Uuid' };

const UUID_PATTERN = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const TAIL_RANGE = 0x1_0000_0000;

export const isUuid = (value: string): value is Uuid => UUID_PATTERN.test(value);

export const partitionOf = (id: string, partitions: number): number =>
  Number.parseInt(id.slice(-8), 16) % partitions;

export const newIdInPartition = (partition: number, partitions: number): Uuid => {
  const id = uuidv7();
  let tail = randomInt(TAIL_RANGE);
  tail = tail - (tail % partitions) + partition;
  if (tail >= TAIL_RANGE) {
    tail -= partitions;
  }
  return `${id.slice(0, -8)}${tail.toString(16).padStart(8, '0')}` as Uuid;
};

/** A partition chosen from a stable text (an idempotency scope), so retries land together. */
export const partitionForText = (text: string, partitions: number): number =>
  createHash('sha256').update(text).digest().readUInt32BE(0) % partitions;

export const randomPartition = (partitions: number): number => randomInt(partitions);
