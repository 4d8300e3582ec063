import type pg from 'pg';
import { type Lsn, parseLsn } from '../db/lsn.ts';
import { type ReplicaPosition, replicaPosition } from '../db/queries/replica.ts';
import type { LivePublisher } from '../live/live-message.ts';
import type { EventLog } from '../log/event-log.ts';
import type { Logger } from '../observability/logger.ts';
import type { Metrics } from '../observability/metrics.ts';
import { Backoff, pause } from '../projector/backoff.ts';
import { type CircuitBreaker, createDatabaseBreaker } from '../projector/circuit-breaker.ts';

export type AckerDeps = {
  replica: pg.Pool;
  replicaIsMain: boolean;
  eventLog: EventLog;
  intervalMs: number;
  logger: Logger;
  metrics: Metrics;
  /** The live feed: confirmed state changes are published to it. */
  live?: LivePublisher;
};

const ACK_BATCH = 1000;
/**
 * After a batch is applied, the replica usually replays it within a few milliseconds: poll this
 * often, this many times, rather than waiting out the interval. A replica that stays behind
 * falls back to the interval.
 */
const QUICK_POLL_MS = 2;
const QUICK_POLLS = 15;

/**
 * How long to wait after a pass, and how many quick polls are then left. A nudge that came while
 * the pass ran may be for records the pass looked for too early to see, so it counts as being
 * behind: otherwise they would wait out the whole interval.
 */
export const nextPoll = (pass: {
  behind: boolean;
  nudgedDuringPass: boolean;
  quickPolls: number;
  intervalMs: number;
}): { sleepMs: number; quickPolls: number } => {
  const quick = (pass.behind || pass.nudgedDuringPass) && pass.quickPolls > 0;
  return quick
    ? { sleepMs: Math.min(QUICK_POLL_MS, pass.intervalMs), quickPolls: pass.quickPolls - 1 }
    : { sleepMs: pass.intervalMs, quickPolls: 0 };
};

/** Milliseconds since the epoch at which Redis accepted a stream entry, from its id. */
export const entryTime = (entryId: string): number => Number(entryId.split('-')[0]);

/** A batch's records share one LSN text: parse each distinct text once per pass. */
const lsnParser = () => {
  let lastText = '';
  let last = 0n;
  return (text: string): Lsn => {
    if (text !== lastText) {
      last = parseLsn(text);
      lastText = text;
    }
    return last;
  };
};

/**
 * The LSN gate. An entry leaves the pending list only once the replica has replayed its commit:
 * acknowledging earlier would let a read miss a write that is neither pending nor visible.
 */
export class Acker {
  readonly #deps: AckerDeps;
  readonly #abort = new AbortController();
  readonly #backoff = new Backoff({ baseMs: 100, capMs: 5_000 });
  #running: Promise<void> | undefined;
  #lastPosition: ReplicaPosition | undefined;
  #lastError: string | undefined;
  #acked = 0;
  #passes = 0;
  /** Whether the last pass left entries the replica had not reached. */
  #behind = false;
  #quickPolls = 0;
  #nudged = false;
  #wake: (() => void) | undefined;
  readonly breaker: CircuitBreaker;

  constructor(deps: AckerDeps) {
    this.#deps = deps;
    this.breaker = createDatabaseBreaker('replica', deps.metrics.breakerState, deps.logger);
  }

  get lastPosition(): ReplicaPosition | undefined {
    return this.#lastPosition;
  }

  get lastError(): string | undefined {
    return this.#lastError;
  }

  get acked(): number {
    return this.#acked;
  }

  /** Completed passes that found entries waiting: lets tests wait for the gate to have acted. */
  get passes(): number {
    return this.#passes;
  }

  start(): void {
    this.#running ??= this.#run();
  }

  /** A batch was just recorded as applied: look at the replica now and keep looking closely. */
  nudge(): void {
    this.#quickPolls = QUICK_POLLS;
    this.#nudged = true;
    this.#wake?.();
  }

  /** Waits `ms`, or less when nudged or stopped. */
  #sleep(ms: number): Promise<void> {
    const { signal } = this.#abort;
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        signal.removeEventListener('abort', done);
        this.#wake = undefined;
        resolve();
      };
      const timer = setTimeout(done, ms);
      signal.addEventListener('abort', done, { once: true });
      this.#wake = done;
      if (signal.aborted) {
        done();
      }
    });
  }

  async stop(): Promise<void> {
    this.#abort.abort();
    await this.#running;
  }

  async #run(): Promise<void> {
    while (!this.#abort.signal.aborted) {
      if (!this.breaker.tryAcquire()) {
        await pause(Math.min(1000, Math.max(50, this.breaker.waitMs())), this.#abort.signal);
        continue;
      }
      try {
        this.#nudged = false;
        await this.ackOnce();
        this.breaker.recordSuccess();
        this.#backoff.reset();
        this.#lastError = undefined;
        const next = nextPoll({
          behind: this.#behind,
          nudgedDuringPass: this.#nudged,
          quickPolls: this.#quickPolls,
          intervalMs: this.#deps.intervalMs,
        });
        this.#quickPolls = next.quickPolls;
        await this.#sleep(next.sleepMs);
      } catch (err) {
        this.breaker.recordFailure();
        this.#lastError = (err as Error).message;
        const delay = this.#backoff.nextDelayMs();
        this.#deps.logger.warn({ err, retryInMs: delay }, 'acknowledgement pass failed');
        await pause(delay, this.#abort.signal);
      }
    }
  }

  /** One pass: read the replica position, acknowledge every applied entry at or below it. */
  async ackOnce(): Promise<number> {
    const { eventLog } = this.#deps;
    const waiting = await Promise.all(
      eventLog.allKeys().map((k) => eventLog.appliedCount(k.partition)),
    );
    if (waiting.every((n) => n === 0)) {
      this.#behind = false;
      return 0;
    }
    const position = await replicaPosition(this.#deps.replica, this.#deps.replicaIsMain);
    this.#lastPosition = position;
    const replayed = parseLsn(position.lsn);
    // Partitions are independent: their round trips to Redis overlap (and leave in one write on
    // the auto-pipelined connection), so a pass costs a few round trips, not a few per partition.
    const acked = await Promise.all(
      waiting.map((count, partition) =>
        count > 0 ? this.#ackPartition(partition, replayed) : { acked: 0, behind: false },
      ),
    );
    const total = acked.reduce((sum, p) => sum + p.acked, 0);
    this.#behind = acked.some((p) => p.behind);
    this.#acked += total;
    this.#passes += 1;
    return total;
  }

  /** Acknowledges what the replica reached; `behind` when records past it are left waiting. */
  async #ackPartition(
    partition: number,
    replayed: Lsn,
  ): Promise<{ acked: number; behind: boolean }> {
    const { eventLog, metrics } = this.#deps;
    let total = 0;
    const lsnOf = lsnParser();
    for (;;) {
      const records = await eventLog.peekApplied(partition, ACK_BATCH);
      // Commits of one partition are sequential, so the queue is in LSN order: stop at the first
      // record the replica has not reached.
      const firstAhead = records.findIndex((r) => lsnOf(r.lsn) > replayed);
      const ready = firstAhead === -1 ? records : records.slice(0, firstAhead);
      if (ready.length === 0) {
        return { acked: total, behind: records.length > 0 };
      }
      await eventLog.ack(partition, ready);
      const now = Date.now();
      const at = new Date(now).toISOString();
      await this.#deps.live?.publish(
        ready.map((r) => ({
          event_id: r.eventId,
          aggregate_id: r.aggregateId,
          aggregate_type: r.aggregateType,
          type: r.type ?? 'unknown',
          state: 'confirmed' as const,
          partition,
          entry_id: r.entryId,
          at,
        })),
      );
      for (const record of ready) {
        metrics.endToEnd.observe(Math.max(0, now - entryTime(record.entryId)) / 1000);
      }
      total += ready.length;
      if (ready.length < records.length || records.length < ACK_BATCH) {
        return { acked: total, behind: ready.length < records.length };
      }
    }
  }
}
