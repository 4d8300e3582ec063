export type BreakerState = 'closed' | 'open' | 'half_open';

export type BreakerOptions = {
  /** Consecutive failures that open the breaker. */
  failureThreshold: number;
  /** How long an open breaker refuses calls before it lets one probe through. */
  coolDownMs: number;
  now?: () => number;
  onChange?: (state: BreakerState) => void;
};

/**
 * Guards a database: after `failureThreshold` consecutive failures it opens and refuses calls for
 * `coolDownMs`, so a dead link is not hammered by every partition's retries; then exactly one
 * half-open probe decides between closing and another cool-down.
 */
export class CircuitBreaker {
  #state: BreakerState = 'closed';
  #failures = 0;
  #openedAt = 0;
  #probeInFlight = false;
  readonly #options: Required<Omit<BreakerOptions, 'onChange'>> & Pick<BreakerOptions, 'onChange'>;

  constructor(options: BreakerOptions) {
    // A monotonic clock: with the wall clock, a step back while open (NTP after a long outage, the
    // very moment breakers are open) would stretch the cool-down by the size of the step.
    this.#options = { now: () => performance.now(), ...options };
  }

  get state(): BreakerState {
    if (
      this.#state === 'open' &&
      this.#options.now() - this.#openedAt >= this.#options.coolDownMs
    ) {
      return 'half_open';
    }
    return this.#state;
  }

  /** Whether a call may go ahead now; in half-open state only the single probe may. */
  tryAcquire(): boolean {
    const state = this.state;
    if (state === 'closed') {
      return true;
    }
    if (state === 'half_open' && !this.#probeInFlight) {
      this.#probeInFlight = true;
      this.#set('half_open');
      return true;
    }
    return false;
  }

  /** Whether tryAcquire would let a call through now; takes nothing. */
  admits(): boolean {
    const state = this.state;
    return state === 'closed' || (state === 'half_open' && !this.#probeInFlight);
  }

  /** Milliseconds until an open breaker admits its probe (0 when calls may go ahead). */
  waitMs(): number {
    if (this.#state !== 'open') {
      return 0;
    }
    return Math.max(0, this.#openedAt + this.#options.coolDownMs - this.#options.now());
  }

  /**
   * The call that took the half-open probe made none to the database after all (every entry it
   * read was blocked behind a dead letter): the probe is free again and decided nothing.
   */
  releaseProbe(): void {
    this.#probeInFlight = false;
  }

  recordSuccess(): void {
    this.#failures = 0;
    this.#probeInFlight = false;
    this.#set('closed');
  }

  recordFailure(): void {
    this.#failures += 1;
    const wasProbe = this.#probeInFlight;
    this.#probeInFlight = false;
    if (wasProbe || this.#failures >= this.#options.failureThreshold) {
      this.#openedAt = this.#options.now();
      this.#set('open');
      this.#halfOpenWhenCooled();
    }
  }

  /**
   * Says half-open once the cool-down is over, not only when a caller takes the probe: a
   * projector with nothing to apply takes none, and its gauge said open while /health, reading
   * `state`, said half-open.
   */
  #halfOpenWhenCooled(delayMs = this.#options.coolDownMs) {
    clearTimeout(this.#coolDownTimer);
    this.#coolDownTimer = setTimeout(() => {
      if (this.#state !== 'open') {
        return;
      }
      // A timer may fire a fraction of a millisecond before the monotonic clock says the
      // cool-down is over (the event loop's clock is cached and whole milliseconds).
      const left = this.waitMs();
      if (left > 0) {
        this.#halfOpenWhenCooled(Math.ceil(left));
      } else {
        this.#set('half_open');
      }
    }, delayMs);
    this.#coolDownTimer.unref();
  }

  #coolDownTimer: NodeJS.Timeout | undefined;

  #set(state: BreakerState) {
    if (this.#state !== state) {
      this.#state = state;
      this.#options.onChange?.(state);
    }
  }
}

export const BREAKER_GAUGE: Record<BreakerState, number> = { closed: 0, half_open: 1, open: 2 };

/**
 * The breaker guarding one database (DESIGN: 5 failures open it, 30 s cool-down), reporting its
 * state as `outpost_circuit_breaker_state{target}` and in the log.
 */
export type BreakerGauge = { set: (labels: { target: string }, value: number) => void };

/**
 * One gauge for the breakers one process holds on one target (an all-in-one process's acker and
 * its API's replica link each have one on the replica): it shows the worst of them, so a link
 * whose reads time out is not hidden by an acker that has nothing to ask while writes are quiet.
 */
export class WorstBreakerGauge {
  readonly #gauge: BreakerGauge;
  readonly #states: number[] = [];

  constructor(gauge: BreakerGauge) {
    this.#gauge = gauge;
  }

  /** The gauge of one more breaker, closed until it says otherwise. */
  member(): BreakerGauge {
    const index = this.#states.push(BREAKER_GAUGE.closed) - 1;
    return {
      set: (labels, state) => {
        this.#states[index] = state;
        this.#gauge.set(labels, Math.max(...this.#states));
      },
    };
  }
}

export const createDatabaseBreaker = (
  target: 'main' | 'replica',
  gauge: BreakerGauge,
  logger: { warn: (fields: object, message: string) => void },
): CircuitBreaker => {
  gauge.set({ target }, BREAKER_GAUGE.closed);
  return new CircuitBreaker({
    failureThreshold: 5,
    coolDownMs: 30_000,
    onChange: (state) => {
      gauge.set({ target }, BREAKER_GAUGE[state]);
      logger.warn({ target, state }, 'circuit breaker changed state');
    },
  });
};
