import type { Redis } from 'ioredis';
import { parseLsn } from '../db/lsn.ts';
import { FencedError, type Lease } from '../db/queries/leases.ts';
import { EVENT_TYPES, upstreamIdsOf } from '../domain/events.ts';
import { UpstreamNotAppliedError } from '../domain/fold.ts';
import type { LivePublisher } from '../live/live-message.ts';
import { ReadOnlyWatch, writeRefusal } from '../log/capacity.ts';
import {
  decodeEntry,
  entryRecord,
  type LogEntry,
  type RawEntry,
  UndecodableEntryError,
} from '../log/codec.ts';
import {
  type DeadLetters,
  type Discards,
  discardedIds,
  type FailedEntry,
  failedEntryOf,
  failedEntryOfEvent,
  isDiscardedEntry,
  NotHolderError,
} from '../log/dead-letters.ts';
import { compareEntryIds } from '../log/entry-id.ts';
import type { EventLog } from '../log/event-log.ts';
import { CONSUMER_GROUP } from '../log/keys.ts';
import { isNoGroup } from '../log/redis.ts';
import { FailureSpell } from '../observability/failure-spell.ts';
import type { Logger } from '../observability/logger.ts';
import type { Metrics } from '../observability/metrics.ts';
import { reasonOf } from '../reason.ts';
import {
  type BatchRequest,
  type BatchResult,
  MainDatabaseChangedError,
  type MainSeen,
} from './apply-batch.ts';
import { Backoff, pause, pauseUnlessReconnected } from './backoff.ts';
import type { CircuitBreaker } from './circuit-breaker.ts';
import { deletedAmong, sayDeletedPending } from './deleted-pending.ts';
import { classifyFailure, isStatementTimeout } from './errors.ts';

export type ConsumerDeps = {
  /** Applies a batch to the main database (see BatchCombiner). */
  apply: (request: BatchRequest) => Promise<BatchResult>;
  eventLog: EventLog;
  deadLetters: DeadLetters;
  /** A connection of its own: XREADGROUP BLOCK would stall every other command sharing it. */
  reader: Redis;
  lease: Lease;
  /** False once the lease may have lapsed (e.g. after the process was frozen): stop reading. */
  leaseValid: () => boolean;
  breaker: CircuitBreaker;
  batchSize: number;
  maxAttempts: number;
  logger: Logger;
  metrics: Metrics;
  /** The live feed: applied and dead state changes are published to it. */
  live?: LivePublisher;
  /** How the main database is not where this partition's batches left it (mainChangeSince). */
  mainChange?: (seen: MainSeen) => Promise<MainDatabaseChangedError | undefined>;
  onBatch?: (stats: { applied: number; ms: number }) => void;
  onFailure?: () => void;
};

type StreamReply = [stream: string, entries: [string, string[] | null][]][] | null;
/**
 * A batch read from the stream, how many aggregates were blocked by dead letters then, and the
 * commit LSN of each of its entries already recorded as applied (waiting for the replica).
 */
type Read = {
  entries: RawEntry[];
  blockedAggregates: number;
  recorded?: ReadonlyMap<string, string>;
  /** Consumers other than this one holding entries of the partition, by name (reads of new ones). */
  strandedWith?: string[];
  /** `PartitionKeys.redeliveredThrough`, read with the batch: null unless the group was lost. */
  redeliveredThrough: string | null;
};
/**
 * A page of this consumer's own pending entries; `pageEnd` is the page's last id, where the next
 * page starts once this one is done.
 */
type OwnPendingRead = Read & { pageEnd: string; scan: number };

const BLOCK_MS = 1000;
/** How often an idle partition with entries waiting for the replica checks the main database. */
const IDLE_MAIN_CHECK_MS = 5000;
/** Entries of another consumer claimed per XPENDING / XCLAIM round. */
const STRANDED_PAGE = 1000;

class LeaseLapsedError extends Error {
  constructor(partition: number) {
    super(
      `partition ${partition}: the lease may have lapsed; counting no attempt, filing no dead letter`,
    );
    this.name = 'LeaseLapsedError';
  }
}

/**
 * The consumers other than `me` with entries pending, from an XPENDING summary:
 * `[count, first, last, [[consumer, count], ...] | null]`.
 */
export const consumersBesides = (summary: unknown, me: string): string[] => {
  const counts = Array.isArray(summary) ? summary[3] : undefined;
  if (!Array.isArray(counts)) {
    return [];
  }
  return counts.flatMap((pair) =>
    Array.isArray(pair) && pair[0] !== me && Number(pair[1]) > 0 ? [String(pair[0])] : [],
  );
};

/**
 * Applies one partition's stream in order, while this process holds the partition's lease. On
 * start, and after any failure, it first re-reads its own pending entries (id 0), so an entry read
 * before a crash or claimed from a dead owner is applied before anything newer.
 */
export class PartitionConsumer {
  readonly #deps: ConsumerDeps;
  readonly #partition: number;
  readonly #abort = new AbortController();
  readonly #transientBackoff = new Backoff({ baseMs: 100, capMs: 10_000 });
  readonly #retryBackoff = new Backoff({ baseMs: 200, capMs: 30_000 });
  /** The reader's connection is the process's to make again after a failover, as the API's is. */
  readonly #readerReadOnly = new ReadOnlyWatch();
  /** Aggregates with a failed entry awaiting retry: their later entries wait behind it. */
  readonly #holding = new Set<string>();
  /** The pass a re-read is already scheduled from, if any. */
  #rereadScheduledFor: number | undefined;
  #running: Promise<void> | undefined;
  #stopping: Promise<void> | undefined;
  #rereadOwnPending = true;
  /**
   * Whether this re-read of own pending entries checks those recorded as applied against the main
   * database: on start, after a claim, and once the main database is found changed.
   */
  #verifyRecorded = true;
  /** Where this partition's last batch left the main database; its next batch expects it there. */
  #mainSeen: MainSeen | undefined;
  /** When this partition, idle, last asked the main database whether it is still there. */
  #mainCheckedAt = 0;
  #cursor = '0';
  /** Which scan of own pending entries the cursor belongs to: a restart begins a new one. */
  #scan = 0;
  #lastError: string | undefined;
  /** Whether the last error was a read's (Redis away): the next read that answers ends it. */
  #lastErrorWasRead = false;
  #leaseLapsed = false;
  /** Closes of the reader's connection so far: a read out during one may have run twice. */
  #readerCloses = 0;
  readonly #failures: FailureSpell;

  constructor(deps: ConsumerDeps) {
    this.#deps = deps;
    this.#partition = deps.lease.partition;
    this.#failures = new FailureSpell(deps.logger, `projecting partition ${this.#partition}`);
    deps.reader.on('close', () => {
      this.#readerCloses += 1;
    });
  }

  get lastError(): string | undefined {
    return this.#lastError;
  }

  get partition(): number {
    return this.#partition;
  }

  start(): void {
    this.#running ??= this.#run();
  }

  /** Finishes the batch in flight, reads nothing new; a second call awaits the first. */
  stop(): Promise<void> {
    this.#stopping ??= (async () => {
      this.#abort.abort();
      // Interrupts a blocking XREADGROUP; what it would have read stays in the stream.
      this.#deps.reader.disconnect();
      await this.#running;
    })();
    return this.#stopping;
  }

  /**
   * Re-reads own pending entries from the first on the next turn: after a claim of a dead owner's
   * entries, whose ids may lie before the page being read now.
   */
  rereadOwnPending(): void {
    this.#rereadFromStart();
    this.#verifyRecorded = true;
  }

  async #run(): Promise<void> {
    const { logger } = this.#deps;
    while (!this.#abort.signal.aborted) {
      if (!this.#deps.leaseValid()) {
        // Renewal is overdue (a frozen process, an unreachable database): read nothing until the
        // lease manager either renews the lease or takes this consumer down.
        if (!this.#leaseLapsed) {
          logger.warn('lease may have lapsed, not reading');
        }
        this.#leaseLapsed = true;
        await pause(100, this.#abort.signal);
        continue;
      }
      this.#leaseLapsed = false;
      if (!this.#deps.breaker.admits()) {
        // Nothing read while the breaker cools down, or while another partition's batch probes
        // it: a read of our own pending entries restarts their idle times and counts a delivery,
        // and `outpost pending --idle` would show nothing waiting for the whole outage. Read
        // while a probe was out (until its connect timeout), it was a read every 50 ms.
        this.#rereadFromStart();
        await pause(Math.min(1000, Math.max(50, this.#deps.breaker.waitMs())), this.#abort.signal);
        continue;
      }
      let reading = true;
      try {
        const readerClosesBefore = this.#readerCloses;
        const scanBefore = this.#scan;
        const read = this.#rereadOwnPending ? await this.#readOwnPending() : await this.#readNew();
        reading = false;
        if (this.#lastErrorWasRead) {
          // Redis answers again. Kept until the next batch, a partition with nothing to apply
          // showed the outage's error, and /health the projector failing, long after it ended.
          this.#lastError = undefined;
          this.#lastErrorWasRead = false;
          this.#failures.ended();
        }
        if (this.#abort.signal.aborted) {
          continue;
        }
        if (this.#readerCloses !== readerClosesBefore) {
          // ioredis sends a read that got no reply again once it has reconnected, and Redis may
          // have run it both times: what the first run took went to our pending list unseen, and
          // this reply holds only what came after it. Applied now, it would go first.
          logger.warn(
            'the reader connection closed while a read was out: reading own pending entries again',
          );
          this.#rereadFromStart();
          continue;
        }
        if (read.strandedWith && read.strandedWith.length > 0) {
          // What was just read is newer than what they hold: it stays in our pending list, and
          // is read again, in order, after them. Only while the lease is still ours: the read
          // may itself be a late one, come back after the partition went to another process,
          // whose entries it would then take.
          if (this.#deps.leaseValid()) {
            await this.#claimStranded(read.strandedWith);
          } else {
            // Read again from our pending list, which reports them as every read does, and
            // claims them once the lease is ours again. A read of new entries would not: should
            // they be acknowledged meanwhile, it would apply what came after ours first.
            this.#rereadFromStart();
          }
          continue;
        }
        if (this.#scan !== scanBefore) {
          // Entries were claimed for this consumer while the read was out (the idle reclaim):
          // they may be older than what it brought, which waits in our pending list and is read
          // again after them. Applied now, it would go before them.
          continue;
        }
        if (read.entries.length === 0) {
          this.#pageDone(read);
          await this.#checkMainWhileIdle();
          continue;
        }
        if (!this.#deps.breaker.tryAcquire()) {
          // What was read stays in our pending list and is re-read once the breaker lets us.
          this.#rereadFromStart();
          await pause(
            Math.min(1000, Math.max(50, this.#deps.breaker.waitMs())),
            this.#abort.signal,
          );
          continue;
        }
        // Only one caller holds a half-open breaker's probe: this one, if it is half-open now.
        const probing = this.#deps.breaker.state === 'half_open';
        try {
          await this.#process(read, probing);
        } catch (err) {
          if (probing) {
            // Failed before the database could tell (Redis, say): the probe must not stay
            // taken, or no caller would ever be let through again.
            this.#deps.breaker.releaseProbe();
          }
          throw err;
        }
        this.#pageDone(read);
        this.#transientBackoff.reset();
        this.#lastError = undefined;
        this.#lastErrorWasRead = false;
        this.#failures.ended();
      } catch (err) {
        if (this.#abort.signal.aborted) {
          break;
        }
        if (err instanceof LeaseLapsedError) {
          // Read again once the lease is ours again, or not at all (the loop's first check).
          logger.warn(err.message);
          this.#rereadFromStart();
          continue;
        }
        if (err instanceof FencedError) {
          logger.warn(
            { err },
            'fenced: the lease on this partition lapsed or another process took it; nothing of the batch was committed',
          );
          // Shown until the lease manager's next round finds the lease lost and stops us.
          // Not "another process owns it": a lease outlived by a stalled link to the main database,
          // or a frozen process, fences a site's only projector too, which then takes it again.
          this.#lastError = `fenced: the lease on partition ${this.#partition} lapsed (a stalled link to the main database or a frozen process) or another process took it`;
          break;
        }
        if (isNoGroup(err)) {
          await this.#deps.eventLog
            .recreateGroup(this.#partition, logger)
            .catch((recreateError: unknown) => {
              logger.warn({ err: recreateError }, 'could not create the consumer group again yet');
            });
        }
        if (err instanceof MainDatabaseChangedError) {
          logger.error(
            { err },
            'the main database changed (restored from a backup, or failed over): checking the entries applied but not yet confirmed against it',
          );
          this.#mainSeen = undefined;
          this.#verifyRecorded = true;
          // Its WAL may start again below the commits acknowledged so far, in every partition: a
          // replica following it would be taken as behind them until it passed them.
          await this.#deps.eventLog.forgetAcknowledgedThrough().catch((forgetError: unknown) => {
            logger.warn(
              { err: forgetError },
              'could not forget how far events were acknowledged: the API forgets it once it finds the main database behind it',
            );
          });
        }
        if (this.#readerReadOnly.reconnectNow(writeRefusal(err), performance.now())) {
          logger.warn(
            'Redis has answered READONLY for a while (a failover behind REDIS_URL?): making the reader connection again',
          );
          this.#deps.reader.disconnect(true);
        }
        // A read's failure is Redis's; its error, ioredis's words, does not say so.
        this.#lastError = reading
          ? `reading partition ${this.#partition} from Redis failed: ${reasonOf(err)}`
          : reasonOf(err);
        this.#lastErrorWasRead = reading;
        this.#deps.onFailure?.();
        const delay = this.#transientBackoff.nextDelayMs();
        this.#failures.failed(
          err,
          { retryInMs: delay },
          reading
            ? this.#lastError
            : `projecting partition ${this.#partition} failed: ${this.#lastError}`,
        );
        this.#rereadFromStart();
        // After a failed read, a partition starts on the backlog, and stops saying its read
        // fails, as soon as Redis is back, not up to the backoff's cap later. A read uses the
        // shared connection too (the applied records of its own pending entries).
        await (reading
          ? pauseUnlessReconnected(
              delay,
              [this.#deps.reader, this.#deps.eventLog.redis],
              this.#abort.signal,
            )
          : pause(delay, this.#abort.signal));
      }
    }
  }

  /**
   * A partition with no batch to make never meets the check a batch makes first. After a failover
   * to a standby that never received its last commits, or a restore from before them, its
   * applied entries would wait, shown as waiting for the replica, until a new write came or the
   * new history's WAL passed their old commit LSNs: hours on a quiet site. So while entries wait
   * for the replica, an idle partition asks every few seconds; a change found is handled as a
   * batch's would be. A failure to ask is left to the next batch or the next look.
   */
  async #checkMainWhileIdle(): Promise<void> {
    const { mainChange, eventLog } = this.#deps;
    const seen = this.#mainSeen;
    if (!seen || !mainChange || Date.now() - this.#mainCheckedAt < IDLE_MAIN_CHECK_MS) {
      return;
    }
    this.#mainCheckedAt = Date.now();
    if ((await eventLog.peekApplied(this.#partition, 1)).length === 0) {
      return;
    }
    const change = await mainChange(seen).catch(() => undefined);
    if (change) {
      throw change;
    }
  }

  /**
   * After a failure, or a breaker that would not let a batch through, the next read is the first
   * page of our own pending entries again: the page that failed is retried before anything after
   * it, and before anything new. (Moving on past it would apply its aggregates' later events
   * first, and leave it to the idle reclaim.)
   */
  #rereadFromStart(): void {
    this.#rereadOwnPending = true;
    this.#cursor = '0';
    this.#scan += 1;
  }

  /** A page of own pending entries was handled: the next read starts after it, unless restarted. */
  #pageDone(read: Read | OwnPendingRead): void {
    if ('pageEnd' in read && read.scan === this.#scan) {
      this.#cursor = read.pageEnd;
    }
  }

  async #readOwnPending(): Promise<Read | OwnPendingRead> {
    if (this.#cursor === '0') {
      this.#holding.clear();
    }
    const scan = this.#scan;
    const read = await this.#read(this.#cursor);
    const pageEnd = read.entries.at(-1)?.[0];
    if (pageEnd === undefined) {
      // Past the last own pending entry: new entries next, unless a restart came during the read.
      if (scan === this.#scan) {
        this.#rereadOwnPending = false;
        this.#verifyRecorded = false;
        this.#cursor = '0';
      }
      return read;
    }
    const lsns = await this.#deps.eventLog.appliedLsnOf(
      read.entries.map(([id]) => id),
      this.#partition,
    );
    const recorded = new Map<string, string>();
    read.entries.forEach(([id], i) => {
      const lsn = lsns[i];
      if (lsn) {
        recorded.set(id, lsn);
      }
    });
    if (!this.#verifyRecorded) {
      // Entries already applied and waiting for the replica belong to the acker.
      return { ...read, entries: read.entries.filter(([id]) => !recorded.has(id)), pageEnd, scan };
    }
    // On start, after a claim, and once a batch found the main database changed (another
    // cluster or timeline, or its WAL behind this partition's last commit), they go to the main
    // database with the rest, where they are duplicates unless it lost them (restored from an
    // earlier backup, failed over): then they are applied again now, before anything after them.
    // Left to the acker, they would wait until the replica passed their old commit LSNs, perhaps
    // for hours on a quiet site, while their aggregates' newer events applied first. Not after
    // every failure: on a flaky link with a lagging replica that would send the whole backlog
    // of applied entries over the link again each time.
    return { ...read, recorded, pageEnd, scan };
  }

  #readNew(): Promise<Read> {
    return this.#read('>');
  }

  /**
   * Reads a batch and, in the same round trip, how many aggregates are blocked behind dead
   * letters: Redis answers the SCARD queued behind a blocking XREADGROUP once the read returns,
   * so the count is as fresh as the entries, and is almost always 0.
   */
  async #read(from: string): Promise<Read> {
    const { reader, eventLog, lease, batchSize } = this.#deps;
    const keys = eventLog.keys(this.#partition);
    const args: (string | number)[] = ['GROUP', CONSUMER_GROUP, lease.consumer, 'COUNT', batchSize];
    if (from === '>') {
      args.push('BLOCK', BLOCK_MS);
    }
    // The pending summary with every read, own pending entries too: a re-read from the start
    // that came before the next read of new entries (a retry, the breaker) would otherwise apply
    // what it holds before entries still stranded with another consumer.
    const pipeline = reader
      .pipeline()
      .call('XREADGROUP', ...args, 'STREAMS', keys.stream, from)
      .scard(keys.blockedAggregates)
      .xpending(keys.stream, CONSUMER_GROUP)
      .get(keys.redeliveredThrough);
    const replies = await pipeline.exec();
    const [
      [readError, reply] = [],
      [countError, blockedCount] = [],
      [pendingError, summary] = [],
      [markError, redeliveredThrough] = [],
    ] = replies ?? [];
    if (readError || countError || pendingError || markError) {
      throw readError ?? countError ?? pendingError ?? markError;
    }
    const entries = (reply as StreamReply)?.[0]?.[1] ?? [];
    return {
      // A pending entry whose stream entry was trimmed away comes back with null fields.
      entries: entries.map(([id, fields]) => [id, fields ?? []] as RawEntry),
      blockedAggregates: Number(blockedCount),
      strandedWith: consumersBesides(summary, lease.consumer),
      redeliveredThrough: (redeliveredThrough as string | null) ?? null,
    };
  }

  /**
   * Takes over the entries another consumer holds in this partition's stream, and reads this
   * consumer's own from the first, those among them, before anything new. Only the owner of the
   * partition's lease reads it, but a read a former owner sent before it lost the lease can
   * still reach Redis afterwards (held in its client's offline queue, or in the network while
   * its link was down) and take new entries: left to the idle reclaim, they would come back
   * after this consumer had applied later events of their aggregates (an update after the
   * unit's finish). Claimed at once, with no idle time: the lease is this consumer's, and the
   * former owner's writes are fenced.
   */
  async #claimStranded(owners: readonly string[]): Promise<void> {
    const { redis } = this.#deps.eventLog;
    const keys = this.#deps.eventLog.keys(this.#partition);
    const { stream } = keys;
    let claimed = 0;
    const deleted: string[] = [];
    for (const owner of owners) {
      for (;;) {
        const held = (await redis.xpending(
          stream,
          CONSUMER_GROUP,
          '-',
          '+',
          STRANDED_PAGE,
          owner,
        )) as [id: string, ...unknown[]][];
        if (held.length === 0) {
          break;
        }
        const asked = held.map(([id]) => id);
        const got = (await redis.xclaim(
          stream,
          CONSUMER_GROUP,
          this.#deps.lease.consumer,
          0,
          ...asked,
          'JUSTID',
        )) as string[];
        claimed += got.length;
        deleted.push(...(await deletedAmong(redis, keys, asked, got)));
      }
    }
    sayDeletedPending(this.#deps.logger, deleted, 'claimed from another consumer');
    this.#deps.logger.warn(
      { claimed, from: owners },
      'claimed entries another consumer read after this one took the partition over',
    );
    this.rereadOwnPending();
  }

  /**
   * A consumer group created again delivers a second time what was acknowledged before, up to
   * `redeliveredThrough`: applied events are found applied, dead-lettered ones keep their one
   * letter, but an event an operator discarded from the dead letters is in neither place, and
   * would apply now, after the later events of its aggregate. Those are acknowledged again instead.
   */
  async #leaveOutDiscarded(
    entries: RawEntry[],
    redeliveredThrough: string | null,
  ): Promise<RawEntry[]> {
    if (
      redeliveredThrough === null ||
      !entries.some(([id]) => compareEntryIds(id, redeliveredThrough) <= 0)
    ) {
      return entries;
    }
    const readDiscarded = this.#discarded ?? discardedIds(this.#deps.eventLog, this.#partition);
    this.#discarded = readDiscarded;
    const discarded = await readDiscarded();
    const left = new Set(
      entries
        .filter(
          ([id, fields]) =>
            compareEntryIds(id, redeliveredThrough) <= 0 &&
            isDiscardedEntry(discarded, id, entryRecord(fields).event_id),
        )
        .map(([id]) => id),
    );
    if (left.size === 0) {
      return entries;
    }
    this.#requireLease();
    const { eventLog, logger } = this.#deps;
    await eventLog.redis.xack(eventLog.keys(this.#partition).stream, CONSUMER_GROUP, ...left);
    logger.warn(
      { entryIds: [...left] },
      'left out events an operator discarded from the dead letters, delivered again by a consumer group created again',
    );
    return entries.filter(([id]) => !left.has(id));
  }

  #discarded: (() => Promise<Discards>) | undefined;

  async #process(
    { entries: read, blockedAggregates, recorded = new Map(), redeliveredThrough }: Read,
    probing: boolean,
  ): Promise<void> {
    const started = performance.now();
    const raw = await this.#leaveOutDiscarded(read, redeliveredThrough);
    const decoded: LogEntry[] = [];
    const undecodable: { entry: RawEntry; err: UndecodableEntryError }[] = [];
    for (const entry of raw) {
      try {
        decoded.push(decodeEntry(entry));
      } catch (err) {
        if (!(err instanceof UndecodableEntryError)) {
          throw err;
        }
        if (recorded.has(entry[0])) {
          // Applied, and its body trimmed away since: nothing to check it by; the acker settles it.
          continue;
        }
        undecodable.push({ entry, err });
      }
    }
    // Blocked before this batch: asked before its undecodable entries are filed, which block
    // their aggregates only from their own place in the stream on.
    const blocked =
      blockedAggregates === 0
        ? new Set<string>()
        : await this.#deps.eventLog.blocked(this.#partition, [
            ...new Set(decoded.flatMap((e) => [e.event.aggregate_id, ...upstreamIdsOf(e.event)])),
          ]);
    const blockedFrom = new Map<string, string>();
    // An undecodable entry is filed (and blocks its aggregate) only once nothing earlier of its
    // aggregate waits: filed first, it would send an earlier event still to apply, or to retry,
    // to the dead letters behind it. Until then it and what follows it wait in our pending list.
    const waitingFrom = new Map<string, string>();
    const unsettledBefore = (aggregateId: string, entryId: string) =>
      this.#holding.has(aggregateId) ||
      decoded.some(
        (e) =>
          e.event.aggregate_id === aggregateId &&
          compareEntryIds(e.entryId, entryId) < 0 &&
          !recorded.has(e.entryId),
      );
    for (const { entry, err } of undecodable) {
      const failed = failedEntryOf(entry);
      const { aggregateId, entryId } = failed;
      if (
        waitingFrom.has(aggregateId) ||
        (!blockedFrom.has(aggregateId) && unsettledBefore(aggregateId, entryId))
      ) {
        if (!waitingFrom.has(aggregateId)) {
          waitingFrom.set(aggregateId, entryId);
        }
        continue;
      }
      await this.#fail(failed, err);
      if (!blockedFrom.has(aggregateId)) {
        blockedFrom.set(aggregateId, entryId);
      }
    }
    if (waitingFrom.size > 0) {
      // Read again, after a wait: by then what they wait for has applied, or failed again. Held
      // meanwhile, so that their aggregates' entries in later pages wait too; but only once this
      // page is applied, or what they wait for would itself be held back.
      this.#scheduleReread();
    }
    const holdWaiting = () => {
      for (const aggregateId of waitingFrom.keys()) {
        this.#holding.add(aggregateId);
      }
    };
    const isBlocked = (aggregateId: string, entryId: string) => {
      const from = blockedFrom.get(aggregateId);
      return blocked.has(aggregateId) || (from !== undefined && compareEntryIds(entryId, from) > 0);
    };
    const isWaiting = (aggregateId: string, entryId: string) => {
      const from = waitingFrom.get(aggregateId);
      return from !== undefined && compareEntryIds(entryId, from) > 0;
    };
    const applicable: LogEntry[] = [];
    const behindBlock: LogEntry[] = [];
    for (const entry of decoded) {
      if (isWaiting(entry.event.aggregate_id, entry.entryId)) {
        continue;
      }
      // An applied event is no later event of a dead-lettered aggregate's: it came before.
      (isBlocked(entry.event.aggregate_id, entry.entryId) && !recorded.has(entry.entryId)
        ? behindBlock
        : applicable
      ).push(entry);
    }
    // Those behind a block whose events the main database already has (a second entry of an
    // event applied before the block: an append re-sent by ioredis, a replay racing the
    // projector) are recorded as applied; the rest follow the block into the dead letters.
    // Filed without asking, an applied event was listed as dead, and a discard recorded it as
    // never applied.
    for (const entry of await this.#recordAppliedAmong(behindBlock)) {
      const filed = await this.#deadLetter(
        failedEntryOfEvent(entry.entryId, entry.event),
        [
          {
            at: new Date().toISOString(),
            // Ahead in the log, not always earlier: a replayed event lies after those written
            // since, and one of those may be the dead letter it is held behind.
            error: 'an event of this aggregate ahead of it in the log is dead-lettered',
          },
        ],
        [entry.event.aggregate_id],
      );
      if (filed) {
        continue;
      }
      // No longer blocked: an operator discarded the block's last letter since the read, and
      // the event applies in its place.
      blocked.delete(entry.event.aggregate_id);
      applicable.push(entry);
    }
    if (applicable.length === 0) {
      holdWaiting();
      // Nothing went to the database, so nothing was learnt about it: a half-open breaker must
      // not close on this.
      if (probing) {
        this.#deps.breaker.releaseProbe();
      }
      return;
    }
    const result = await this.#applyGuarded(applicable);
    holdWaiting();
    const { applied, duplicates, failed, deferred, commitLsn } = result;
    if (result.mainPosition) {
      this.#mainSeen = {
        ...result.mainPosition,
        eventId: applied.at(-1)?.event.event_id ?? this.#mainSeen?.eventId,
      };
    }
    const rerecorded = await this.#forgetStale(applicable, recorded, result);
    const done = [
      ...applied,
      ...duplicates.filter((e) => !recorded.has(e.entryId) || rerecorded.has(e.entryId)),
    ];
    // Before the record: once recorded, a creation applied in this batch may be acknowledged, and
    // gone from the in-flight index, before the files behind it are judged.
    const awaiting = await this.#awaitingTheirUpstream(failed);
    await this.#recordDone(done, commitLsn);
    for (const { entry, error } of failed) {
      this.#holding.add(entry.event.aggregate_id);
      const failedEntry = failedEntryOfEvent(entry.entryId, entry.event);
      if (awaiting.has(entry.entryId)) {
        // Its unit (or file) is created later in the stream, a start retried from the dead
        // letters behind its files: it waits for it, without an attempt against it. Counted, a
        // backlog in between would use up its attempts before the start came.
        continue;
      }
      const blockedUpstream = upstreamIdsOf(entry.event).filter(
        (u) => blocked.has(u) || blockedFrom.has(u),
      );
      if (blockedUpstream.length > 0) {
        // Its unit (or a file of its package) is not applied because it is dead: no attempt
        // can succeed before an operator retries that one, so it follows it at once. Unless the
        // block was lifted since the read: then it is read again, held meanwhile, and waits for
        // a retried unit, or fails on its own if the unit was discarded.
        const filed = await this.#deadLetter(
          failedEntry,
          [
            {
              at: new Date().toISOString(),
              error: `${error.message}: an event of the aggregate it derives from is dead-lettered`,
            },
          ],
          blockedUpstream,
        );
        if (!filed) {
          this.#scheduleReread();
        }
      } else {
        await this.#fail(failedEntry, error);
      }
    }
    for (const entry of deferred) {
      // Held back behind what its aggregate or its unit waits for: its aggregate's later entries
      // wait too, and an undecodable one is not filed ahead of it. Also when the event it waited
      // behind was just filed as dead: it is behind the cursor until the next pass, and a later
      // entry read before then would go ahead of it once an operator discards that letter.
      this.#holding.add(entry.event.aggregate_id);
    }
    if (deferred.length > 0 || awaiting.size > 0) {
      this.#scheduleReread();
    } else if (failed.length === 0 && this.#holding.size === 0 && !this.#rereadOwnPending) {
      // Past its own pending entries with nothing failed or held: nothing waits for a retry,
      // and the next failure starts again from a short wait, not from where this consumer's
      // earlier failures, hours ago perhaps, left the backoff. (During a re-read a page without
      // the failing entry says nothing about it.)
      this.#retryBackoff.reset();
      // A re-read scheduled at the old backoff would otherwise make the next failure wait for it.
      this.#rereadScheduledFor = undefined;
    }
    const ms = performance.now() - started;
    this.#deps.metrics.eventsApplied.inc(applied.length);
    this.#deps.metrics.batchDuration.observe(ms / 1000);
    this.#deps.onBatch?.({ applied: applied.length, ms });
    this.#deps.logger.debug(
      {
        applied: applied.length,
        duplicates: duplicates.length,
        commitLsn,
        ms,
      },
      'batch applied',
    );
  }

  /**
   * Takes out of the applied queue the records the main database contradicts, and answers their
   * entry ids: those of events it does not have (lost, and applied again now, or failed or held
   * back); those at a commit LSN past its own WAL position, which it cannot have written (the
   * event was applied again earlier and its record not yet moved: the process died in between,
   * or a later part of the batch failed); and a second entry of an event applied again now by
   * another. Those applied or found now are recorded anew with this batch, at its commit LSN; the
   * acker would wait on the old LSNs, perhaps for ever.
   */
  async #forgetStale(
    sent: readonly LogEntry[],
    recorded: ReadonlyMap<string, string>,
    { applied, duplicates, commitLsn }: BatchResult,
  ): Promise<ReadonlySet<string>> {
    if (recorded.size === 0) {
      return new Set();
    }
    const present = new Set(duplicates.map((e) => e.entryId));
    const appliedNow = new Set(applied.map((e) => e.event.event_id));
    const position = present.size > 0 ? parseLsn(commitLsn) : 0n;
    const stale = sent.filter((e) => {
      const lsn = recorded.get(e.entryId);
      return (
        lsn !== undefined &&
        (!present.has(e.entryId) || parseLsn(lsn) > position || appliedNow.has(e.event.event_id))
      );
    });
    if (stale.length === 0) {
      return new Set();
    }
    const forgotten = await this.#deps.eventLog.forgetAppliedEntries(
      this.#partition,
      stale.map((e) => e.entryId),
    );
    // What the acker did not hand back first: each loss is counted once.
    this.#deps.metrics.eventsReapplied.inc({ found_by: 'projector' }, forgotten);
    this.#deps.logger.error(
      {
        events: stale.length,
        firstEventId: stale[0]?.event.event_id,
        firstEntryId: stale[0]?.entryId,
        recordedLsn: stale[0] && recorded.get(stale[0].entryId),
        mainLsn: commitLsn,
      },
      'the main database lacks events it had applied (restored from an earlier backup, or failed over): applying them again',
    );
    return new Set(stale.map((e) => e.entryId));
  }

  /**
   * Entries that failed for want of the aggregate they derive from, whose creation is still in
   * the stream after them.
   */
  async #awaitingTheirUpstream(failed: BatchResult['failed']): Promise<ReadonlySet<string>> {
    const wanting = failed.flatMap(({ entry, error }) =>
      error instanceof UpstreamNotAppliedError ? [{ entry, upstreamId: error.upstreamId }] : [],
    );
    if (wanting.length === 0) {
      return new Set();
    }
    const upstreamIds = [...new Set(wanting.map((w) => w.upstreamId))];
    const inflight = await this.#deps.eventLog.readInflightMany(upstreamIds, this.#partition);
    const creations = new Map(
      upstreamIds.map((id, i) => [
        id,
        (inflight[i] ?? []).filter((e) => EVENT_TYPES[e.event.type]?.creates),
      ]),
    );
    return new Set(
      wanting
        .filter(({ entry, upstreamId }) =>
          creations.get(upstreamId)?.some((c) => compareEntryIds(c.entryId, entry.entryId) > 0),
        )
        .map(({ entry }) => entry.entryId),
    );
  }

  /** A batch to the main database, its outcome told to the breaker. */
  async #applyGuarded(entries: LogEntry[], held?: ReadonlySet<string>): Promise<BatchResult> {
    try {
      const result = await this.#applyIsolating(entries, held);
      this.#deps.breaker.recordSuccess();
      return result;
    } catch (err) {
      if (!(err instanceof FencedError || err instanceof MainDatabaseChangedError)) {
        this.#deps.breaker.recordFailure();
      }
      throw err;
    }
  }

  /** Records entries as applied at `commitLsn`, for the acker, and tells the live feed. */
  async #recordDone(done: readonly LogEntry[], commitLsn: string): Promise<void> {
    const appliedAt = new Date().toISOString();
    const unpublished = await this.#deps.eventLog.recordApplied(
      this.#partition,
      done.map(({ entryId, event }) => ({
        lsn: commitLsn,
        entryId,
        eventId: event.event_id,
        aggregateId: event.aggregate_id,
        aggregateType: event.aggregate_type,
        type: event.type,
      })),
      done.length > 0 && (await this.#deps.live?.listening())
        ? done.map(({ entryId, event }) => ({
            event_id: event.event_id,
            aggregate_id: event.aggregate_id,
            aggregate_type: event.aggregate_type,
            type: event.type,
            state: 'applied' as const,
            partition: this.#partition,
            entry_id: entryId,
            at: appliedAt,
          }))
        : [],
    );
    if (unpublished > 0) {
      this.#deps.logger.warn({ unpublished }, 'live feed publish failed');
    }
  }

  /**
   * Of entries behind a dead letter of their aggregate, records those whose events the main
   * database has as applied, and answers the others. Asked with each of their aggregates held, so
   * the batch writes nothing but a commit LSN its events may lack.
   */
  async #recordAppliedAmong(entries: LogEntry[]): Promise<LogEntry[]> {
    if (entries.length === 0) {
      return [];
    }
    const { duplicates, commitLsn } = await this.#applyGuarded(
      entries,
      new Set(entries.map((e) => e.event.aggregate_id)),
    );
    if (duplicates.length > 0) {
      await this.#recordDone(duplicates, commitLsn);
    }
    const applied = new Set(duplicates.map((e) => e.entryId));
    return entries.filter((e) => !applied.has(e.entryId));
  }

  /**
   * A batch that fails on data in PostgreSQL (a constraint, a value it cannot store) is applied
   * again one event at a time, so one poison event cannot hold back the events around it.
   */
  async #applyIsolating(
    entries: LogEntry[],
    held: ReadonlySet<string> = this.#holding,
  ): Promise<BatchResult> {
    try {
      return await this.#deps.apply({
        entries,
        lease: this.#deps.lease,
        heldAggregates: held,
        ...(this.#mainSeen ? { mainSeen: this.#mainSeen } : {}),
      });
    } catch (err) {
      if (err instanceof FencedError) {
        throw err;
      }
      if (isStatementTimeout(err) && entries.length > 1) {
        // Too much for the link in the time allowed, perhaps: the same batch again would only
        // time out again, and hold the partition for ever.
        const half = Math.ceil(entries.length / 2);
        return this.#applyInParts([entries.slice(0, half), entries.slice(half)], held);
      }
      if (classifyFailure(err) === 'transient') {
        throw err;
      }
      const [only] = entries;
      if (entries.length === 1 && only) {
        return {
          applied: [],
          duplicates: [],
          failed: [{ entry: only, error: err as Error }],
          deferred: [],
          commitLsn: '0/0',
        };
      }
      return this.#applyInParts(
        entries.map((entry) => [entry]),
        held,
      );
    }
  }

  /**
   * Applies `parts` one after another; an entry whose aggregate failed or was held back in an
   * earlier part waits, so the aggregate's events keep their order.
   */
  async #applyInParts(parts: LogEntry[][], held: ReadonlySet<string>): Promise<BatchResult> {
    const combined: BatchResult = {
      applied: [],
      duplicates: [],
      failed: [],
      deferred: [],
      commitLsn: '0/0',
    };
    const stopped = new Set<string>();
    for (const part of parts) {
      const free: LogEntry[] = [];
      for (const entry of part) {
        const id = entry.event.aggregate_id;
        if (held.has(id) || stopped.has(id)) {
          combined.deferred.push(entry);
        } else {
          free.push(entry);
        }
      }
      if (free.length === 0) {
        continue;
      }
      // Held: what failed or waits in an earlier part, so a file of a unit whose start failed
      // there waits too (planning holds a file back only while its unit is not applied).
      const one = await this.#applyIsolating(free, new Set([...held, ...stopped]));
      combined.applied.push(...one.applied);
      combined.duplicates.push(...one.duplicates);
      combined.failed.push(...one.failed);
      combined.deferred.push(...one.deferred);
      for (const { entry } of one.failed) {
        stopped.add(entry.event.aggregate_id);
      }
      for (const entry of one.deferred) {
        stopped.add(entry.event.aggregate_id);
      }
      if (one.applied.length + one.duplicates.length > 0) {
        combined.commitLsn = one.commitLsn;
      }
      combined.mainPosition = one.mainPosition ?? combined.mainPosition;
    }
    return combined;
  }

  async #fail(entry: FailedEntry, error: Error) {
    this.#requireLease();
    const { eventLog, maxAttempts, logger } = this.#deps;
    this.#deps.onFailure?.();
    const history = await eventLog.recordAttempt(
      this.#partition,
      entry.entryId,
      error.message,
      this.#deps.lease.consumer,
    );
    if (history === undefined) {
      // Taken over (or settled) since it was read: the lease lapsed meanwhile.
      throw new LeaseLapsedError(this.#partition);
    }
    if (history.length >= maxAttempts || error instanceof UndecodableEntryError) {
      await this.#deadLetter(entry, history);
      return;
    }
    logger.warn(
      {
        entryId: entry.entryId,
        eventId: entry.eventId,
        attempt: history.length,
        err: error,
      },
      'event failed to apply, will retry',
    );
    this.#scheduleReread();
  }

  /**
   * Counting an attempt and dead-lettering are not fenced as a batch's write is: a process that
   * stalled past its lease since it read the entry would count against, or file, one the
   * partition's new owner holds, perhaps applied by it already, on a block or an attempt count an
   * operator has reset meanwhile. Checked here first, so such a process reads its page again once
   * the lease is renewed; the scripts check again that this consumer holds the entry.
   */
  #requireLease(): void {
    if (!this.#deps.leaseValid()) {
      throw new LeaseLapsedError(this.#partition);
    }
  }

  /**
   * Files `entry` as a dead letter; false when it only `follows` blocks that are lifted since the
   * batch read them, and stays pending.
   */
  async #deadLetter(
    entry: FailedEntry,
    history: { at: string; error: string }[],
    follows: readonly string[] = [],
  ): Promise<boolean> {
    this.#requireLease();
    const deadId = await this.#deps.deadLetters
      .add(this.#partition, entry, history, { follows, consumer: this.#deps.lease.consumer })
      .catch((err: unknown) => {
        throw err instanceof NotHolderError ? new LeaseLapsedError(this.#partition) : err;
      });
    if (deadId === null) {
      return false;
    }
    this.#holding.delete(entry.aggregateId);
    this.#deps.logger.warn(
      {
        entryId: entry.entryId,
        eventId: entry.eventId,
        deadId,
        error: history.at(-1)?.error,
      },
      'event moved to dead letters',
    );
    return true;
  }

  #scheduleReread() {
    const scan = this.#scan;
    if (this.#rereadScheduledFor === scan) {
      // One wait per pass: each page with a failed or held entry asking again would take the
      // backoff to its cap within a pass, though only the first timer acts.
      return;
    }
    this.#rereadScheduledFor = scan;
    const delay = this.#retryBackoff.nextDelayMs();
    setTimeout(() => {
      // A pass of its own from the first page, unless one has begun since this was scheduled
      // (it meets the failed event again). Only setting the flag, a timer that fired during the
      // re-read under way was undone when that re-read reached its end and cleared the flag;
      // restarting on every timer, pages of deferred entries scheduling one each could keep the
      // re-read from ever reaching the entries that would release them.
      if (this.#scan === scan) {
        this.#rereadFromStart();
      }
    }, delay).unref();
  }
}
