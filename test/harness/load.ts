/** Runs `work` over `items` with at most `width` in flight, keeping results in order. */
export const inBatches = async <T, R>(
  items: readonly T[],
  width: number,
  work: (item: T) => Promise<R>,
) => {
  const results: R[] = new Array(items.length);
  let next = 0;
  await Promise.all(
    Array.from({ length: width }, async () => {
      while (next < items.length) {
        const i = next++;
        results[i] = await work(items[i] as T);
      }
    }),
  );
  return results;
};
