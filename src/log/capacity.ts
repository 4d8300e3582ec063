import type { Redis } from 'ioredis';

/** Redis's memory and its limit, from INFO memory: `maxBytes` is 0 when maxmemory is not set. */
export type LogMemory = { usedBytes: number; maxBytes: number };

/**
 * The share of maxmemory new writes may not take. Draining the backlog writes too: the record of
 * each applied event that the acker waits for (about 100 B until acknowledged). A log that writes
 * had filled to its limit could not record what the projector applies, and stayed full after the
 * main database came back: every batch was applied, refused by Redis with OOM, and applied again
 * (deduplicated), and nothing was ever acknowledged.
 */
export const DRAIN_RESERVE = 0.05;

/**
 * From this share of maxmemory, projectors trim acknowledged entries younger than the retention,
 * oldest first: the history kept for replays gives way before new writes are refused.
 */
export const TRIM_FROM = 1 - 2 * DRAIN_RESERVE;

export const logMemoryOf = (info: string): LogMemory => ({
  usedBytes: Number(/^used_memory:(\d+)/m.exec(info)?.[1] ?? 0),
  maxBytes: Number(/^maxmemory:(\d+)/m.exec(info)?.[1] ?? 0),
});

export const readLogMemory = async (redis: Redis): Promise<LogMemory> =>
  logMemoryOf(await redis.info('memory'));

/** Whether a write now would eat into what the drain needs. */
export const isLogFull = ({ usedBytes, maxBytes }: LogMemory): boolean =>
  maxBytes > 0 && usedBytes >= maxBytes * (1 - DRAIN_RESERVE);

/** Whether acknowledged history should give way to keep room for writes. */
export const isLogPressed = ({ usedBytes, maxBytes }: LogMemory): boolean =>
  maxBytes > 0 && usedBytes >= maxBytes * TRIM_FROM;

/** Used memory as a share of maxmemory; 0 without a limit. */
export const logMemoryRatio = ({ usedBytes, maxBytes }: LogMemory): number =>
  maxBytes > 0 ? usedBytes / maxBytes : 0;

/** Redis's own refusal of a write for memory. */
export const isOutOfMemory = (err: unknown): boolean =>
  /\bOOM\b/.test((err as Error | undefined)?.message ?? '');

const mb = (bytes: number) => (bytes / (1024 * 1024)).toFixed(1);

/** Why a write is refused, for the client and the operator alike. */
export const logFullReason = (memory: LogMemory | undefined): string =>
  memory && memory.maxBytes > 0
    ? `the local log is full: Redis holds ${mb(memory.usedBytes)} MB of its ${mb(memory.maxBytes)} MB maxmemory (the last ${DRAIN_RESERVE * 100} % is kept for the backlog to drain); writes resume once it has room again: raise maxmemory`
    : 'the local log is full: Redis refuses writes at its maxmemory; writes resume once it has room again: raise maxmemory';

/**
 * The write path's view of the log's memory, looked at every second off the request path: one
 * INFO a second, not one a write. A burst within that second may take some of the reserve, which
 * is what it is sized for.
 */
export class LogCapacity {
  readonly #redis: Redis;
  readonly #intervalMs: number;
  #memory: LogMemory | undefined;
  #timer: NodeJS.Timeout | undefined;

  constructor(redis: Redis, intervalMs = 1_000) {
    this.#redis = redis;
    this.#intervalMs = intervalMs;
  }

  start(): void {
    this.#timer ??= setInterval(() => this.refresh(), this.#intervalMs).unref();
    this.refresh();
  }

  stop(): void {
    clearInterval(this.#timer);
    this.#timer = undefined;
  }

  /** The memory last seen when it leaves no room for writes, else undefined. */
  get full(): LogMemory | undefined {
    return this.#memory && isLogFull(this.#memory) ? this.#memory : undefined;
  }

  /** Looks again now (after Redis refused a write for memory, say). A failed look keeps the last. */
  refresh(): void {
    readLogMemory(this.#redis).then(
      (memory) => {
        this.#memory = memory;
      },
      () => undefined,
    );
  }
}
