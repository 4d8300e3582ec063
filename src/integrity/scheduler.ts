import type pg from 'pg';
import {
  cronJob,
  refreshIntegrity,
  type Snapshot,
  scheduleCronJob,
} from '../db/queries/integrity.ts';
import type { Logger } from '../observability/logger.ts';
import { pause } from '../projector/backoff.ts';
import { nextRun } from './schedule.ts';

export type IntegrityMode = 'pg_cron' | 'scheduler' | 'unknown';

export type IntegritySchedulerDeps = {
  main: pg.Pool;
  mainUrl: string;
  schedule: string;
  postDeployDelayMs: number;
  /** Whether the projector applies events normally: the post-deploy refresh waits for it. */
  projectorHealthy: () => boolean;
  logger: Logger;
  onRefreshed?: (snapshot: Snapshot) => void;
  /** How soon to ask again whether pg_cron runs the job, after the main database did not say. */
  detectRetryMs?: number;
};

const DETECT_RETRY_MS = 60_000;

/**
 * Keeps the integrity snapshot fresh. Where pg_cron runs the job, it only makes the job's schedule
 * match OUTPOST_INTEGRITY_SCHEDULE; elsewhere it runs the refresh itself, and the advisory lock in
 * outpost_refresh_integrity() keeps several processes from refreshing at once. Either way, each
 * process asks for a refresh after a deploy, once its projector is healthy; those asking while
 * one runs share the next.
 */
export class IntegrityScheduler {
  readonly #abort = new AbortController();
  #mode: IntegrityMode = 'unknown';
  #running: Promise<void>[] = [];

  constructor(private readonly deps: IntegritySchedulerDeps) {}

  get mode(): IntegrityMode {
    return this.#mode;
  }

  async start(): Promise<void> {
    const { schedule, logger } = this.deps;
    const found = await this.#detect(true);
    this.#mode = found ?? 'scheduler';
    const loop = new AbortController();
    if (this.#mode === 'scheduler') {
      this.#running.push(this.#loop(loop.signal));
    }
    if (found === undefined) {
      // A site whose link is down at start: refresh in-process meanwhile, and ask again. Deciding
      // for good here would leave the process refreshing beside pg_cron, under the wrong mode in
      // /health, with a changed schedule never given to the job.
      this.#running.push(this.#detectAgain(loop));
    }
    this.#running.push(this.#postDeploy());
    logger.info({ mode: this.#mode, schedule }, 'integrity refresh scheduled');
  }

  /**
   * Whether pg_cron runs the job (given the configured schedule if it had another) or this
   * process must; undefined when the main database did not say.
   */
  async #detect(first = false): Promise<IntegrityMode | undefined> {
    const { main, schedule, logger } = this.deps;
    try {
      const job = await cronJob(main);
      if (!job) {
        return 'scheduler';
      }
      if (job.schedule !== schedule) {
        await scheduleCronJob(main, schedule);
        logger.info({ from: job.schedule, to: schedule }, 'pg_cron integrity job re-scheduled');
      }
      return 'pg_cron';
    } catch (err) {
      // Said once at the default level, with why: a refusal (a permission on cron.job) does not
      // clear on its own, and the operator must see it. The retries that follow stay quiet.
      if (first) {
        logger.warn(
          { err },
          'cannot tell whether pg_cron runs the integrity refresh; using the in-process scheduler until the main database says',
        );
      } else {
        logger.debug({ err }, 'cannot tell whether pg_cron runs the integrity refresh yet');
      }
      return undefined;
    }
  }

  /** Asks until the main database says; where pg_cron runs the job, the interim loop stops. */
  async #detectAgain(interimLoop: AbortController) {
    const signal = this.#abort.signal;
    while (!signal.aborted) {
      await pause(this.deps.detectRetryMs ?? DETECT_RETRY_MS, signal);
      const found = signal.aborted ? undefined : await this.#detect();
      if (found !== undefined) {
        if (found === 'pg_cron') {
          interimLoop.abort();
        }
        this.#mode = found;
        this.deps.logger.info({ mode: found }, 'integrity refresh mode found');
        return;
      }
    }
  }

  async stop(): Promise<void> {
    this.#abort.abort();
    await Promise.all(this.#running);
  }

  async #refresh(mode: string, wait: boolean) {
    try {
      const snapshot = await refreshIntegrity(this.deps.mainUrl, mode, wait, {
        signal: this.#abort.signal,
      });
      if (snapshot) {
        this.deps.onRefreshed?.(snapshot);
        this.deps.logger.info(
          { mode, anomalies: snapshot.anomalies, ms: snapshot.duration_ms },
          'integrity refreshed',
        );
      }
    } catch (err) {
      if (this.#abort.signal.aborted) {
        this.deps.logger.info({ mode }, 'integrity refresh abandoned at shutdown');
        return;
      }
      this.deps.logger.warn({ err, mode }, 'integrity refresh failed');
    }
  }

  async #loop(until: AbortSignal) {
    const signal = AbortSignal.any([until, this.#abort.signal]);
    while (!signal.aborted) {
      const at = nextRun(this.deps.schedule, new Date());
      await pause(Math.max(0, at.getTime() - Date.now()), signal);
      if (!signal.aborted) {
        await this.#refresh('scheduler', false);
      }
    }
  }

  async #postDeploy() {
    await pause(this.deps.postDeployDelayMs, this.#abort.signal);
    while (!this.#abort.signal.aborted && !this.deps.projectorHealthy()) {
      await pause(1000, this.#abort.signal);
    }
    if (!this.#abort.signal.aborted) {
      // Answered by a refresh that begins after this ask (outpost_refresh_integrity, 0006), not
      // by one during the delay, which saw the main database before this build projected much
      // into it. Processes of a deploy that ask while one of them refreshes share the next.
      await this.#refresh('post_deploy', true);
    }
  }
}
