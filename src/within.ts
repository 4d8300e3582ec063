/**
 * What `work` answers, or the failure `timedOut` makes once `ms` have passed, whichever comes
 * first. The work is not called off: it may still finish, unheard. The timer neither outlives the
 * answer nor keeps the process alive.
 */
export const within = <T>(work: Promise<T>, ms: number, timedOut: () => Error): Promise<T> => {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(timedOut()), ms);
    timer.unref();
  });
  return Promise.race([work, late]).finally(() => clearTimeout(timer));
};
