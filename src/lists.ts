/** Adds `items` to the list under `key`, in place, starting the list when there is none yet. */
export const appendTo = <K, V>(lists: Map<K, V[]>, key: K, items: readonly V[]): void => {
  const list = lists.get(key);
  if (list) {
    list.push(...items);
  } else {
    lists.set(key, [...items]);
  }
};
