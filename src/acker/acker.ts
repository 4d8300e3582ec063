import type pg from 'pg';
import { type Lsn, parseLsn } from '../db/lsn.ts';
import {
  presentEventIds,
  type ReplicaPosition,
  replicaPosition,
  replicaReplayState,
} from '../db/queries/replica.ts';
import type { LivePublisher } from '../live/live-message.ts';
import { entryTime, timeMs } from '../log/entry-id.ts';
import type { AppliedRecord, EventLog } from '../log/event-log.ts';
import { FailureSpell } from '../observability/failure-spell.ts';
import type { Logger } from '../observability/logger.ts';
import type { Metrics } from '../observability/metrics.ts';
import { Backoff, pause, pauseUnlessReconnected } from '../projector/backoff.ts';
import {
  type BreakerGauge,
  type CircuitBreaker,
  createDatabaseBreaker,
} from '../projector/circuit-breaker.ts';
import { reasonOf } from '../reason.ts';

export type AckerDeps = {
  replica: pg.Pool;
  replicaIsMain: boolean;
  eventLog: EventLog;
  intervalMs: number;
  logger: Logger;
  metrics: Metrics;
  /**
   * Where its replica breaker's state shows, when the process's API has a breaker on the replica
   * too (WorstBreakerGauge); else the metrics' own gauge.
   */
  breakerGauge?: BreakerGauge;
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
/** How often a partition whose head waits for a replica that does not stream is looked at again. */
const STUCK_RECHECK_MS = 1_000;
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

/** The head of one partition's applied queue, and the part of it the replica has replayed. */
type AppliedPage = {
  partition: number;
  records: AppliedRecord[];
  reached: AppliedRecord[];
};

/** A failure of the replica itself (unreachable, not a standby), as opposed to Redis's. */
class ReplicaError extends Error {
  constructor(cause: unknown) {
    super((cause as Error)?.message ?? String(cause), { cause });
    this.name = 'ReplicaError';
  }
}

const fromReplica = <T>(work: Promise<T>): Promise<T> =>
  work.catch((err: unknown) => {
    throw new ReplicaError(err);
  });

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
  readonly #failures: FailureSpell;
  #running: Promise<void> | undefined;
  #lastPosition: ReplicaPosition | undefined;
  /** Per partition, the first applied record the replica had not reached last pass. */
  readonly #firstAhead = new Map<number, { entryId: string; lsn: Lsn }>();
  #lastError: string | undefined;
  /**
   * Why applied records the replica should have, and lacks, wait instead of being handed back:
   * its WAL receiver is not streaming (see `#replicaStreams`). Shown as the acker's last error.
   */
  #stuck: string | undefined;
  #stuckBefore = false;
  /**
   * Per partition, the head record that waits for a replica that does not stream, and why: looked
   * at again only when the head changes or a second has passed, not every 2 ms pass of a busy
   * site for as long as the incident lasts.
   */
  readonly #stuckHeads = new Map<number, { entryId: string; since: number; why: string }>();
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
    this.#failures = new FailureSpell(deps.logger, 'acknowledging');
    this.breaker = createDatabaseBreaker(
      'replica',
      deps.breakerGauge ?? deps.metrics.breakerState,
      deps.logger,
    );
  }

  get lastPosition(): ReplicaPosition | undefined {
    return this.#lastPosition;
  }

  get lastError(): string | undefined {
    return this.#lastError;
  }

  /** Why applied records wait for a replica that does not stream, as of the last pass. */
  get stuck(): string | undefined {
    return this.#stuck;
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
        this.#failures.ended();
        this.#lastError = this.#stuck;
        const next = nextPoll({
          behind: this.#behind,
          nudgedDuringPass: this.#nudged,
          quickPolls: this.#quickPolls,
          intervalMs: this.#deps.intervalMs,
        });
        this.#quickPolls = next.quickPolls;
        await this.#sleep(next.sleepMs);
      } catch (err) {
        // The breaker is the replica's (outpost_circuit_breaker_state{target="replica"}): a
        // Redis failure must not send the operator to look at the replica.
        if (err instanceof ReplicaError) {
          this.breaker.recordFailure();
        } else {
          this.breaker.releaseProbe();
        }
        this.#lastError = reasonOf(err);
        const delay = this.#backoff.nextDelayMs();
        this.#failures.failed(
          err,
          { retryInMs: delay },
          `acknowledging failed: ${this.#lastError}`,
        );
        await (err instanceof ReplicaError
          ? pause(delay, this.#abort.signal)
          : pauseUnlessReconnected(delay, [this.#deps.eventLog.redis], this.#abort.signal));
      }
    }
  }

  /**
   * One pass: read the replica position, acknowledge every applied entry at or below it whose
   * event the replica shows, and hand back to the projector any it does not.
   */
  async ackOnce(): Promise<number> {
    const { eventLog } = this.#deps;
    // Said once a spell: a pass that finds nothing stuck ends it.
    this.#stuckBefore = this.#stuck !== undefined;
    this.#stuck = undefined;
    const heads = await Promise.all(
      eventLog.allKeys().map(async (k) => (await eventLog.peekApplied(k.partition, 1))[0]),
    );
    if (heads.every((head) => head === undefined)) {
      this.#behind = false;
      if (this.breaker.state !== 'closed') {
        // Nothing to settle, but a pass that never asked the replica must not close its breaker:
        // one still down would read as healthy until the next write opened it again.
        this.#lastPosition = await fromReplica(
          replicaPosition(this.#deps.replica, this.#deps.replicaIsMain, { withLag: false }),
        );
      }
      return 0;
    }
    // Redis's clock names the entries, so end-to-end times are read on it, while the replica
    // answers.
    const [position, time] = await Promise.all([
      fromReplica(
        replicaPosition(this.#deps.replica, this.#deps.replicaIsMain, { withLag: false }),
      ),
      eventLog.redis.time(),
    ]);
    const sampled = performance.now();
    const redisNow = () => timeMs(time) + (performance.now() - sampled);
    this.#lastPosition = position;
    const replayed = parseLsn(position.lsn);
    let total = 0;
    let behind = false;
    // A partition still headed by last pass's first unreached record, which is still past the
    // replica, has nothing to settle: its page is not read again (1,000 records a partition,
    // every 2 ms while the replica lags and batches keep nudging, was most of a core exactly when
    // the site strained). The head, not only the LSN: a projector may have taken that record out
    // of the queue (its event lost by the main database) and recorded it anew at a lower LSN.
    let partitions = heads.flatMap((head, partition) => {
      if (head === undefined) {
        return [];
      }
      const stuck = this.#stuckHeads.get(partition);
      if (stuck?.entryId === head.entryId && performance.now() - stuck.since < STUCK_RECHECK_MS) {
        this.#stuck = stuck.why;
        return [];
      }
      const ahead = this.#firstAhead.get(partition);
      if (
        ahead?.entryId === head.entryId &&
        ahead.lsn === parseLsn(head.lsn) &&
        ahead.lsn > replayed
      ) {
        behind = true;
        return [];
      }
      return [partition];
    });
    while (partitions.length > 0) {
      // Partitions are independent: their round trips to Redis overlap (and leave in one write on
      // the auto-pipelined connection), so a pass costs a few round trips, not a few per partition.
      const pages = await Promise.all(partitions.map((p) => this.#reachedPage(p, replayed)));
      const reachedIds = pages.flatMap((page) => page.reached.map((r) => r.eventId));
      // Read after the position, so every commit at or below it is visible to this statement.
      const onReplica =
        reachedIds.length > 0
          ? await fromReplica(presentEventIds(this.#deps.replica, reachedIds))
          : new Set<string>();
      const settled = await Promise.all(
        pages.map((page) => this.#settle(page, onReplica, redisNow)),
      );
      total += settled.reduce((sum, p) => sum + p.acked, 0);
      behind ||= settled.some((p) => p.behind);
      partitions = settled.filter((p) => p.again).map((p) => p.partition);
    }
    this.#behind = behind;
    this.#acked += total;
    this.#passes += 1;
    return total;
  }

  /** The head of a partition's applied queue, and how much of it the replica has replayed. */
  async #reachedPage(partition: number, replayed: Lsn): Promise<AppliedPage> {
    const records = await this.#deps.eventLog.peekApplied(partition, ACK_BATCH);
    const lsnOf = lsnParser();
    // Commits of one partition are sequential, so the queue is in LSN order: stop at the first
    // record the replica has not reached.
    const firstAhead = records.findIndex((r) => lsnOf(r.lsn) > replayed);
    const aheadRecord = records[firstAhead];
    if (aheadRecord) {
      this.#firstAhead.set(partition, {
        entryId: aheadRecord.entryId,
        lsn: lsnOf(aheadRecord.lsn),
      });
    } else {
      this.#firstAhead.delete(partition);
    }
    return {
      partition,
      records,
      reached: firstAhead === -1 ? records : records.slice(0, firstAhead),
    };
  }

  /**
   * Acknowledges the reached records whose events the replica has. A replayed LSN alone is not
   * proof: a main database restored from an earlier backup, or a standby promoted before it
   * received the last commits, writes new WAL that passes the LSNs of commits it never had. Those
   * records are forgotten instead, and the projector applies their entries again.
   */
  async #settle(
    { partition, records, reached }: AppliedPage,
    onReplica: ReadonlySet<string>,
    now: () => number,
  ): Promise<{ partition: number; acked: number; behind: boolean; again: boolean }> {
    const firstMissing = reached.findIndex((r) => !onReplica.has(r.eventId));
    const shown = firstMissing === -1 ? reached : reached.slice(0, firstMissing);
    const acked = await this.#confirm(partition, shown, now);
    const behind = reached.length < records.length;
    if (acked < shown.length) {
      // Another acker settled the head meanwhile: the next pass reads it afresh.
      return { partition, acked, behind, again: false };
    }
    if (firstMissing === -1) {
      return { partition, acked, behind, again: !behind && records.length === ACK_BATCH };
    }
    const missing = reached.slice(firstMissing);
    const firstShown = missing.findIndex((r) => onReplica.has(r.eventId));
    const lost = firstShown === -1 ? missing : missing.slice(0, firstShown);
    if (!(await this.#stillLost(lost))) {
      // The replica's view moved between the pass's two questions: the next pass asks again.
      return { partition, acked, behind: true, again: false };
    }
    // Keyed on the first lost record: what the replica had is acknowledged, so it heads the queue.
    if (!(await this.#replicaStreams(partition, lost, lost[0]?.entryId))) {
      // Not behind: quick polls would not make a replica that does not stream any closer.
      return { partition, acked, behind: false, again: false };
    }
    const forgotten = await this.#deps.eventLog.forgetApplied(partition, lost);
    this.#deps.metrics.eventsReapplied.inc({ found_by: 'acker' }, forgotten);
    this.#deps.logger.error(
      {
        partition,
        events: forgotten,
        firstEventId: lost[0]?.eventId,
        commitLsn: lost[0]?.lsn,
        replicaLsn: this.#lastPosition?.lsn,
      },
      'the replica passed the commit LSN of applied events it does not have: the main database lost them (restored from an earlier backup, or failed over); they will be applied again',
    );
    return { partition, acked, behind, again: forgotten > 0 };
  }

  /**
   * Whether the replica still lacks every one of `lost` below its replay position, asked again on
   * one connection: the pass asked the position and the events on two connections of the pool,
   * and a replica restarted in between opens for reads at its consistent point, which may lie
   * below the position read first, so that events it had replayed looked lost (and the operator
   * was paged that the main database lost them). On one connection, a restart fails the question.
   */
  async #stillLost(lost: readonly AppliedRecord[]): Promise<boolean> {
    const client = await fromReplica(this.#deps.replica.connect());
    let broken: unknown;
    try {
      const position = await fromReplica(
        replicaPosition(client, this.#deps.replicaIsMain, { withLag: false }),
      );
      const replayed = parseLsn(position.lsn);
      const shown = await fromReplica(
        presentEventIds(
          client,
          lost.map((r) => r.eventId),
        ),
      );
      return lost.every((r) => !shown.has(r.eventId) && parseLsn(r.lsn) <= replayed);
    } catch (err) {
      broken = err;
      throw err;
    } finally {
      // A session that failed may be broken (by the very restart this guards against): it is
      // not given back to the pool for another question.
      client.release(broken instanceof Error ? broken : undefined);
    }
  }

  /**
   * Whether the replica follows the main database, so that events it lacks below its replay
   * position were lost by the main database. A replica whose WAL receiver does not stream may be
   * on another history: after a failover to a standby that never received the last commits, one
   * that had replayed them cannot follow the new timeline, and the new commits' LSNs fall below
   * its replay position. Handing those back would re-apply them every pass and blame the main
   * database; they wait instead, and the operator is told to look at the replica. Unknown (the
   * role may not read pg_stat_wal_receiver) counts as following.
   */
  async #replicaStreams(
    partition: number,
    lost: readonly AppliedRecord[],
    head: string | undefined,
  ): Promise<boolean> {
    if (this.#deps.replicaIsMain) {
      return true;
    }
    const receiver = (await fromReplica(replicaReplayState(this.#deps.replica)))?.receiver ?? null;
    if (receiver === null || receiver === 'streaming') {
      this.#stuckHeads.delete(partition);
      return true;
    }
    const stuck = `${lost.length} applied event(s) of partition ${partition} are not on the replica though it has replayed past their commit LSN (${lost[0]?.lsn}), and its WAL receiver is ${receiver}: it may be on another history than the main database (after a failover, re-clone it from the new primary); they wait, acknowledged once it streams again`;
    if (!this.#stuckBefore && this.#stuck === undefined) {
      this.#deps.logger.error(
        { partition, events: lost.length, receiver, replicaLsn: this.#lastPosition?.lsn },
        stuck,
      );
    }
    this.#stuck = stuck;
    if (head !== undefined) {
      this.#stuckHeads.set(partition, { entryId: head, since: performance.now(), why: stuck });
    }
    return false;
  }

  /** Acknowledges records that head the queue, announcing those this call settled. */
  async #confirm(
    partition: number,
    records: readonly AppliedRecord[],
    clock: () => number,
  ): Promise<number> {
    if (records.length === 0) {
      return 0;
    }
    const settled = records.slice(0, await this.#deps.eventLog.ack(partition, records));
    const now = clock();
    const at = new Date(now).toISOString();
    await this.#deps.live?.publish(
      settled.map((r) => ({
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
    for (const record of settled) {
      this.#deps.metrics.endToEnd.observe(Math.max(0, now - entryTime(record.entryId)) / 1000);
    }
    return settled.length;
  }
}
