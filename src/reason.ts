/**
 * ioredis's words for a command it would not send or gave up on, which name its options rather
 * than what happened; shown as they were in /health, the log and the CLI (drill 163), "Stream
 * isn't writeable" read as a fault of the Redis Stream at 3 a.m.
 */
const DRIVER_WORDS: [RegExp, string][] = [
  [
    /^Stream isn't writeable and enableOfflineQueue options is false$/,
    'no connection to Redis (reconnecting)',
  ],
  [
    /^Reached the max retries per request limit \(which is (\d+)\)\. Refer to "maxRetriesPerRequest" option for details\.$/,
    'no connection to Redis (the command failed on it and on $1 reconnects)',
  ],
];

const inPlainWords = (message: string): string => {
  for (const [words, plain] of DRIVER_WORDS) {
    if (words.test(message)) {
      return message.replace(words, plain);
    }
  }
  return message;
};

/**
 * An error's one-line reason. Node's connection attempts to a name with several addresses fail
 * with an AggregateError whose own message is empty: its attempts' messages say what happened.
 */
export const reasonOf = (err: unknown, fallback?: string): string => {
  const { message, code, errors } = (err ?? {}) as {
    message?: unknown;
    code?: unknown;
    errors?: unknown;
  };
  if (typeof message === 'string' && message !== '') {
    return inPlainWords(message);
  }
  const attempts = Array.isArray(errors) ? errors.map((e) => reasonOf(e, '')).filter(Boolean) : [];
  if (attempts.length > 0) {
    return [...new Set(attempts)].join('; ');
  }
  if (typeof code === 'string' && code !== '') {
    return code;
  }
  if (fallback !== undefined) {
    return fallback;
  }
  try {
    return String(err);
  } catch {
    // An object without a prototype has no toString.
    return 'unknown error';
  }
};

/**
 * An error met part-way through work that had already changed something: its message says what
 * was done before it, so that an operator reading it knows where things stand. `met` is the error
 * itself, by which callers tell what failed (the main database, the log).
 */
export class PartWayError extends Error {
  constructor(
    readonly done: string,
    readonly met: unknown,
  ) {
    super(`${reasonOf(met)} (${done})`, { cause: met });
    this.name = 'PartWayError';
  }
}

/** The error met, and what was done before it as a message's suffix (empty when nothing was). */
export const partsOf = (err: unknown): { met: unknown; done: string } =>
  err instanceof PartWayError ? { met: err.met, done: ` (${err.done})` } : { met: err, done: '' };

/**
 * `restate` applied to the error met: an error said in other words (an outage named for the
 * operator, an answer for a client) that keeps what was done before it, where `err` says.
 */
export const restated = async (
  err: unknown,
  restate: (met: unknown) => unknown | Promise<unknown>,
): Promise<unknown> => {
  if (!(err instanceof PartWayError)) {
    return restate(err);
  }
  const said = await restate(err.met);
  return said === err.met ? err : new PartWayError(err.done, said);
};
