import type { EventEmitter } from 'node:events';

export type BackoffOptions = { baseMs: number; capMs: number; random?: () => number };

/** Exponential backoff with full jitter: retries from many processes do not arrive in step. */
export class Backoff {
  #attempt = 0;
  readonly #options: Required<BackoffOptions>;

  constructor(options: BackoffOptions) {
    this.#options = { random: Math.random, ...options };
  }

  nextDelayMs(): number {
    const { baseMs, capMs, random } = this.#options;
    const ceiling = Math.min(capMs, baseMs * 2 ** this.#attempt);
    this.#attempt = Math.min(this.#attempt + 1, 30);
    return Math.round(ceiling / 2 + random() * (ceiling / 2));
  }

  reset(): void {
    this.#attempt = 0;
  }
}

/** The longest delay setTimeout takes; a longer one fires after 1 ms instead. */
const MAX_TIMEOUT_MS = 2 ** 31 - 1;

/**
 * A sleep that ends early when `signal` aborts, so shutdown never waits out a backoff. Sleeps
 * past 24.8 days (a monthly integrity schedule) go in steps setTimeout can take.
 */
export const pause = async (ms: number, signal: AbortSignal): Promise<void> => {
  let left = ms;
  while (left > MAX_TIMEOUT_MS && !signal.aborted) {
    await pauseOnce(MAX_TIMEOUT_MS, signal);
    left -= MAX_TIMEOUT_MS;
  }
  await pauseOnce(left, signal);
};

/** An ioredis client, as far as a pause needs it: whether it is ready, and its 'ready' event. */
type Connection = EventEmitter & { readonly status: string };

/**
 * `pause`, cut short once every one of `connections` (ioredis clients) is ready after one of
 * them connected again: a loop backing off from a Redis that was away starts again once it is
 * back, not up to its backoff's cap later, and not before all the connections its next try uses
 * are back. A connection that stayed up (a command timed out on a stalled Redis) is not made
 * again, so the pause runs its course there, as waking at once would only fail again. Plain
 * listeners on `signal`, removed after: `AbortSignal.any` on Node 20 leaves a reference behind
 * in a long-lived signal at every call, for as long as the process runs.
 */
export const pauseUnlessReconnected = async (
  ms: number,
  connections: readonly Connection[],
  signal: AbortSignal,
): Promise<void> => {
  if (signal.aborted) {
    return;
  }
  const ended = new AbortController();
  const end = () => ended.abort();
  const endIfAllReady = () => {
    if (connections.every((connection) => connection.status === 'ready')) {
      end();
    }
  };
  signal.addEventListener('abort', end, { once: true });
  for (const connection of connections) {
    connection.on('ready', endIfAllReady);
  }
  try {
    await pause(ms, ended.signal);
  } finally {
    signal.removeEventListener('abort', end);
    for (const connection of connections) {
      connection.off('ready', endIfAllReady);
    }
  }
};

const pauseOnce = (ms: number, signal: AbortSignal): Promise<void> =>
  new Promise((resolve) => {
    if (signal.aborted) {
      resolve();
      return;
    }
    const timer = setTimeout(done, ms);
    function done() {
      clearTimeout(timer);
      signal.removeEventListener('abort', done);
      resolve();
    }
    signal.addEventListener('abort', done, { once: true });
  });
