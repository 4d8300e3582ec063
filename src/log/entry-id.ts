/** Stream entry ids (`<ms>-<seq>`) compared as the pairs of integers they are, never as text. */
export type EntryId = readonly [ms: bigint, seq: bigint];

export const parseEntryId = (id: string): EntryId => {
  const match = /^(\d+)(?:-(\d+))?$/.exec(id);
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

export const entryIdAt = (ms: number): string => `${Math.max(0, Math.floor(ms))}-0`;
