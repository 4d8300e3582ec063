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

/**
 * Redis's own refusal of every write, whatever the memory: `MISCONF` after a failed save (its
 * append-only file or a snapshot could not be written: a full disk, say), `READONLY` when it is
 * a replica, `NOREPLICAS` when fewer replicas than its min-replicas-to-write are connected. Its
 * message is kept: it names the cause.
 */
export const writeRefusal = (err: unknown): string | undefined => {
  const message = (err as Error | undefined)?.message;
  // From its code on: the append path wraps the refusal of one request in a reply of its own.
  return typeof message === 'string'
    ? /\b(?:MISCONF|READONLY|NOREPLICAS) [\s\S]*$/.exec(message)?.[0]
    : undefined;
};

/** Why a write is refused when Redis refuses every write, for the client and the operator. */
export const writeRefusedReason = (refusal: string): string =>
  refusal.startsWith('READONLY')
    ? `the local log refuses writes: REDIS_URL names a read-only replica (${refusal}); point it at the primary`
    : refusal.startsWith('NOREPLICAS')
      ? `the local log refuses writes: Redis has fewer replicas connected than its min-replicas-to-write (${refusal}); reconnect them or lower the setting`
      : `the local log cannot save writes: Redis refuses them (${refusal}); free disk space on Redis's volume (then \`redis-cli BGSAVE\` if a snapshot failed): writes resume once Redis saves again`;

/**
 * A script that writes nothing but is not flagged read-only: Redis refuses to run it as it
 * refuses a write, with the same error (and, flagged allow-oom, not for memory, which has its own
 * answer). One round trip, nothing appended to the log or its file.
 */
const WRITE_PROBE = '#!lua flags=allow-oom\nreturn 1';

/** Redis's refusal of writes, or undefined while it takes them. */
export const probeWriteRefusal = async (redis: Redis): Promise<string | undefined> => {
  try {
    await redis.eval(WRITE_PROBE, 0);
    return undefined;
  } catch (err) {
    const refusal = writeRefusal(err);
    if (refusal === undefined) {
      throw err;
    }
    return refusal;
  }
};

const mb = (bytes: number) => (bytes / (1024 * 1024)).toFixed(1);

// Down, not to the nearest: 94.6 % must not read as the 95 % at which writes are refused.
const percentOf = (memory: LogMemory) =>
  (Math.floor(logMemoryRatio(memory) * 1000) / 10).toFixed(1);

/** Why a write is refused, for the client and the operator alike. */
export const logFullReason = (memory: LogMemory | undefined): string =>
  memory && memory.maxBytes > 0
    ? `the local log is full: Redis holds ${mb(memory.usedBytes)} MB of its ${mb(memory.maxBytes)} MB maxmemory, ${percentOf(memory)} % (the last ${DRAIN_RESERVE * 100} % is kept for the backlog to drain); writes resume once it has room again: raise maxmemory`
    : 'the local log is full: Redis refuses writes at its maxmemory; writes resume once it has room again: raise maxmemory';

/**
 * Why the log has no room for writes now, or undefined. Memory that cannot be read (INFO denied by
 * an ACL, say) refuses nothing, as the API's check does.
 */
export const logFullNow = async (redis: Redis): Promise<string | undefined> => {
  const memory = await readLogMemory(redis).catch(() => undefined);
  return memory !== undefined && isLogFull(memory) ? logFullReason(memory) : undefined;
};

/** How long Redis answers READONLY before its connection is made again, and how often after. */
export const READONLY_RECONNECT_MS = 5_000;

/**
 * A primary demoted behind the address Outpost reaches it by (a failover under a DNS name or a
 * virtual IP, without Sentinel, which would have closed its clients) answers READONLY on the
 * connection Outpost holds for as long as that stays open; a new connection reaches whatever the
 * address names now. Made again only once READONLY has lasted a while, and then at that pace:
 * the commands out when a connection is made again fail, so a REDIS_URL naming a replica by
 * mistake is not reconnected under every write, and a start-up that meets READONLY keeps its
 * connection to say so. Not through ioredis's reconnectOnError: the append script's refusals come
 * back inside its reply, where ioredis does not see them, and it would reconnect at every one.
 */
export class ReadOnlyWatch {
  #since: number | undefined;
  #lastReconnect = Number.NEGATIVE_INFINITY;

  /** Whether to make the connection again now, given what the write probe answered. */
  reconnectNow(refusal: string | undefined, nowMs: number): boolean {
    if (!refusal?.startsWith('READONLY')) {
      this.#since = undefined;
      return false;
    }
    this.#since ??= nowMs;
    if (
      nowMs - this.#since < READONLY_RECONNECT_MS ||
      nowMs - this.#lastReconnect < READONLY_RECONNECT_MS
    ) {
      return false;
    }
    this.#lastReconnect = nowMs;
    return true;
  }
}

/**
 * The write path's view of the log, looked at every second off the request path: an INFO, a
 * CONFIG GET and a write probe a second, not one a write. A burst within that second may take some
 * of the reserve, which is what it is sized for. A projector-only process runs it too, for the
 * probe's reconnect after a failover (ReadOnlyWatch).
 */
export class LogCapacity {
  readonly #redis: Redis;
  readonly #intervalMs: number;
  readonly #persistenceRefusal: () => Promise<string | undefined>;
  #memory: LogMemory | undefined;
  #unsafe: string | undefined;
  readonly #readOnly = new ReadOnlyWatch();
  #timer: NodeJS.Timeout | undefined;

  /**
   * `persistenceRefusal`: why Redis's settings now would not keep a 201 through a crash
   * (durability.ts), or undefined while they would.
   */
  constructor(
    redis: Redis,
    persistenceRefusal: () => Promise<string | undefined>,
    intervalMs = 1_000,
  ) {
    this.#redis = redis;
    this.#persistenceRefusal = persistenceRefusal;
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

  /** Why Redis's settings last seen would not keep a write through a crash, else undefined. */
  get unsafe(): string | undefined {
    return this.#unsafe;
  }

  /** Looks again now (after Redis refused a write for memory, say). A failed look keeps the last. */
  refresh(): void {
    probeWriteRefusal(this.#redis).then(
      (refusal) => {
        // Not once stopped: the process is closing this connection.
        if (this.#timer !== undefined && this.#readOnly.reconnectNow(refusal, performance.now())) {
          this.#redis.disconnect(true);
        }
      },
      () => undefined,
    );
    readLogMemory(this.#redis).then(
      (memory) => {
        this.#memory = memory;
      },
      () => undefined,
    );
    this.#persistenceRefusal().then(
      (refusal) => {
        this.#unsafe = refusal;
      },
      () => undefined,
    );
  }
}
