import type pg from 'pg';
import type { Acker } from '../acker/acker.ts';
import type { TokenStore } from '../auth/token-store.ts';
import type { Config } from '../config.ts';
import { parseLsn } from '../db/lsn.ts';
import { latestSnapshot } from '../db/queries/integrity.ts';
import { type LeaseHolding, leaseHoldings } from '../db/queries/leases.ts';
import {
  mainWalLsn,
  type ReplayState,
  type ReplicaPosition,
  replicaPosition,
  replicaReplayState,
} from '../db/queries/replica.ts';
import { noAnomalies, PROBLEMS } from '../integrity/problems.ts';
import type { IntegrityScheduler } from '../integrity/scheduler.ts';
import type { LiveFeed } from '../live/live-feed.ts';
import { isLogFull, logMemoryRatio, readLogMemory } from '../log/capacity.ts';
import { logWriteRefusal } from '../log/durability.ts';
import type { EventLog } from '../log/event-log.ts';
import { replayReachMs } from '../log/retention.ts';
import type { Metrics } from '../observability/metrics.ts';
import { databaseReason } from '../projector/errors.ts';
import type { Projector, ProjectorStats } from '../projector/projector.ts';
import { within } from '../within.ts';
import { readBuffer, type SiteBuffer, totalsOf } from './buffer.ts';
import { liveHolder, projectorLeasesLine } from './lease-report.ts';
import type { SiteListing } from './partition-count.ts';
import { REBUILD_OWNER } from './rebuild.ts';
import { replayStateView } from './replica-delay.ts';
import { siteClaimNote } from './site-name.ts';

export type StatusDeps = {
  config: Config;
  eventLog: EventLog;
  main: pg.Pool;
  replica: pg.Pool;
  metrics: Metrics;
  projector?: Projector;
  acker?: Acker;
  integrity?: IntegrityScheduler;
  tokens?: Pick<TokenStore, 'reloadError'>;
  partitionCount?: Pick<SiteListing, 'countError'>;
  /** The live feed's reader, in processes that fan the feed out to clients. */
  live?: Pick<LiveFeed, 'lastError'>;
};

/** Health probes of remote databases must answer even when the link silently drops packets. */
export const PROBE_TIMEOUT_MS = 1500;

const FAILED = Symbol('probe failed');

/** What `work` answers within the probe timeout, or why it did not. */
const answerOrReason = async <T>(work: Promise<T>): Promise<{ answer?: T; failure?: string }> => {
  try {
    return {
      answer: await within(
        work,
        PROBE_TIMEOUT_MS,
        () => new Error(`no answer within ${PROBE_TIMEOUT_MS} ms`),
      ),
    };
  } catch (err) {
    return { failure: databaseReason(err) };
  }
};

/** What `work` answers within the probe timeout, or FAILED. */
const probe = async <T>(work: Promise<T>): Promise<T | typeof FAILED> => {
  const { answer, failure } = await answerOrReason(work);
  return failure === undefined ? (answer as T) : FAILED;
};

const settle = async <T>(work: Promise<T>): Promise<T | undefined> =>
  (await answerOrReason(work)).answer;

/** Computes /health, /buffer-stats and the pipeline gauges from live state, never constants. */
export class StatusSource {
  readonly #deps: StatusDeps;
  #leaseQuery: Promise<LeaseHolding[]> | undefined;
  #claimQuery: ReturnType<typeof siteClaimNote> | undefined;

  constructor(deps: StatusDeps) {
    this.#deps = deps;
  }

  async #positions() {
    const { main, replica, config } = this.#deps;
    const [mainLsn, position, replayState] = await Promise.all([
      answerOrReason(mainWalLsn(main)),
      answerOrReason(replicaPosition(replica, config.replicaIsMain)),
      // Wrapped: a primary serving as the replica has no replay state, which is not a failure.
      settle(replicaReplayState(replica).then((state) => ({ state }))),
    ]);
    return {
      mainLsn: mainLsn.answer,
      mainFailure: mainLsn.failure,
      replicaPos: position.answer,
      replicaFailure: position.failure,
      replayState,
    };
  }

  async bufferOrUndefined(): Promise<SiteBuffer | undefined> {
    return settle(readBuffer(this.#deps.eventLog));
  }

  async health() {
    const { config, projector } = this.#deps;
    // Every probe at once: each has its own time limit, and /health answers within the longest.
    const [
      refusal,
      buffers,
      { mainLsn, mainFailure, replicaPos, replicaFailure, replayState },
      snapshot,
      memory,
      leases,
      claim,
    ] = await Promise.all([
      probe(logWriteRefusal(this.#deps.eventLog.redis, this.#deps.config.appendfsync)),
      this.bufferOrUndefined(),
      this.#positions(),
      settle(latestSnapshot(this.#deps.replica)),
      settle(readLogMemory(this.#deps.eventLog.redis)),
      // A process without a projector sees none fail: the leases say whether any runs, and the
      // site name's claim whether they are this log's (or another site's, under the same name).
      projector === undefined ? answerOrReason(this.#siteLeases()) : undefined,
      projector === undefined ? settle(this.#siteClaim()) : undefined,
    ]);
    // Redis is up when it answers the write probe, taking writes or refusing them: it refuses even
    // PING while it cannot save.
    const redisUp = refusal !== FAILED;
    // Writes are refused once they would take the room the backlog needs to drain, and by Redis
    // itself when it cannot save them.
    const full = memory !== undefined && isLogFull(memory);
    const writeError = refusal === FAILED ? null : (refusal ?? null);
    const totals = totalsOf(buffers ?? { partitions: [], nowMs: 0 });
    const processor = projector?.stats();
    const lag = lagOf(mainLsn, replicaPos, replayState, replicaFailure);
    const databaseUp = mainLsn !== undefined;
    const replicaUp = replicaPos !== undefined;
    const unprojected = claim?.heldByAnotherLog
      ? claim.line
      : leases === undefined || buffers === undefined
        ? undefined
        : unheldWaiting(buffers, leases, config);
    // Applied events that the replica does not replay, or that cannot be acknowledged, stay
    // pending however well the projector runs: the log grows until someone looks. A replica held
    // back while nothing waits for it (paused on purpose on an idle site) keeps nothing pending.
    const acknowledging =
      (lag.reason === null || totals.awaitingReplica === 0) &&
      this.#deps.acker?.lastError === undefined;
    // A buffer that could not be read (too slow to answer, a key of the wrong type) is unknown,
    // not empty: zeros would say nothing waits, and let the site look healthy.
    const bufferRead = buffers !== undefined;
    const tokensError = this.#deps.tokens?.reloadError;
    const countError = this.#deps.partitionCount?.countError;
    const liveError = this.#deps.live?.lastError;
    const status =
      !redisUp || full || writeError || countError !== undefined
        ? 'unhealthy'
        : databaseUp &&
            replicaUp &&
            bufferRead &&
            processor?.status !== 'failing' &&
            processor?.waiting === undefined &&
            acknowledging &&
            unprojected === undefined &&
            tokensError === undefined &&
            liveError === undefined
          ? 'healthy'
          : 'degraded';
    return {
      status,
      site: config.site,
      role: config.role,
      database: databaseUp ? 'connected' : 'disconnected',
      // Why not, in the database's words: an address that does not answer, or a server that
      // answered and refused (a standby in recovery, too many clients), are mended differently.
      ...(databaseUp ? {} : { database_error: mainFailure ?? null }),
      replica: replicaUp ? 'connected' : 'disconnected',
      redis: redisUp ? 'connected' : 'disconnected',
      transaction_buffer: {
        size: bufferRead ? totals.pending : null,
        failed: bufferRead ? totals.deadLetters : null,
        oldest_pending_seconds: bufferRead ? round(totals.oldestPendingSeconds) : null,
        full,
        memory_used_bytes: memory?.usedBytes ?? null,
        memory_limit_bytes: memory?.maxBytes || null,
        write_error: writeError,
      },
      background_processor: processorView(processor, this.#deps.acker?.lastError, unprojected),
      replication_lag: lag,
      circuit_breaker: projector?.breaker.state ?? 'closed',
      integrity: {
        mode: this.#deps.integrity?.mode ?? 'unknown',
        refreshed_at: snapshot?.refreshed_at ?? null,
      },
      // Only while the token file's last edit is refused: the tokens before it stay in force.
      ...(tokensError === undefined ? {} : { api_tokens: { error: tokensError } }),
      // Only while this process refuses writes for it.
      ...(countError === undefined ? {} : { partition_count: { error: countError } }),
      // Only while the feed's reader fails: live clients hear nothing until it reads again.
      ...(liveError === undefined ? {} : { live_feed: { error: liveError } }),
    } as const;
  }

  /**
   * The site's leases, one query at a time: /health asked often while the lease table is locked
   * (a migration) would otherwise pin every connection of the probe pool.
   */
  #siteLeases(): Promise<LeaseHolding[]> {
    this.#leaseQuery ??= leaseHoldings(this.#deps.main, this.#deps.config.site).finally(() => {
      this.#leaseQuery = undefined;
    });
    return this.#leaseQuery;
  }

  /** The site name's claim, one look at a time, as the leases. */
  #siteClaim(): ReturnType<typeof siteClaimNote> {
    const { eventLog, main, config } = this.#deps;
    this.#claimQuery ??= siteClaimNote({ redis: eventLog.redis, main, config }).finally(() => {
      this.#claimQuery = undefined;
    });
    return this.#claimQuery;
  }

  async bufferStats() {
    // Redis's memory is asked apart: a Redis whose ACL denies INFO still shows its buffer, as
    // /health does, where its refusal failed the whole answer with 503 log_unavailable.
    const [buffer, memory] = await Promise.all([
      readBuffer(this.#deps.eventLog),
      settle(readLogMemory(this.#deps.eventLog.redis)),
    ]);
    const totals = totalsOf(buffer);
    const processor = this.#deps.projector?.stats();
    return {
      pending_transactions: totals.pending,
      failed_transactions: totals.deadLetters,
      processing_rate: round(processor?.rate ?? 0),
      average_execution_time_ms: round(processor?.averageBatchMs ?? 0),
      buffer_size_mb: memory === undefined ? null : round(memory.usedBytes / (1024 * 1024)),
      oldest_pending_seconds: round(totals.oldestPendingSeconds),
    };
  }

  /** Sets the pipeline gauges just before a scrape. */
  async refreshGauges(): Promise<void> {
    const { metrics } = this.#deps;
    // Each probe has its own time limit: together, an unreachable dependency costs the scrape one
    // limit, not one per probe.
    const [buffers, memory, refusal, reach, snapshot, positions] = await Promise.all([
      this.bufferOrUndefined(),
      probe(readLogMemory(this.#deps.eventLog.redis)),
      probe(logWriteRefusal(this.#deps.eventLog.redis, this.#deps.config.appendfsync)),
      probe(replayReachMs(this.#deps.eventLog)),
      probe(latestSnapshot(this.#deps.replica)),
      this.#positions(),
    ]);
    // As /health reads them: Redis is reached when it answers the write probe, even to refuse.
    metrics.dependencyUp.set({ dependency: 'redis' }, refusal === FAILED ? 0 : 1);
    metrics.dependencyUp.set({ dependency: 'main' }, positions.mainLsn === undefined ? 0 : 1);
    metrics.dependencyUp.set({ dependency: 'replica' }, positions.replicaPos === undefined ? 0 : 1);
    metrics.apiTokensFileValid.set(this.#deps.tokens?.reloadError === undefined ? 1 : 0);
    if (buffers) {
      for (const b of buffers.partitions) {
        const partition = String(b.partition);
        const unprojected = Math.max(0, b.delivered + b.undelivered - b.awaitingReplica);
        metrics.eventsPending.set({ partition, state: 'unprojected' }, unprojected);
        metrics.eventsPending.set({ partition, state: 'awaiting_replica' }, b.awaitingReplica);
      }
      const totals = totalsOf(buffers);
      metrics.oldestPendingAge.set(totals.oldestPendingSeconds);
      metrics.deadLetters.set(totals.deadLetters);
    }
    if (memory !== FAILED) {
      metrics.logMemoryRatio.set(logMemoryRatio(memory));
    }
    if (refusal !== FAILED) {
      metrics.logWritable.set(refusal === undefined ? 1 : 0);
    }
    // A gauge whose probe fails keeps its last value: set to 0, an unreadable replica would
    // resolve the integrity alert and a lost link the lag alert, and both would flap. The
    // dependency gauges above say which values are stale.
    if (reach !== FAILED) {
      metrics.replayReachAge.set(
        reach === undefined ? 0 : Math.max(0, ((buffers?.nowMs ?? Date.now()) - reach) / 1000),
      );
    }
    if (snapshot !== FAILED) {
      const anomalies = snapshot?.anomalies ?? noAnomalies();
      for (const problem of PROBLEMS) {
        metrics.integrityAnomalies.set({ problem }, anomalies[problem]);
      }
      metrics.integrityRefreshedAt.set(snapshot ? Date.parse(snapshot.refreshed_at) / 1000 : 0);
      metrics.integrityRefreshDuration.set(snapshot ? snapshot.duration_ms / 1000 : 0);
    }
    const { mainLsn, replicaPos, replayState } = positions;
    // Seconds are the replica's own replay delay; bytes need both positions.
    const lag = lagOf(mainLsn, replicaPos, replayState);
    if (lag.replay_paused !== null) {
      metrics.replicaReplayPaused.set(lag.replay_paused ? 1 : 0);
    }
    if (replicaPos !== undefined) {
      metrics.replicationLagSeconds.set(lag.current_lag_seconds);
    }
    if (mainLsn !== undefined && replicaPos !== undefined) {
      metrics.replicationLagBytes.set(lag.bytes);
    }
  }
}

const round = (n: number) => Math.round(n * 1000) / 1000;

const lagOf = (
  mainLsn: string | undefined,
  replica: ReplicaPosition | undefined,
  replayState: { state: ReplayState | undefined } | undefined,
  replicaFailure?: string,
) => {
  const bytes = mainLsn && replica ? Number(parseLsn(mainLsn) - parseLsn(replica.lsn)) : 0;
  const view = replayStateView(replayState?.state, replica);
  return {
    current_lag_seconds: round(replica?.lagSeconds ?? 0),
    bytes: Math.max(0, bytes),
    main_lsn: mainLsn ?? null,
    replica_lsn: replica?.lsn ?? null,
    ...view,
    // A replica that answers but cannot say how far it replayed (promoted, say, or a primary
    // named as the replica) acknowledges nothing, as one that is away: the reason says which.
    reason:
      view.reason ??
      (replicaFailure === undefined
        ? null
        : `the replica's position cannot be read: ${replicaFailure}`),
  };
};

/**
 * Why events have waited longer than a lease's lifetime in a partition no projector of the site
 * applies (none running, none reaching the main database, or a rebuild holding them), or
 * undefined. Leases that could not be read are said so: unknown is not all well.
 */
export const unheldWaiting = (
  { partitions, nowMs }: SiteBuffer,
  leases: { answer?: LeaseHolding[]; failure?: string },
  config: Pick<Config, 'claimIdleMs' | 'partitions'>,
): string | undefined => {
  const waiting = partitions.filter(
    (b) =>
      b.delivered + b.undelivered > 0 &&
      b.oldestAcceptedMs !== undefined &&
      nowMs - b.oldestAcceptedMs > config.claimIdleMs,
  );
  if (waiting.length === 0) {
    return undefined;
  }
  const { answer: holdings, failure } = leases;
  if (holdings === undefined) {
    return `events have waited over ${Math.round(config.claimIdleMs / 1000)} s, and the projector leases cannot be read: ${failure ?? 'no answer'}`;
  }
  const applying = (partition: number) => {
    const holder = liveHolder(holdings.find((h) => h.partition === partition));
    return holder !== undefined && holder !== REBUILD_OWNER;
  };
  return waiting.every((b) => applying(b.partition))
    ? undefined
    : projectorLeasesLine(holdings, config.partitions);
};

const processorView = (
  stats: ProjectorStats | undefined,
  ackerError: string | undefined,
  unprojected: string | undefined,
) => ({
  status: stats?.status ?? 'disabled',
  last_run: stats?.lastRun ?? null,
  transactions_processed: stats?.processed ?? 0,
  success_rate: round(stats?.successRate ?? 1),
  // What the projector last met while its batches fail (the breaker's reason), else why
  // partitions of its share wait, else what the acknowledgements last met, else (in a process
  // without a projector) that none holds partitions whose events wait, or null.
  last_error:
    stats?.lastError ??
    stats?.waiting ??
    (ackerError === undefined ? (unprojected ?? null) : `acknowledging: ${ackerError}`),
});
