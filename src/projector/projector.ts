import type { Redis } from 'ioredis';
import type pg from 'pg';
import type { Lease } from '../db/queries/leases.ts';
import type { LivePublisher } from '../live/live-message.ts';
import { isLogPressed, logMemoryRatio, readLogMemory } from '../log/capacity.ts';
import type { DeadLetters } from '../log/dead-letters.ts';
import type { EventLog } from '../log/event-log.ts';
import { CONSUMER_GROUP } from '../log/keys.ts';
import { blockingConnection, isNoGroup, watchConnection } from '../log/redis.ts';
import { trimHalfHistory, trimPartition } from '../log/retention.ts';
import { FailureSpell, REMIND_EVERY_MS } from '../observability/failure-spell.ts';
import type { Logger } from '../observability/logger.ts';
import type { Metrics } from '../observability/metrics.ts';
import { reasonOf } from '../reason.ts';
import { applyBatches, mainChangeSince } from './apply-batch.ts';
import { BatchCombiner } from './batch-combiner.ts';
import { type CircuitBreaker, createDatabaseBreaker } from './circuit-breaker.ts';
import { deletedAmong, sayDeletedPending } from './deleted-pending.ts';
import { LeaseManager } from './leases.ts';
import { PartitionConsumer } from './partition-consumer.ts';
import { RecentBatches } from './recent-batches.ts';

/** How often a projector looks at the log's memory: one INFO each time. */
const PRESSURE_CHECK_MS = 2_000;

export type ProjectorDeps = {
  pool: pg.Pool;
  /** Short timeouts: a lease round must finish well within a third of the lease TTL. */
  leasePool: pg.Pool;
  eventLog: EventLog;
  deadLetters: DeadLetters;
  redis: Redis;
  /** This site's partitions are the ones to hold (OUTPOST_SITE). */
  site: string;
  /** Reads (or records) the applied log's id, which claims the site name for it (LeaseManager). */
  logId?: () => Promise<string>;
  consumer: string;
  batchSize: number;
  maxAttempts: number;
  claimIdleMs: number;
  streamRetentionMs: number;
  logger: Logger;
  metrics: Metrics;
  live?: LivePublisher;
  /** Told after each batch is recorded as applied: the acker starts watching the replica. */
  onApplied?: () => void;
};

export type ProjectorStats = {
  status: 'running' | 'failing' | 'stopped';
  lastRun: string | null;
  processed: number;
  batches: number;
  /** Over the last minute, as successRate and rate (RecentBatches). */
  averageBatchMs: number;
  /** Share of the last minute's batch attempts that succeeded, 0-1. */
  successRate: number;
  /** Events applied per second over the last minute. */
  rate: number;
  lastError: string | undefined;
  /** Why partitions of its share wait (leased to its own name by a run killed before it). */
  waiting: string | undefined;
  partitions: number[];
};

/** Idle pending entries looked at per partition and round; the rest wait for the next. */
const IDLE_PAGE = 1000;

/**
 * Applies the partitions this process holds leases for, one consumer per partition, behind one
 * circuit breaker for the main database; batches ready together are written together.
 */
export class Projector {
  readonly #deps: ProjectorDeps;
  readonly #consumers = new Map<number, PartitionConsumer>();
  readonly #recent = new RecentBatches(Date.now());
  readonly breaker: CircuitBreaker;
  readonly #leases: LeaseManager;
  readonly #combiner: BatchCombiner;
  #reclaimTimer: NodeJS.Timeout | undefined;
  #trimTimer: NodeJS.Timeout | undefined;
  #pressureTimer: NodeJS.Timeout | undefined;
  #relieving: Promise<void> | undefined;
  readonly #reclaimFailures: FailureSpell;
  readonly #trimFailures: FailureSpell;
  readonly #pressureFailures: FailureSpell;
  /** Trimmed under memory pressure since the last line that said so. */
  #pressureTrims: {
    at: number;
    trimmed: number;
    partitions: Set<number>;
    /** The earliest a replay reaches back to after those trims, where known. */
    reachesBackTo?: number;
  } = { at: Number.NEGATIVE_INFINITY, trimmed: 0, partitions: new Set<number>() };
  #processed = 0;
  #batches = 0;
  #lastRun: number | undefined;
  #stopping: Promise<void> | undefined;

  constructor(deps: ProjectorDeps) {
    this.#deps = deps;
    this.#reclaimFailures = new FailureSpell(deps.logger, 'reclaiming idle entries');
    this.#trimFailures = new FailureSpell(deps.logger, 'trimming the log');
    this.#pressureFailures = new FailureSpell(deps.logger, "reading Redis's memory use");
    this.#combiner = new BatchCombiner(
      (requests) => applyBatches(deps.pool, requests),
      deps.batchSize,
    );
    this.breaker = createDatabaseBreaker('main', deps.metrics.breakerState, deps.logger);
    this.#leases = new LeaseManager({
      pool: deps.leasePool,
      breaker: this.breaker,
      site: deps.site,
      logId: deps.logId,
      consumer: deps.consumer,
      partitions: deps.eventLog.partitions,
      ttlMs: deps.claimIdleMs,
      logger: deps.logger.child({ component: 'leases' }),
      events: {
        acquired: (lease) => this.#startPartition(lease),
        stopped: (partition) => this.#stopPartition(partition),
      },
    });
  }

  start(): void {
    this.#leases.start();
    this.#reclaimTimer = setInterval(() => {
      void this.#reclaimIdle().then(
        // Only a pass that asked Redis ends a spell: with every lease lapsed (Redis frozen past
        // them) it asks nothing, and would say "works again" in the middle of the outage.
        (looked) => looked > 0 && this.#reclaimFailures.ended(),
        (err: unknown) =>
          this.#reclaimFailures.failed(err, {}, `reclaiming idle entries failed: ${reasonOf(err)}`),
      );
    }, this.#deps.claimIdleMs);
    this.#reclaimTimer.unref();
    this.#trimTimer = setInterval(
      () => {
        void this.#trim().catch((err: unknown) =>
          this.#trimFailures.failed(err, {}, `trimming the log failed: ${reasonOf(err)}`),
        );
      },
      Math.min(60_000, Math.max(1_000, Math.floor(this.#deps.streamRetentionMs / 10))),
    );
    this.#trimTimer.unref();
    this.#pressureTimer = setInterval(() => {
      // One run at a time: two overlapping would halve the history twice in one period.
      this.#relieving ??= this.#relievePressure()
        .then(
          () => this.#pressureFailures.ended(),
          (err: unknown) =>
            // Its look at Redis's memory failed (a partition's trim says so itself).
            this.#pressureFailures.failed(
              err,
              {},
              `reading Redis's memory use failed: the log is not trimmed under memory pressure until it can be read: ${reasonOf(err)}`,
            ),
        )
        .finally(() => {
          this.#relieving = undefined;
        });
    }, PRESSURE_CHECK_MS);
    this.#pressureTimer.unref();
  }

  /**
   * Near maxmemory, acknowledged history gives way before writes are refused: each look halves
   * what the partitions this process owns keep, until the pressure is gone. Only pending entries
   * can then fill the log, and those are what the site cannot do without.
   */
  async #relievePressure() {
    const memory = await readLogMemory(this.#deps.redis);
    const pressed = isLogPressed(memory);
    for (const partition of pressed ? this.#consumers.keys() : []) {
      const trim = await trimHalfHistory(this.#deps.eventLog, partition).catch((err: unknown) => {
        this.#trimFailed(partition, err, 'under memory pressure');
        return { trimmed: 0, reachesBackTo: undefined };
      });
      if (trim.trimmed > 0) {
        this.#pressureTrims.trimmed += trim.trimmed;
        this.#pressureTrims.partitions.add(partition);
        if (trim.reachesBackTo !== undefined) {
          const before = this.#pressureTrims.reachesBackTo;
          this.#pressureTrims.reachesBackTo = Math.min(
            before ?? trim.reachesBackTo,
            trim.reachesBackTo,
          );
        }
      }
    }
    const told = this.#pressureTrims;
    // A line a minute at most while the pressure lasts, with what was trimmed since, and one when
    // it ends: a log near its maxmemory for long is trimmed every look (every 2 s), and a line
    // per partition and look filled the log.
    if (told.trimmed === 0 || (pressed && performance.now() - told.at < REMIND_EVERY_MS)) {
      return;
    }
    this.#deps.logger.warn(
      {
        trimmed: told.trimmed,
        partitions: [...told.partitions].sort((a, b) => a - b),
        usedBytes: memory.usedBytes,
        maxmemory: memory.maxBytes,
        replayReachesBackTo:
          told.reachesBackTo === undefined ? null : new Date(told.reachesBackTo).toISOString(),
      },
      `Redis holds ${(logMemoryRatio(memory) * 100).toFixed(1)} % of its maxmemory: trimmed ${told.trimmed} acknowledged entries younger than OUTPOST_STREAM_RETENTION to make room for writes (replay now reaches back less far; raise maxmemory to keep the full retention)`,
    );
    this.#pressureTrims = { at: performance.now(), trimmed: 0, partitions: new Set() };
  }

  /** Drops acknowledged entries past the retention from the partitions this process owns. */
  async #trim() {
    let failed = false;
    let looked = 0;
    for (const partition of this.#consumers.keys()) {
      looked += 1;
      const trimmed = await trimPartition(
        this.#deps.eventLog,
        partition,
        this.#deps.streamRetentionMs,
      ).catch((err: unknown) => {
        failed = true;
        this.#trimFailed(partition, err, 'past the retention');
        return 0;
      });
      if (trimmed > 0) {
        this.#deps.logger.info(
          { partition, trimmed },
          'trimmed acknowledged entries past the retention',
        );
      }
    }
    if (!failed && looked > 0) {
      this.#trimFailures.ended();
    }
  }

  /**
   * One partition's failure is its own: the partitions after it are still trimmed. Partitions
   * failing alike (Redis away) are one spell.
   */
  #trimFailed(partition: number, err: unknown, how: string) {
    this.#trimFailures.failed(
      err,
      { partition },
      `trimming the log ${how} failed: ${reasonOf(err)}`,
    );
  }

  stop(): Promise<void> {
    this.#stopping ??= (async () => {
      clearInterval(this.#reclaimTimer);
      clearInterval(this.#trimTimer);
      clearInterval(this.#pressureTimer);
      await this.#leases.stop();
    })();
    return this.#stopping;
  }

  /**
   * A partition taken over from a dead or fenced owner comes with that owner's pending entries:
   * claim them all, so they are applied (in order) before anything newer.
   */
  async #claimAll(partition: number, minIdleMs: number): Promise<number> {
    const stream = this.#deps.eventLog.keys(partition).stream;
    let cursor = '0-0';
    let claimed = 0;
    const deleted: string[] = [];
    do {
      const [next, ids, deletedIds = []] = (await this.#deps.redis.xautoclaim(
        stream,
        CONSUMER_GROUP,
        this.#deps.consumer,
        minIdleMs,
        cursor,
        'COUNT',
        1000,
        'JUSTID',
      )) as [string, string[], string[]?];
      claimed += ids.length;
      deleted.push(...deletedIds);
      cursor = next;
    } while (cursor !== '0-0');
    sayDeletedPending(
      this.#deps.logger.child({ partition }),
      deleted,
      'taken over with the partition',
    );
    return claimed;
  }

  async #startPartition(lease: Lease) {
    const claimed = await this.#claimAll(lease.partition, 0).catch(async (err: unknown) => {
      if (!isNoGroup(err)) {
        throw err;
      }
      // Redis came back without its data while the partition was between owners: the consumer
      // that would create the group again on its first read never started. Nothing to claim.
      await this.#deps.eventLog.recreateGroup(
        lease.partition,
        this.#deps.logger.child({ partition: lease.partition }),
      );
      return 0;
    });
    if (claimed > 0) {
      this.#deps.logger.info(
        { partition: lease.partition, claimed },
        'claimed pending entries of the previous owner',
      );
    }
    const reader = blockingConnection(this.#deps.redis, {
      lazyConnect: false,
      enableOfflineQueue: true,
    });
    watchConnection(
      reader,
      this.#deps.logger.child({ partition: lease.partition, connection: 'reader' }),
    );
    const consumer = new PartitionConsumer({
      ...this.#deps,
      apply: (request) => this.#combiner.apply(request),
      mainChange: (seen) => mainChangeSince(this.#deps.pool, seen),
      reader,
      lease,
      leaseValid: () => this.#leases.isValid(lease.partition),
      breaker: this.breaker,
      logger: this.#deps.logger.child({ partition: lease.partition }),
      onBatch: ({ applied, ms }) => {
        this.#record(applied, ms);
        this.#deps.onApplied?.();
      },
      onFailure: () => {
        this.#recent.failed(Date.now());
      },
    });
    this.#consumers.set(lease.partition, consumer);
    consumer.start();
  }

  async #stopPartition(partition: number) {
    const consumer = this.#consumers.get(partition);
    this.#consumers.delete(partition);
    await consumer?.stop();
  }

  /**
   * Entries stranded with another consumer are taken at this consumer's next read of new ones
   * (PartitionConsumer#claimStranded); the idle time is the backstop. Our own that nothing is
   * applying come back after it too (handed back by the acker: their events were lost
   * from the main database). Our own are not claimed: a claim resets the idle time that
   * `outpost pending` shows, and the entries waiting for the replica would never look old.
   */
  async #reclaimIdle() {
    const { redis, eventLog, consumer: me, claimIdleMs } = this.#deps;
    let looked = 0;
    for (const [partition, consumer] of this.#consumers) {
      if (!this.#leases.isValid(partition)) {
        // A process woken from a freeze, or cut off from the database, may have lost the
        // partition: the new owner's entries are not ours to take, whatever their idle time.
        continue;
      }
      looked += 1;
      const keys = eventLog.keys(partition);
      const { stream } = keys;
      const idle = (await redis.xpending(
        stream,
        CONSUMER_GROUP,
        'IDLE',
        claimIdleMs,
        '-',
        '+',
        IDLE_PAGE,
      )) as [id: string, owner: string, idleMs: number, deliveries: number][];
      const others = idle.filter(([, owner]) => owner !== me).map(([id]) => id);
      const own = idle.filter(([, owner]) => owner === me).map(([id]) => id);
      if (others.length > 0) {
        try {
          const got = (await redis.xclaim(
            stream,
            CONSUMER_GROUP,
            me,
            claimIdleMs,
            ...others,
            'JUSTID',
          )) as string[];
          const deleted = await deletedAmong(redis, keys, others, got);
          sayDeletedPending(
            this.#deps.logger.child({ partition }),
            deleted,
            'claimed from another consumer',
          );
        } finally {
          // Also when the claim failed: Redis may have run it and lost only its reply, and the
          // entries are then ours, behind the page being read.
          consumer.rereadOwnPending();
        }
      }
      if ((await eventLog.appliedLsnOf(own, partition)).some((lsn) => !lsn)) {
        consumer.rereadOwnPending();
      }
    }
    return looked;
  }

  #record(applied: number, ms: number) {
    const now = Date.now();
    this.#processed += applied;
    this.#batches += 1;
    this.#lastRun = now;
    this.#recent.written(now, applied, ms);
  }

  stats(): ProjectorStats {
    const errors = [...this.#consumers.values()]
      .map((c) => c.lastError)
      .filter((e) => e !== undefined);
    const leaseError = this.#leases.lastError;
    const failing =
      errors.length > 0 || leaseError !== undefined || this.breaker.state !== 'closed';
    return {
      status: this.#stopping ? 'stopped' : failing ? 'failing' : 'running',
      lastRun: this.#lastRun === undefined ? null : new Date(this.#lastRun).toISOString(),
      processed: this.#processed,
      batches: this.#batches,
      ...this.#recent.figures(Date.now()),
      lastError: errors[0] ?? leaseError,
      waiting: this.#leases.waiting,
      partitions: this.#leases.owned,
    };
  }
}
