import type { Redis } from 'ioredis';
import type pg from 'pg';
import type { EventLog } from '../log/event-log.ts';
import type { Logger } from '../observability/logger.ts';
import type { Metrics } from '../observability/metrics.ts';
import { PartitionConsumer } from './partition-consumer.ts';

export type ProjectorDeps = {
  pool: pg.Pool;
  eventLog: EventLog;
  redis: Redis;
  consumer: string;
  batchSize: number;
  maxAttempts: number;
  logger: Logger;
  metrics: Metrics;
};

export type ProjectorStats = {
  status: 'running' | 'failing' | 'stopped';
  lastRun: string | null;
  processed: number;
  batches: number;
  averageBatchMs: number;
  /** Share of batch attempts and event applications that succeeded, 0-1. */
  successRate: number;
  /** Events applied per second over the last minute. */
  rate: number;
  lastError: string | undefined;
};

const RATE_WINDOW_MS = 60_000;

/** One consumer per partition stream, each with its own blocking Redis connection. */
export class Projector {
  readonly #deps: ProjectorDeps;
  readonly #consumers: PartitionConsumer[] = [];
  readonly #recent: { at: number; applied: number }[] = [];
  #processed = 0;
  #batches = 0;
  #failures = 0;
  #batchMs = 0;
  #lastRun: number | undefined;
  #stopping: Promise<void> | undefined;

  constructor(deps: ProjectorDeps) {
    this.#deps = deps;
  }

  start(): void {
    if (this.#consumers.length > 0) {
      return;
    }
    const { eventLog } = this.#deps;
    for (const { partition } of eventLog.allKeys()) {
      const consumer = new PartitionConsumer(
        {
          ...this.#deps,
          reader: this.#deps.redis.duplicate({ lazyConnect: false, enableOfflineQueue: true }),
          logger: this.#deps.logger.child({ partition }),
          onBatch: ({ applied, ms }) => this.#record(applied, ms),
          onFailure: () => {
            this.#failures += 1;
          },
        },
        partition,
      );
      this.#consumers.push(consumer);
      consumer.start();
    }
  }

  stop(): Promise<void> {
    this.#stopping ??= Promise.all(this.#consumers.map((c) => c.stop())).then(() => undefined);
    return this.#stopping;
  }

  #record(applied: number, ms: number) {
    const now = Date.now();
    this.#processed += applied;
    this.#batches += 1;
    this.#batchMs += ms;
    this.#lastRun = now;
    this.#recent.push({ at: now, applied });
    while ((this.#recent[0]?.at ?? now) < now - RATE_WINDOW_MS) {
      this.#recent.shift();
    }
  }

  stats(): ProjectorStats {
    const errors = this.#consumers.map((c) => c.lastError).filter((e) => e !== undefined);
    const now = Date.now();
    const recent = this.#recent.filter((r) => r.at >= now - RATE_WINDOW_MS);
    const windowMs = Math.min(RATE_WINDOW_MS, Math.max(1000, now - (recent[0]?.at ?? now)));
    return {
      status: this.#stopping ? 'stopped' : errors.length > 0 ? 'failing' : 'running',
      lastRun: this.#lastRun === undefined ? null : new Date(this.#lastRun).toISOString(),
      processed: this.#processed,
      batches: this.#batches,
      averageBatchMs: this.#batches === 0 ? 0 : this.#batchMs / this.#batches,
      successRate:
        this.#batches + this.#failures === 0 ? 1 : this.#batches / (this.#batches + this.#failures),
      rate: recent.reduce((sum, r) => sum + r.applied, 0) / (windowMs / 1000),
      lastError: errors[0],
    };
  }
}
