import { randomUUID } from 'node:crypto';
import type pg from 'pg';
import {
  acquireLease,
  claimSite,
  heartbeat,
  type Lease,
  leaseHoldings,
  leaveMembers,
  liveMembers,
  releaseLeases,
  releaseSite,
  renewLeases,
  renewSiteClaim,
  SITE_SILENCE_TTLS,
} from '../db/queries/leases.ts';
import { FailureSpell } from '../observability/failure-spell.ts';
import type { Logger } from '../observability/logger.ts';
import { anotherLogHolds, anotherLogRefused, siteTakenOver } from '../ops/lease-report.ts';
import { reasonOf } from '../reason.ts';
import { pause } from './backoff.ts';

export type LeaseEvents = {
  /** A partition is ours: claim its pending entries and start applying. */
  acquired: (lease: Lease) => Promise<void>;
  /** Stop applying this partition (lost, or being handed to another process). */
  stopped: (partition: number) => Promise<void>;
};

/**
 * Trusted locally until both ends pass: `validUntil` on the monotonic clock, as a wall clock
 * stepped back (NTP reached again after an outage) would stretch a stale owner's trust past the
 * lease's end in the database; `wallUntil` on the wall clock, as the monotonic one stands still
 * while the host is suspended, and a host woken after minutes would trust a lease long lost.
 */
type Held = { lease: Lease; validUntil: number; wallUntil: number };

/** When a lease renewed (or taken) from now on stops being trusted locally, on both clocks. */
const trustedFrom = (ttlMs: number) => {
  const validity = validityMs(ttlMs);
  return { validUntil: performance.now() + validity, wallUntil: Date.now() + validity };
};

export type LeaseManagerDeps = {
  pool: pg.Pool;
  /** Whose partitions: sites sharing the main database each have their own. */
  site: string;
  /**
   * The id of the Redis log this process applies, recorded beside it (ops/site-name.ts): absent,
   * the process does not claim its site name for that log (tests of the leases alone).
   */
  logId?: () => Promise<string>;
  consumer: string;
  partitions: number;
  ttlMs: number;
  logger: Logger;
  events: LeaseEvents;
  /**
   * Lease queries reach the same database as the batches: their failures count there too, and
   * a round that succeeds after a failed one, or once the cool-down is over, closes it.
   */
  breaker?: { state: string; recordSuccess: () => void; recordFailure: () => void };
};

/**
 * Holds this process's fair share of the partitions. Leases live in the main database because the
 * fencing token must be checked in the same transaction that applies events. Renewal runs every
 * third of the TTL; a process that was frozen longer than that finds its local validity expired
 * and stops reading before the database could tell it so.
 */
export class LeaseManager {
  readonly #held = new Map<number, Held>();
  /**
   * Partitions given up without holding up the lease rounds (handed over, or lost), until their
   * consumers have stopped: not taken again before, as two consumers of one partition would
   * run side by side in this process.
   */
  readonly #stopping = new Map<number, Promise<void>>();
  /** Why a partition given up could not be stopped: said until the process restarts. */
  #stopFailure: string | undefined;
  /**
   * When a partition last failed to start (by the monotonic clock), until a round goes through
   * the partitions without a failed start.
   */
  readonly #failedStarts = new Map<number, number>();
  readonly #abort = new AbortController();
  readonly #instance = randomUUID();
  #running: Promise<void> | undefined;
  #lastError: string | undefined;
  /** Whether this process has beaten under its name: a beat by another since then is a twin's. */
  #beaten = false;
  /** When a twin's beat was last met: twins need not alternate strictly, one may beat twice. */
  #twinMetAt: number | undefined;
  /** The log's id as last read, and the one the site was last claimed with. */
  #log: string | undefined;
  /**
   * This process's last renewal of the claim: the log it claimed with, the time the main database
   * wrote (releaseSite names it), and the time by the monotonic clock.
   */
  #claimed: { log: string; renewedAt: string; atMs: number } | undefined;
  /** Why this process takes no partition: its site name is applied from another log. */
  #refusal: string | undefined;
  #waiting: string | undefined;
  /** The projector of another log last told of, so that each is told once. */
  #refusedMet: string | null = null;

  readonly #failures: FailureSpell;

  constructor(private readonly deps: LeaseManagerDeps) {
    this.#failures = new FailureSpell(deps.logger, 'keeping the partition leases');
  }

  get owned(): number[] {
    return [...this.#held.keys()].sort((a, b) => a - b);
  }

  /**
   * Why partitions of this process's share are not taken yet, when it is its own name that holds
   * them (a previous run killed without giving them back): events wait up to a lease TTL with
   * every other sign saying the projector runs.
   */
  get waiting(): string | undefined {
    return this.#waiting;
  }

  get lastError(): string | undefined {
    return (
      this.#lastError ??
      this.#refusal ??
      this.#stopFailure ??
      (this.#twinNow() ? twinMessage(this.deps.consumer) : undefined)
    );
  }

  #twinNow(): boolean {
    return this.#twinMetAt !== undefined && performance.now() - this.#twinMetAt < this.deps.ttlMs;
  }

  isValid(partition: number): boolean {
    const held = this.#held.get(partition);
    return held !== undefined && held.validUntil > performance.now() && held.wallUntil > Date.now();
  }

  start(): void {
    this.#running ??= this.#run();
  }

  /** Resolves once every partition given up so far has stopped and, if handed over, been released. */
  async settled(): Promise<void> {
    await Promise.all(this.#stopping.values());
  }

  async stop(): Promise<void> {
    this.#abort.abort();
    await this.#running;
    await this.#giveAll();
    await this.settled();
    await leaveMembers(this.deps.pool, this.deps.site, this.deps.consumer, this.#instance).catch(
      () => undefined,
    );
    if (this.#claimed !== undefined && !this.#refusal) {
      await releaseSite(
        this.deps.pool,
        { site: this.deps.site, log: this.#claimed.log, renewedAt: this.#claimed.renewedAt },
        this.deps.ttlMs,
      ).catch(() => undefined);
    }
  }

  async #run(): Promise<void> {
    while (!this.#abort.signal.aborted) {
      try {
        await this.tick();
        if (this.#lastError !== undefined || this.deps.breaker?.state === 'half_open') {
          // The database the last round could not reach answers again, or the breaker's cool-down
          // is over and this round is as good a probe as a batch (a process whose partitions
          // went elsewhere has no batch left to probe with). Not after every round: leases pass
          // where batches may not (a revoked privilege, a column lost in a restore), and a
          // success each round would close the breaker those batches keep opening.
          this.deps.breaker?.recordSuccess();
        }
        this.#lastError = undefined;
        this.#failures.ended();
      } catch (err) {
        this.#lastError = reasonOf(err);
        if (!(err instanceof PartitionStartError || err instanceof SiteClaimUnconfirmedError)) {
          this.deps.breaker?.recordFailure();
        }
        this.#failures.failed(err, {}, `keeping the partition leases failed: ${this.#lastError}`);
      }
      // After a failed round the next comes sooner: the leases it renewed stay trusted for two
      // thirds of the TTL from its start, and one that did not renew them has used up part of it.
      const roundsPerTtl = this.#lastError === undefined ? 3 : 10;
      await pause(Math.max(50, Math.floor(this.deps.ttlMs / roundsPerTtl)), this.#abort.signal);
    }
  }

  /**
   * One round: renew what we hold, heartbeat, take or give partitions toward our fair share. The
   * renewal comes first and in one statement, so a heartbeat held up (a lock on the roster, a
   * slow link) costs the held partitions nothing.
   */
  async tick(): Promise<void> {
    const { pool, site, consumer, partitions, ttlMs, logger } = this.deps;
    await this.#renewHeld();
    // Before the beat: a process refused the site does not join its roster, where it would
    // count in its share and overwrite a process of the other log under the same name.
    const refused = await this.#claimSite();
    if (refused !== undefined) {
      // Given back before anything else can fail: a refused process must not go on applying.
      await this.#giveAll();
      if (this.#beaten) {
        // Refused after it held the site (another log took the name): left in the roster, it
        // would count in the holder's share of the partitions for a TTL.
        await leaveMembers(pool, site, consumer, this.#instance);
        this.#beaten = false;
      }
      const refusal = await refused();
      if (this.#refusal === undefined) {
        logger.error({ site }, refusal);
      }
      this.#refusal = refusal;
      return;
    }
    this.#refusal = undefined;
    const previous = await heartbeat(pool, site, consumer, this.#instance);
    // A restarted process meets its former self's beat once, on its first round; a process
    // meeting another's beat after its own shares its name with a live one. The group then sees
    // them as one consumer with one pending list, and the check that takes entries another
    // consumer read after a takeover cannot tell them apart.
    if (this.#beaten && previous !== null && previous !== this.#instance) {
      if (!this.#twinNow()) {
        logger.error({ consumer }, twinMessage(consumer));
      }
      this.#twinMetAt = performance.now();
    }
    this.#beaten = true;
    const members = Math.max(1, (await liveMembers(pool, site, ttlMs)).length);
    const share = Math.ceil(partitions / members);
    for (const partition of this.owned.slice(share)) {
      logger.info({ partition, members }, 'handing partition over to balance load');
      this.#inBackground(partition, () => this.#give(partition));
    }
    if (this.#held.size >= share) {
      this.#waiting = undefined;
      return;
    }
    for (const partition of this.#takingOrder()) {
      if (this.#held.size >= share) {
        break;
      }
      if (
        this.#held.has(partition) ||
        this.#stopping.has(partition) ||
        this.#abort.signal.aborted
      ) {
        continue;
      }
      const trusted = trustedFrom(ttlMs);
      const token = await acquireLease(pool, site, partition, consumer, ttlMs);
      if (token !== undefined) {
        const lease = { site, partition, consumer, token };
        this.#held.set(partition, { lease, ...trusted });
        logger.info({ partition, token }, 'lease acquired');
        try {
          await this.deps.events.acquired(lease);
        } catch (err) {
          // Starting it failed (Redis away while claiming the previous owner's entries): kept, the
          // lease would be renewed forever with nothing reading the partition. Given back, it is
          // taken again on a later round, here or by another process. The round ends here, as a
          // start on a stalled Redis takes a command timeout and the held leases wait for the
          // next round's renewal.
          this.#failedStarts.set(partition, performance.now());
          await this.#give(partition);
          throw new PartitionStartError(partition, err);
        }
      }
    }
    // A round with no start failed: the next takes in the order of our name again.
    this.#failedStarts.clear();
    await this.#sayLeasedToOurName();
  }

  /**
   * The partitions in the order a round tries to take them: from a place derived from our name,
   * so joining processes do not all race for partition 0, and those whose start failed last, the
   * longest failed first. Tried first again, a partition that cannot be started (its previous
   * owner's entries unclaimable) would end every round before the others, free, were taken.
   */
  #takingOrder(): number[] {
    const { consumer, partitions } = this.deps;
    const offset = [...consumer].reduce((sum, ch) => sum + ch.charCodeAt(0), 0) % partitions;
    const failedAt = (partition: number) => this.#failedStarts.get(partition) ?? 0;
    return Array.from({ length: partitions }, (_, i) => (offset + i) % partitions).sort(
      (a, b) => failedAt(a) - failedAt(b),
    );
  }

  /** Partitions live-leased to this process's name that it does not hold: see `waiting`. */
  async #sayLeasedToOurName(): Promise<void> {
    const { pool, site, consumer, ttlMs, logger } = this.deps;
    // Not worth failing the round for: it only says why.
    const holdings = await leaseHoldings(pool, site).catch(() => []);
    const kept = holdings
      .filter(
        (h) =>
          h.live &&
          h.owner === consumer &&
          !this.#held.has(h.partition) &&
          !this.#stopping.has(h.partition),
      )
      .map((h) => h.partition);
    const waiting =
      kept.length === 0
        ? undefined
        : `partition${kept.length > 1 ? 's' : ''} ${kept.join(', ')} leased to ${consumer}, this process's own name, but not held by it: a previous run stopped without giving ${kept.length > 1 ? 'them' : 'it'} back (killed?), or another process runs with the same OUTPOST_CONSUMER; taken when the lease lapses, within ${Math.ceil(ttlMs / 1000)} s of that run's last renewal`;
    if (waiting !== undefined && waiting !== this.#waiting) {
      logger.warn({ partitions: kept, consumer }, waiting);
    }
    this.#waiting = waiting;
  }

  /**
   * Claims the site name for this process's log (claimSite). Refused, answers how to say why,
   * asked once the partitions are given back.
   */
  async #claimSite(): Promise<(() => Promise<string>) | undefined> {
    const { pool, site, consumer, ttlMs, logger } = this.deps;
    if (this.deps.logId === undefined) {
      return undefined;
    }
    // Redis away for a round leaves the id as it was: the lease rounds go on without it.
    const read = await this.deps.logId().catch(() => undefined);
    this.#log = read ?? this.#log;
    if (this.#log === undefined) {
      return async () =>
        "the id of this site's Redis log cannot be read or recorded: no partition is taken until it can";
    }
    // A round that could not read the id only renews the claim this process holds, under the id
    // it holds it with. A Redis back without its data has a new id, and a peer that read it may
    // have moved the claim there already: claimed under the old one, the name would be refused,
    // its partitions given back, and the site told of another log applying it, all for a round.
    // A process refused the name, or that never held it, claims as before: refused, it says why.
    const renewing =
      read === undefined && this.#refusal === undefined ? this.#claimed?.log : undefined;
    const claimedWith = renewing ?? this.#log;
    const asked =
      renewing !== undefined
        ? renewSiteClaim(pool, { site, log: renewing }, ttlMs).then(
            (renewed) => renewed ?? Promise.reject(new SiteClaimUnconfirmedError(site)),
          )
        : claimSite(
            pool,
            { site, log: this.#log, previousLog: this.#claimed?.log ?? null, consumer },
            ttlMs,
          );
    const claim = await asked.catch(async (err: unknown) => {
      // The leases were renewed this round, but the claim was not. Unrenewed for
      // SITE_SILENCE_TTLS, the name may go to another log: its partitions are given back a TTL
      // before that, so that the two never apply beside each other.
      if (
        this.#claimed !== undefined &&
        performance.now() - this.#claimed.atMs > (SITE_SILENCE_TTLS - 1) * ttlMs
      ) {
        await this.#giveAll();
      }
      throw err;
    });
    if (!claim.held) {
      return async () =>
        anotherLogHolds(
          site,
          await liveMembers(pool, site, ttlMs).catch(() => []),
          claim.seenSecondsAgo,
          claim.barred,
        );
    }
    this.#claimed = { log: claimedWith, renewedAt: claim.renewedAt, atMs: performance.now() };
    if (claim.takenFrom !== null) {
      logger.warn({ site, log: claimedWith, from: claim.takenFrom }, siteTakenOver(site));
    }
    if (claim.refusedConsumer !== null && claim.refusedConsumer !== this.#refusedMet) {
      logger.error({ site }, anotherLogRefused(site, claim.refusedConsumer));
    }
    this.#refusedMet = claim.refusedConsumer;
    return undefined;
  }

  async #renewHeld() {
    const held = [...this.#held.values()];
    if (held.length === 0) {
      return;
    }
    const trusted = trustedFrom(this.deps.ttlMs);
    const renewed = new Set(
      await renewLeases(
        this.deps.pool,
        held.map(({ lease }) => lease),
        this.deps.ttlMs,
      ),
    );
    for (const entry of held) {
      const { partition, token } = entry.lease;
      if (renewed.has(partition)) {
        Object.assign(entry, trusted);
      } else {
        this.deps.logger.warn({ partition, token }, 'lease lost');
        this.#held.delete(partition);
        this.#inBackground(partition, () => this.deps.events.stopped(partition));
      }
    }
  }

  /**
   * Stops a partition's consumer without holding up this round: a stop waits for the batch under
   * way, which a poison page applied one event at a time can stretch to a TTL, and meanwhile the
   * other leases would go unrenewed and be lost too. (The lease's fencing token keeps the batch
   * from committing once another process holds the partition.)
   */
  #inBackground(partition: number, stop: () => Promise<void>) {
    const stopping = stop().then(
      () => {
        this.#stopping.delete(partition);
      },
      (err: unknown) => {
        // Its consumer may still run: kept among the stopping, the partition is never taken
        // again by this process (another takes it once its lease lapses), and the process says so.
        this.#stopFailure = `stopping partition ${partition} failed: ${reasonOf(err)}`;
        this.deps.logger.error({ err, partition }, 'stopping a partition given up failed');
      },
    );
    this.#stopping.set(partition, stopping);
  }

  /**
   * All at once, the leases in one statement: one after another, each partition waited for its
   * batch under way and then its own release, and on a link that drops packets a shutdown took a
   * query timeout per partition (8 × 5 s by default, past the process's 30 s to exit). A
   * partition whose consumer failed to stop keeps its lease until it lapses, as its fencing token
   * then keeps its batch from committing; the failure is thrown once the others are given back.
   */
  async #giveAll() {
    const given = this.owned.flatMap((partition) => {
      const held = this.#held.get(partition);
      this.#held.delete(partition);
      return held === undefined ? [] : [held.lease];
    });
    const stops = await Promise.allSettled(
      given.map((lease) => this.deps.events.stopped(lease.partition)),
    );
    await releaseLeases(
      this.deps.pool,
      given.filter((_, i) => stops[i]?.status === 'fulfilled'),
    ).catch(() => undefined);
    const failed = stops.find((stop) => stop.status === 'rejected');
    if (failed !== undefined) {
      throw failed.reason;
    }
  }

  async #give(partition: number) {
    const held = this.#held.get(partition);
    if (!held) {
      return;
    }
    this.#held.delete(partition);
    await this.deps.events.stopped(partition);
    await releaseLeases(this.deps.pool, [held.lease]).catch(() => undefined);
  }
}

/**
 * A partition taken but not started: claiming its previous owner's entries failed, in Redis. Not
 * the main database's failure, so not its breaker's: counted there, a Redis outage while
 * partitions change hands would show the breaker to the main database open.
 */
class PartitionStartError extends Error {
  override name = 'PartitionStartError';

  constructor(partition: number, cause: unknown) {
    super(`partition ${partition} could not be started: ${(cause as Error).message}`, { cause });
  }
}

/**
 * The site's name is held under another log id than the one this process held it with, and
 * this round could not read the id (Redis away): whether Redis came back under a new id that a
 * peer claimed, or another site holds the name, is told once it can. Redis's failure, not the
 * main database's.
 */
class SiteClaimUnconfirmedError extends Error {
  override name = 'SiteClaimUnconfirmedError';

  constructor(site: string) {
    super(
      `site ${site}'s name is no longer held under the Redis log id this process held it with, and the id cannot be read now (Redis away?): if Redis came back without its data, the name went with its new id; no partition is taken until the id can be read`,
    );
  }
}

const twinMessage = (consumer: string) =>
  `another projector process uses the consumer name ${consumer}: give each process its own OUTPOST_CONSUMER`;

/**
 * How long after a renewal began we trust the lease locally: two thirds of the TTL, so a renewal
 * every third of the TTL keeps it continuous while a stalled process stops well before it expires.
 */
const validityMs = (ttlMs: number) => Math.floor((ttlMs * 2) / 3);
