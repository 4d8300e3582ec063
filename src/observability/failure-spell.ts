import { reasonOf } from '../reason.ts';
import type { Logger } from './logger.ts';

/** How often a spell that goes on for the same reason is told again. */
export const REMIND_EVERY_MS = 60_000;

type Fields = Record<string, unknown>;

/**
 * What a retry loop writes to the log while its attempts fail: the first failure with its error,
 * each reason not yet told in the spell (a connection's failures alternate between a few), a
 * reminder a minute while it goes on, and the end, each with how long the spell has lasted and
 * how many attempts failed. The retries between go to debug.
 * Told every attempt, a Redis that stopped answering for 40 s wrote 56 warnings from the eight
 * partitions' readers alone, several a second at first, which buried the one line that said why.
 */
export class FailureSpell {
  readonly #logger: Logger;
  readonly #what: string;
  readonly #now: () => number;
  readonly #remindEveryMs: number;
  #startedAt: number | undefined;
  #failures = 0;
  readonly #told = new Set<string>();
  #toldAt = 0;

  /** `what` names the work that fails, as the end's line says it works again. */
  constructor(
    logger: Logger,
    what: string,
    options: { now?: () => number; remindEveryMs?: number } = {},
  ) {
    this.#logger = logger;
    this.#what = what;
    this.#now = options.now ?? (() => performance.now());
    this.#remindEveryMs = options.remindEveryMs ?? REMIND_EVERY_MS;
  }

  get failing(): boolean {
    return this.#startedAt !== undefined;
  }

  /** One failed attempt; `reason` defaults to the error's own, and is the line's message. */
  failed(err: unknown, fields: Fields = {}, reason = reasonOf(err)): void {
    const now = this.#now();
    this.#startedAt ??= now;
    this.#failures += 1;
    const spell = {
      ...fields,
      failures: this.#failures,
      failing_for_s: seconds(now - this.#startedAt),
    };
    if (!this.#told.has(reason)) {
      this.#logger.warn({ err, ...spell }, `${reason}; retrying`);
    } else if (now - this.#toldAt >= this.#remindEveryMs) {
      this.#logger.warn(
        spell,
        `still failing after ${spell.failing_for_s} s (${this.#failures} attempts): ${reason}`,
      );
    } else {
      this.#logger.debug({ err, ...spell }, `${reason}; retrying`);
      return;
    }
    this.#told.add(reason);
    this.#toldAt = now;
  }

  /** An attempt succeeded: tells the spell's end, if one was going on. */
  ended(fields: Fields = {}): void {
    if (this.#startedAt === undefined) {
      return;
    }
    const failingForS = seconds(this.#now() - this.#startedAt);
    this.#logger.info(
      { ...fields, failures: this.#failures, failing_for_s: failingForS },
      `${this.#what} works again after ${failingForS} s (${this.#failures} failed ${this.#failures === 1 ? 'attempt' : 'attempts'})`,
    );
    this.#startedAt = undefined;
    this.#failures = 0;
    this.#told.clear();
  }
}

const seconds = (ms: number): number => Math.round(ms / 100) / 10;
