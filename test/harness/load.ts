import type { HttpResult } from './harness.ts';

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

export type SteadyLoad = {
  /** Stops sending, waits for requests in flight (and their retries) and reports. */
  stop: () => Promise<{ accepted: Set<string>; failures: string[]; sent: number }>;
  accepted: () => number;
  /** Event ids answered 201 so far. */
  acceptedIds: () => ReadonlySet<string>;
  /** Stops sending and retrying at once: for a test that failed with its load still running. */
  abandon: () => void;
};

/**
 * How long a writer waits before retrying a refused write: a client's back-off, as an instrument's
 * would be, not a wait for some state (each retry asks again, and the write's deadline bounds it).
 */
const RETRY_BACKOFF_MS = 100;

type Post = (
  path: string,
  body: unknown,
  headers: Record<string, string>,
) => Promise<Pick<HttpResult, 'status' | 'body'> & { headers?: Headers }>;

/** The wait a 503 asks for (Retry-After, in seconds), within reason; else the usual back-off. */
const backoffAfter = (headers: Headers | undefined): number => {
  const seconds = Number(headers?.get('retry-after'));
  return Number.isFinite(seconds) && seconds > 0 ? Math.min(seconds, 5) * 1000 : RETRY_BACKOFF_MS;
};

/**
 * Writes at a steady rate, as an instrument would: each write carries its own Idempotency-Key and
 * is retried on 503 (after the Retry-After it names) or a refused connection until it is
 * accepted, so every write lands once.
 */
export const steadyLoad = (post: Post, ratePerSecond: number, label: string): SteadyLoad => {
  const accepted = new Set<string>();
  const failures: string[] = [];
  const inFlight = new Set<Promise<void>>();
  let sent = 0;
  let stopped = false;
  let abandoned = false;
  const write = async (n: number) => {
    const key = `${label}-${n}-${Math.random().toString(36).slice(2)}`;
    const deadline = Date.now() + 120_000;
    for (;;) {
      let backoffMs = RETRY_BACKOFF_MS;
      try {
        const result = await post(
          '/executed_obs_units/start',
          { obs_unit_id: `${label}-${n}`, instrument: 'load' },
          {
            'Idempotency-Key': key,
          },
        );
        if (result.status === 201) {
          accepted.add(result.body.event_id);
          return;
        }
        if (result.status !== 503 || Date.now() > deadline) {
          failures.push(`${result.status} ${JSON.stringify(result.body)}`);
          return;
        }
        backoffMs = backoffAfter(result.headers);
      } catch (err) {
        if (Date.now() > deadline) {
          failures.push(String(err));
          return;
        }
      }
      if (abandoned) {
        return;
      }
      await new Promise((resolve) => setTimeout(resolve, backoffMs));
    }
  };
  const timer = setInterval(
    () => {
      if (stopped) {
        return;
      }
      sent += 1;
      const request = write(sent).finally(() => inFlight.delete(request));
      inFlight.add(request);
    },
    Math.max(1, Math.round(1000 / ratePerSecond)),
  );
  return {
    accepted: () => accepted.size,
    acceptedIds: () => accepted,
    stop: async () => {
      stopped = true;
      clearInterval(timer);
      await Promise.all([...inFlight]);
      return { accepted, failures, sent };
    },
    abandon: () => {
      stopped = true;
      abandoned = true;
      clearInterval(timer);
    },
  };
};
