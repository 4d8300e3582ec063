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
