import type pg from 'pg';
import type { Logger } from '../observability/logger.ts';
import { BREAKER_GAUGE, type BreakerGauge, CircuitBreaker } from '../projector/circuit-breaker.ts';
import { isLinkTimeout, isPoolWaitTimeout } from '../projector/errors.ts';

/** How long the API takes a replica that did not answer in time as away before it looks again. */
export const REPLICA_AWAY_MS = 5_000;

/**
 * How long a look waits for `SELECT 1`. A replica that takes longer is not one to send reads to;
 * and a look sent while packets were dropped waits, once the link heals, for TCP's next
 * retransmission (seconds apart by then) or the pool's query timeout (10 s): the breaker stayed
 * open up to 15 s after the link came back, where a new look would have been answered at once.
 */
export const REPLICA_LOOK_TIMEOUT_MS = 3_000;

// pg takes a query's own `query_timeout` (lib/client.js), which @types/pg does not declare.
const LOOK: pg.QueryConfig & { query_timeout: number } = {
  text: 'SELECT 1',
  query_timeout: REPLICA_LOOK_TIMEOUT_MS,
};

/** The replica did not answer in time lately: the call was not made. */
export class ReplicaAwayError extends Error {
  constructor(cause: unknown) {
    super('the read replica did not answer in time lately; not asked again until it does', {
      cause,
    });
    this.name = 'ReplicaAwayError';
  }
}

/**
 * The API's calls to the read replica. One that refuses costs a call nothing, but one that does
 * not answer (frozen, or behind a link that drops packets) costs each call its connect or query
 * timeout, 5 to 10 s, and holds a pooled connection as long: every write naming a configuration
 * would take that long, and the pool would fill. So once a call times out, calls are refused at
 * once (write checks then ask the main database, reads answer 503). After a cool-down of a few
 * seconds a `SELECT 1` goes in the background, which closes the breaker when it is answered; no
 * request waits for it. It goes on its own too, not only when a call is refused: on a site that
 * nobody reads from overnight, the breaker (its gauge, and the alert on it) would otherwise stay
 * open for hours after the replica came back. A pool only busy (every connection in use for the
 * connect timeout) does not open it: an overloaded healthy replica says the same.
 */
export class ReplicaLink {
  readonly #breaker: CircuitBreaker;
  #lastTimeout: unknown;
  #reportedAway = false;
  #nextLook: NodeJS.Timeout | undefined;
  #stopped = false;
  readonly #lookWith: pg.Pool;

  /**
   * `gauge`: where to show the breaker's state as `outpost_circuit_breaker_state{target="replica"}`
   * (beside the acker's, where the process has one: WorstBreakerGauge). `lookWith`: the pool its
   * own look goes through, when `pool` checks more than that the replica answers (the reads' pool
   * asks the log too, and a log away must not close the breaker).
   */
  constructor(
    readonly pool: pg.Pool,
    logger: Pick<Logger, 'warn' | 'info'>,
    gauge?: BreakerGauge,
    lookWith: pg.Pool = pool,
  ) {
    this.#lookWith = lookWith;
    gauge?.set({ target: 'replica' }, BREAKER_GAUGE.closed);
    this.#breaker = new CircuitBreaker({
      failureThreshold: 1,
      coolDownMs: REPLICA_AWAY_MS,
      // Said once each way, not at every look that finds it still away.
      onChange: (state) => {
        gauge?.set({ target: 'replica' }, BREAKER_GAUGE[state]);
        if (state === 'open') {
          this.#lookAgainLater();
        }
        if (state === 'open' && !this.#reportedAway) {
          this.#reportedAway = true;
          logger.warn(
            { err: this.#lastTimeout, lookAgainMs: REPLICA_AWAY_MS },
            'the read replica did not answer in time: write checks ask the main database and reads answer 503 until it answers again',
          );
        } else if (state === 'closed') {
          this.#reportedAway = false;
          logger.info('the read replica answers again');
        }
      },
    });
  }

  /** Whether calls are refused now, the replica having not answered in time. */
  get away(): boolean {
    return this.#breaker.state !== 'closed';
  }

  /** `read` on the replica, or ReplicaAwayError at once while the replica is taken as away. */
  async call<T>(read: (replica: pg.Pool) => Promise<T>): Promise<T> {
    if (this.away) {
      this.#lookAgain();
      throw new ReplicaAwayError(this.#lastTimeout);
    }
    try {
      return await read(this.pool);
    } catch (err) {
      this.#record(err);
      throw err;
    }
  }

  /** No more looks of its own: the process stops, and its pool with it. */
  stop(): void {
    this.#stopped = true;
    clearTimeout(this.#nextLook);
  }

  /** One look at a time, once the cool-down is over; again while the replica stays away. */
  #lookAgainLater() {
    if (this.#nextLook !== undefined || this.#stopped) {
      return;
    }
    this.#nextLook = setTimeout(
      () => {
        this.#nextLook = undefined;
        this.#lookAgain();
        if (this.#breaker.state === 'open') {
          // Not over yet: a call timed out since, and the cool-down began again.
          this.#lookAgainLater();
        }
      },
      Math.max(1, this.#breaker.waitMs()),
    );
    this.#nextLook.unref();
  }

  #lookAgain() {
    if (!this.#breaker.tryAcquire()) {
      return;
    }
    this.#lookWith.query(LOOK).then(
      () => this.#breaker.recordSuccess(),
      (err: unknown) => {
        // No connection free in time: those out still wait on the replica, so it is not back.
        if (isPoolWaitTimeout(err)) {
          this.#breaker.recordFailure();
        } else if (!this.#record(err)) {
          // A refusal is quick: calls may go ahead and meet it themselves.
          this.#breaker.recordSuccess();
        }
      },
    );
  }

  /** Records a timeout against the replica; whether it was one. */
  #record(err: unknown): boolean {
    if (!isLinkTimeout(err)) {
      return false;
    }
    this.#lastTimeout = err;
    this.#breaker.recordFailure();
    return true;
  }
}
