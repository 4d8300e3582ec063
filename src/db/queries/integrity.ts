import pg from 'pg';
import { type Anomalies, anomaliesOf, PROBLEMS, type Problem } from '../../integrity/problems.ts';
import { pgCronReadsAlike } from '../../integrity/schedule.ts';
import { isRequestRefused } from '../../projector/errors.ts';
import { type Queryable, withConnection, withServerSettings } from '../client.ts';
import { LinkWatchdog } from '../link-watchdog.ts';

export const CRON_JOB = 'outpost-integrity';

/**
 * How long a manual refresh's answer waits for the read replica to show it (usually
 * milliseconds): the snapshot is read back there, by `GET /admin/integrity` and `integrity status`.
 */
export const REFRESH_VISIBLE_WAIT_MS = 2_000;

export type Snapshot = {
  refreshed_at: string;
  duration_ms: number;
  mode: string;
  anomalies: Anomalies;
};

/**
 * Runs the refresh on a connection of its own with a long statement timeout: on a large database
 * the views take minutes, far past the timeouts of the batch pools. A link watchdog stands in for
 * the timeout, so a link that silently drops mid-refresh fails it in seconds, not in an hour.
 * `signal` abandons the refresh (a shutdown); the server then stops it too, since it checks the
 * client connection while the statement runs.
 */
export const refreshIntegrity = async (
  url: string,
  mode: string,
  wait: boolean,
  { signal }: { signal?: AbortSignal } = {},
): Promise<(Snapshot & { lsn: string }) | undefined> => {
  const client = new pg.Client({
    ...withServerSettings(url, ['-c client_connection_check_interval=5000']),
    connectionTimeoutMillis: 10_000,
    statement_timeout: 3_600_000,
    keepAlive: true,
  });
  client.on('error', () => undefined);
  const abandon = () => void client.end().catch(() => undefined);
  signal?.throwIfAborted();
  signal?.addEventListener('abort', abandon, { once: true });
  const refresh = async () => {
    // Two arguments: the call every version of the function since 0002 takes. Since 0006 it is
    // answered by a refresh that began after it, if one did while it waited for the lock.
    const { rows } = await client.query<{ counts: Record<string, unknown> | null }>(
      'SELECT outpost_refresh_integrity($1, $2) AS counts',
      [mode, wait],
    );
    const snapshot = rows[0]?.counts ? await latestSnapshot(client) : undefined;
    if (!snapshot) {
      return undefined;
    }
    // Where the refresh's commit is in the WAL: a replica past it shows this snapshot. The insert
    // position, not the flush: with synchronous_commit off the commit returns before its record
    // is flushed, and a flush position read then lies before it.
    const { rows: at } = await client.query<{ lsn: string }>(
      'SELECT pg_current_wal_insert_lsn()::text AS lsn',
    );
    return { ...snapshot, lsn: at[0]?.lsn ?? '0/0' };
  };
  try {
    await client.connect();
    const watchdog = new LinkWatchdog({ url });
    try {
      return await Promise.race([refresh(), watchdog.lost]);
    } finally {
      await watchdog.stop();
    }
  } finally {
    signal?.removeEventListener('abort', abandon);
    // With a statement still out (the link was lost), ending destroys the socket at once.
    await client.end().catch(() => undefined);
  }
};

/** The advisory lock outpost_refresh_integrity() takes (migrations/0002_integrity-views.sql). */
export const REFRESH_LOCK = 7246002;

/**
 * The session holding the refresh lock, if any: a refresh that waits for it would otherwise look
 * hung to whoever started it. A bigint key is held as classid (high half) and objid (low half).
 */
export const runningRefresh = async (
  db: Queryable,
): Promise<{ pid: number; application: string; since: Date | null } | undefined> => {
  const { rows } = await db.query<{ pid: number; application: string; since: Date | null }>(
    `SELECT a.pid, a.application_name AS application, a.xact_start AS since
       FROM pg_locks l JOIN pg_stat_activity a USING (pid)
      WHERE l.locktype = 'advisory' AND l.granted AND l.classid = 0 AND l.objid = $1
        AND l.objsubid = 1 AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())`,
    [REFRESH_LOCK],
  );
  return rows[0];
};

export const latestSnapshot = async (db: Queryable): Promise<Snapshot | undefined> => {
  const { rows } = await db.query<{
    finished_at: Date;
    duration_ms: number;
    mode: string;
    counts: Record<string, unknown>;
  }>(
    'SELECT finished_at, duration_ms, mode, counts FROM integrity_refreshes ORDER BY id DESC LIMIT 1',
  );
  const row = rows[0];
  return (
    row && {
      refreshed_at: row.finished_at.toISOString(),
      duration_ms: row.duration_ms,
      mode: row.mode,
      anomalies: anomaliesOf(row.counts),
    }
  );
};

/** A few offending rows per problem, straight from the views (cheap: they hold only anomalies). */
const anomalySamples = async (
  db: Queryable,
  limit: number,
): Promise<Record<Problem, unknown[]>> => {
  const samples = {} as Record<Problem, unknown[]>;
  for (const problem of PROBLEMS) {
    const { rows } = await db.query(`SELECT * FROM integrity_${problem} LIMIT $1`, [limit]);
    samples[problem] = rows;
  }
  return samples;
};

/**
 * The latest snapshot and its sample rows, read in one snapshot of the database: a refresh the
 * replica replays between two separate reads would pair one refresh's counts with another's rows
 * (`head_mismatch: 0` beside a head_mismatch row).
 */
export const integrityReport = (db: pg.Pool, limit: number) =>
  withConnection(db, async (client) => {
    await client.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY');
    const snapshot = await latestSnapshot(client);
    const samples = await anomalySamples(client, limit);
    await client.query('COMMIT');
    return { snapshot, samples };
  });

/** The pg_cron job of this database, if pg_cron runs the refresh here. */
export const cronJob = async (db: Queryable): Promise<{ schedule: string } | undefined> => {
  const { rows: hasCron } = await db.query("SELECT 1 FROM pg_extension WHERE extname = 'pg_cron'");
  if (hasCron.length === 0) {
    return undefined;
  }
  const { rows } = await db.query<{ schedule: string }>(
    'SELECT schedule FROM cron.job WHERE jobname = $1',
    [CRON_JOB],
  );
  return rows[0];
};

/**
 * Why pg_cron did not run the refresh job, as far as the main database tells: the job gone or
 * inactive, its launcher not running, or its last run failed. Whether the launcher runs is asked
 * only where this role may see other sessions; elsewhere pg_stat_activity would hide it.
 */
export const whyCronMissed = async (db: Queryable): Promise<string> => {
  const { rows } = await db.query<{
    jobid: string;
    active: boolean;
    launcher: boolean | null;
    status: string | null;
    message: string | null;
    start_time: Date | null;
  }>(
    `SELECT j.jobid::text, j.active,
            CASE WHEN pg_has_role('pg_read_all_stats', 'MEMBER') THEN
              EXISTS (SELECT 1 FROM pg_stat_activity WHERE backend_type = 'pg_cron launcher')
            END AS launcher,
            r.status, r.return_message AS message, r.start_time
       FROM cron.job j
       LEFT JOIN LATERAL (SELECT status, return_message, start_time FROM cron.job_run_details d
                           WHERE d.jobid = j.jobid ORDER BY d.runid DESC LIMIT 1) r ON true
      WHERE j.jobname = $1`,
    [CRON_JOB],
  );
  const job = rows[0];
  if (!job) {
    return `the pg_cron job ${CRON_JOB} is gone`;
  }
  if (!job.active) {
    return `the pg_cron job ${CRON_JOB} is inactive; SELECT cron.alter_job(${job.jobid}, active := true) on the main database resumes it`;
  }
  if (job.launcher === false) {
    return "pg_cron's launcher is not running on the main database: is pg_cron in its shared_preload_libraries, and cron.database_name this database?";
  }
  const last = job.start_time?.toISOString();
  if (job.status === 'failed') {
    return `its last run, at ${last}, failed: ${job.message ?? 'no message'}`;
  }
  return last ? `pg_cron has not started it since ${last}` : 'pg_cron has never started it';
};

/** pg_cron's time zone for its schedules (`cron.timezone`, GMT by default); null without it. */
export const cronTimeZone = async (db: Queryable): Promise<string | null> => {
  const { rows } = await db.query<{ tz: string | null }>(
    "SELECT current_setting('cron.timezone', true) AS tz",
  );
  return rows[0]?.tz || null;
};

/** A schedule pg_cron would refuse, or read otherwise than this process (pgCronReadsAlike). */
export class PgCronScheduleError extends Error {
  override name = 'PgCronScheduleError';

  constructor(schedule: string) {
    super(
      `pg_cron would not read the schedule ${schedule} as cron-parser does (pg_cron takes numbers, month and weekday names, *, ranges, lists and steps after * or a range, not L, W, # or ?, and matches both day fields where one is a step of *): its job keeps its schedule`,
    );
  }
}

/** Scheduling by job name updates the existing job: a changed schedule never duplicates it. */
export const scheduleCronJob = async (db: Queryable, schedule: string) => {
  if (!pgCronReadsAlike(schedule)) {
    throw new PgCronScheduleError(schedule);
  }
  await db.query(
    "SELECT cron.schedule($1, $2, $$SELECT outpost_refresh_integrity('pg_cron', false)$$)",
    [CRON_JOB, schedule],
  );
};

const UNIQUE_VIOLATION = '23505';

/** The schedule migration 0002 gives the job it creates. */
const MIGRATION_CRON_SCHEDULE = '*/30 * * * *';

/**
 * Creates pg_cron's refresh job as migration 0002 does where pg_cron runs in this database (it is
 * preloaded, and this is its cron.database_name) but the job is missing: a site that preloaded
 * pg_cron after that migration ran. Answers whether it created it, or why it could not (a role
 * that may not create the extension); a failure to ask is thrown.
 */
export const createMissingCronJob = async (
  db: Queryable,
): Promise<{ created: boolean; refused?: unknown }> => {
  // As migration 0002 asks: cron.database_name is a superuser's to read (current_setting()
  // refuses any other role), so a role that may not read it goes by the extension created here.
  const { rows } = await db.query<{ runs_here: boolean }>(
    `SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'pg_cron')
            AND CASE WHEN pg_has_role('pg_read_all_settings', 'USAGE')
                     THEN coalesce(current_database() =
                          (SELECT setting FROM pg_settings WHERE name = 'cron.database_name'), false)
                     ELSE EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_cron') END
            AS runs_here`,
  );
  if (rows[0]?.runs_here !== true || (await cronJob(db)) !== undefined) {
    return { created: false };
  }
  try {
    await db.query('CREATE EXTENSION IF NOT EXISTS pg_cron').catch((err: unknown) => {
      // Created by another process starting at the same moment: the job is scheduled by name,
      // so both schedule it once.
      if ((err as { code?: unknown }).code !== UNIQUE_VIOLATION) {
        throw err;
      }
    });
    await scheduleCronJob(db, MIGRATION_CRON_SCHEDULE);
  } catch (err) {
    if (!isRequestRefused(err)) {
      throw err;
    }
    return { created: false, refused: err };
  }
  return { created: true };
};

/**
 * Gives pg_cron's refresh job `schedule` where the job exists (never a second job: it is
 * scheduled by name). Answers the schedule it had, or undefined where there is no job; with
 * `refused`, why the job keeps it: a schedule pg_cron reads otherwise, or a refusal (a role that
 * may not schedule). A failure to ask (a lost link, a timeout) is thrown.
 */
export const rescheduleCronJob = async (
  db: Queryable,
  schedule: string,
): Promise<{ from: string; refused?: unknown } | undefined> => {
  const job = await cronJob(db);
  if (job === undefined) {
    return undefined;
  }
  if (job.schedule !== schedule) {
    try {
      await scheduleCronJob(db, schedule);
    } catch (err) {
      if (!(err instanceof PgCronScheduleError) && !isRequestRefused(err)) {
        throw err;
      }
      return { from: job.schedule, refused: err };
    }
  }
  return { from: job.schedule };
};
