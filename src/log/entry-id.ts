/** Stream entry ids (`<ms>-<seq>`) compared as the pairs of integers they are, never as text. */
export type EntryId = readonly [ms: bigint, seq: bigint];

const ENTRY_ID = /^(\d+)(?:-(\d+))?$/;
export const U64_MAX = 2n ** 64n - 1n;

/** The last id a stream can hold: nothing comes after it, so no range can start past it. */
export const LAST_ENTRY_ID = `${U64_MAX}-${U64_MAX}`;

/**
 * Whether Redis takes `text` as an entry id (`<ms>` or `<ms>-<seq>`, each at most 2^64 - 1): an id
 * that matches the pattern but not the bound makes the command fail, which would be a 500.
 */
export const isStreamEntryId = (text: string): boolean => {
  const match = ENTRY_ID.exec(text);
  return (
    match !== null && BigInt(match[1] as string) <= U64_MAX && BigInt(match[2] ?? 0) <= U64_MAX
  );
};

export const parseEntryId = (id: string): EntryId => {
  const match = ENTRY_ID.exec(id);
  if (!match) {
    throw new Error(`not a stream entry id: ${id}`);
  }
  return [BigInt(match[1] as string), BigInt(match[2] ?? 0)];
};

export const compareEntryIds = (a: string, b: string): number => {
  const [am, as] = parseEntryId(a);
  const [bm, bs] = parseEntryId(b);
  return am === bm ? Number(as - bs) : am < bm ? -1 : 1;
};

export const minEntryId = (ids: readonly string[]): string | undefined =>
  ids.reduce<string | undefined>(
    (min, id) => (min === undefined || compareEntryIds(id, min) < 0 ? id : min),
    undefined,
  );

/** Milliseconds since the epoch at which Redis accepted a stream entry, from its id. */
export const entryTime = (entryId: string): number => Number(entryId.split('-')[0]);

export const entryIdAt = (ms: number): string => `${Math.max(0, Math.floor(ms))}-0`;

/** Milliseconds since the epoch from a Redis TIME reply: the clock that names stream entries. */
export const timeMs = ([seconds, micros]: readonly (string | number)[]): number =>
  Number(seconds) * 1000 + Math.floor(Number(micros) / 1000);
