import type pg from 'pg';
import {
  createMissingCronJob,
  cronJob,
  cronTimeZone,
  latestSnapshot,
  refreshIntegrity,
  rescheduleCronJob,
  runningRefresh,
  type Snapshot,
  whyCronMissed,
} from '../db/queries/integrity.ts';
import type { Logger } from '../observability/logger.ts';
import { pause } from '../projector/backoff.ts';
import { reasonOf } from '../reason.ts';
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
  /** Told of each scheduled pg_cron run that did not happen, and why; this process ran it. */
  onMissedCronRun?: (why: string) => void;
  /**
   * Told the schedule pg_cron runs the refresh on when first read and whenever it changes: set by
   * another process of the site, it is the one the snapshot's age is to be judged by.
   */
  onJobSchedule?: (schedule: string) => void;
};

const DETECT_RETRY_MS = 60_000;
/** How long after its scheduled time pg_cron's run must have finished or still be running. */
const CRON_GRACE_MS = 60_000;
const CLOCK_SKEW_MS = 30_000;

export type CronRunOutcome = 'ran' | 'running' | 'refreshed' | 'unknown';

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
  #cronTimeZone: string | null = null;
  /** The schedule pg_cron had for the job when last asked. */
  #jobSchedule: string | undefined;

  constructor(private readonly deps: IntegritySchedulerDeps) {}

  get mode(): IntegrityMode {
    return this.#mode;
  }

  /**
   * Starts in the background; answers once the main database has said whether pg_cron runs the
   * refresh, or could not. The service does not wait for it: cut off from its main database, a
   * site would take no writes for the connect timeout (a link that drops packets) or longer.
   */
  start(): Promise<void> {
    const started = this.#start().catch((err: unknown) => {
      this.deps.logger.error({ err }, 'integrity scheduler did not start');
    });
    this.#running.push(started);
    return started;
  }

  async #start(): Promise<void> {
    const { schedule, logger } = this.deps;
    const found = await this.#detect(true);
    if (this.#abort.signal.aborted) {
      return;
    }
    this.#mode = found ?? 'scheduler';
    const loop = new AbortController();
    if (this.#mode === 'scheduler') {
      this.#running.push(this.#loop(loop.signal));
    } else {
      this.#running.push(this.#watchCron());
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
    let job: Awaited<ReturnType<typeof rescheduleCronJob>>;
    try {
      job = await rescheduleCronJob(main, schedule);
      if (job === undefined) {
        // pg_cron preloaded after the migration that creates the job ran: the job is made here,
        // at a projector's start, rather than left for an operator to write by hand.
        const made = await createMissingCronJob(main);
        if (made.created) {
          logger.info(
            'pg_cron runs in the main database but had no integrity refresh job: created it',
          );
          job = await rescheduleCronJob(main, schedule);
        } else if (made.refused !== undefined) {
          logger.warn(
            { err: made.refused },
            'pg_cron runs in the main database, but the integrity refresh job could not be created; using the in-process scheduler (create the job as migrations/0002_integrity-views.sql does, as a role that may)',
          );
        }
      }
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
    if (!job) {
      return 'scheduler';
    }
    if (job.refused !== undefined) {
      // pg_cron runs the job all the same. Taken for "cannot tell", this process refreshed
      // beside it, each period twice, under the wrong mode in /health, for good.
      logger.warn(
        { err: job.refused, schedule: job.from, configured: schedule },
        'pg_cron runs the integrity refresh but would not take OUTPOST_INTEGRITY_SCHEDULE: the job keeps its schedule',
      );
    } else if (job.from !== schedule) {
      logger.info({ from: job.from, to: schedule }, 'pg_cron integrity job re-scheduled');
    }
    return 'pg_cron';
  }

  /** Asks until the main database says; where pg_cron runs the job, the interim loop stops. */
  async #detectAgain(interimLoop: AbortController) {
    const signal = this.#abort.signal;
    while (!signal.aborted) {
      await pause(this.deps.detectRetryMs ?? DETECT_RETRY_MS, signal);
      const found = signal.aborted ? undefined : await this.#detect();
      if (found !== undefined) {
        this.#mode = found;
        if (found === 'pg_cron') {
          interimLoop.abort();
          this.#running.push(this.#watchCron());
        }
        this.deps.logger.info({ mode: found }, 'integrity refresh mode found');
        return;
      }
    }
  }

  async stop(): Promise<void> {
    this.#abort.abort();
    // A start still asking the main database adds its loops when it returns.
    while (this.#running.length > 0) {
      await Promise.all(this.#running.splice(0));
    }
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

  /**
   * pg_cron installed but not running the job (the job made inactive, its launcher gone after a
   * failover to a server without it preloaded, every run failing) would leave the snapshot to
   * age until the stale alert, hours later. After each scheduled time this looks whether that
   * run happened, and where it did not, says why and runs it.
   */
  async #watchCron() {
    const signal = this.#abort.signal;
    // From each due time to the next, not from the clock: a check that ends past the next due
    // time (every minute, say) would otherwise skip it.
    let after = new Date();
    while (!signal.aborted && this.#mode === 'pg_cron') {
      const due = await this.cronDueAfter(after);
      await pause(Math.max(0, due.getTime() - Date.now()) + CRON_GRACE_MS, signal);
      if (!signal.aborted) {
        await this.catchUpCronRun(due);
      }
      after = due;
    }
  }

  /**
   * The job's next due time after `after`, by the schedule pg_cron has for it, which another
   * process of the site may have changed (a rolling change of OUTPOST_INTEGRITY_SCHEDULE, or two
   * processes configured apart): checked against this process's own schedule, runs the job was
   * never meant to make would look missed, raise the alert and be refreshed in its place. In
   * pg_cron's own time zone: a schedule of hours means its hours. What was read last stands while
   * the main database does not answer.
   */
  async cronDueAfter(after: Date): Promise<Date> {
    const { main, schedule, logger } = this.deps;
    const [timeZone, job] = await Promise.all([
      cronTimeZone(main).catch(() => undefined),
      cronJob(main).catch(() => undefined),
    ]);
    this.#cronTimeZone = timeZone ?? this.#cronTimeZone;
    const jobSchedule = job?.schedule ?? this.#jobSchedule ?? schedule;
    try {
      const due = nextRun(jobSchedule, after, this.#cronTimeZone ?? 'UTC');
      if (jobSchedule !== schedule && jobSchedule !== this.#jobSchedule) {
        logger.warn(
          { job: jobSchedule, configured: schedule },
          `pg_cron runs the integrity refresh on "${jobSchedule}", not on this process's OUTPOST_INTEGRITY_SCHEDULE "${schedule}": another process of the site set it; its runs are checked against the job's schedule (give every process the same schedule)`,
        );
      }
      if (jobSchedule !== this.#jobSchedule) {
        this.deps.onJobSchedule?.(jobSchedule);
      }
      this.#jobSchedule = jobSchedule;
      return due;
    } catch {
      // A schedule set by hand in a form this parser does not take (pg_cron's "30 seconds").
      return nextRun(schedule, after, this.#cronTimeZone ?? 'UTC');
    }
  }

  /**
   * Whether pg_cron's run scheduled for `due` happened; where it did not, refreshes in its place
   * (mode `watchdog`), and where the job is gone, refreshes in-process from then on.
   */
  async catchUpCronRun(due: Date): Promise<CronRunOutcome> {
    const { main, logger } = this.deps;
    let why: string;
    try {
      const latest = await latestSnapshot(main);
      // Against the main database's clock, which may be a little behind this one.
      if (latest && Date.parse(latest.refreshed_at) >= due.getTime() - CLOCK_SKEW_MS) {
        return 'ran';
      }
      if (await runningRefresh(main)) {
        return 'running';
      }
      why = await whyCronMissed(main).catch(
        (err: unknown) => `pg_cron could not be asked why (${reasonOf(err)})`,
      );
    } catch (err) {
      logger.debug({ err }, 'cannot tell whether pg_cron ran the integrity refresh');
      return 'unknown';
    }
    logger.warn(
      { due: due.toISOString(), why },
      `pg_cron did not run the integrity refresh due at ${due.toISOString()}: ${why}; refreshing in its place`,
    );
    this.deps.onMissedCronRun?.(why);
    // Only whether the job is there: its schedule is the site's, perhaps set by another process
    // since this one started, and a missed run is no reason to set it back.
    if ((await cronJob(main).catch(() => null)) === undefined) {
      this.#mode = 'scheduler';
      // From now on the refresh follows this process's own schedule, and the stale alert with it.
      this.deps.onJobSchedule?.(this.deps.schedule);
      this.#running.push(this.#loop(this.#abort.signal));
      logger.warn('no pg_cron job; the integrity refresh runs in-process from now on');
    }
    await this.#refresh('watchdog', false);
    return 'refreshed';
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
