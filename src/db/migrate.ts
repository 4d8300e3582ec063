import { drizzle } from 'drizzle-orm/node-postgres';
import { migrate } from 'drizzle-orm/node-postgres/migrator';
import pg from 'pg';
import { projectPath } from '../paths.ts';
import { isDatabaseUnreachable } from '../projector/errors.ts';
import { cannotReach } from '../reach.ts';
import { rescheduleCronJob } from './queries/integrity.ts';

export const MIGRATIONS_FOLDER = projectPath('migrations');

/** Any stable number: two processes migrating at once take turns instead of racing on DDL. */
const MIGRATION_LOCK = 7_246_001;
const MIGRATION_LOCK_TIMEOUT_MS = 30_000;
const LOCK_NOT_AVAILABLE = '55P03';

/**
 * Applies every migration not yet applied, in order; running it again changes nothing. Given the
 * integrity schedule, it gives pg_cron's refresh job that schedule, where the job exists: the
 * migration that creates it knows only the default. Answers the schedule when it changed it, or
 * why it could not (the migrations stand: a projector's start tries again).
 */
export const runMigrations = async (
  url: string,
  {
    lockTimeoutMs = MIGRATION_LOCK_TIMEOUT_MS,
    integritySchedule,
  }: { lockTimeoutMs?: number; integritySchedule?: string } = {},
): Promise<{ rescheduled?: string; notRescheduled?: unknown }> => {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 10_000 });
  // A connection lost between statements fails the next one, which says why; unheard, its
  // 'error' would end the process with a stack instead.
  client.on('error', () => undefined);
  await client.connect().catch((err: unknown) => {
    throw isDatabaseUnreachable(err) ? cannotReach('the main database', url, err) : err;
  });
  try {
    await client.query('SET client_min_messages = warning');
    await client.query('SELECT pg_advisory_lock($1)', [MIGRATION_LOCK]);
    // A migration that alters a table waits for every lock on it, an integrity refresh's too
    // (up to an hour), and every projector write would queue behind the waiting migration. It
    // gives up instead, and says why.
    await client.query(`SET lock_timeout = '${Math.round(lockTimeoutMs)}ms'`);
    await migrate(drizzle(client), { migrationsFolder: MIGRATIONS_FOLDER }).catch(
      (err: unknown) => {
        if (
          (err as { code?: unknown; cause?: { code?: unknown } }).code === LOCK_NOT_AVAILABLE ||
          (err as { cause?: { code?: unknown } }).cause?.code === LOCK_NOT_AVAILABLE
        ) {
          throw new Error(
            `a migration waited ${lockTimeoutMs / 1000} s for a table lock and gave up, so that projection does not queue behind it; something holds the table (an integrity refresh? see pg_stat_activity); run the migration again when it is done`,
            { cause: err },
          );
        }
        throw err;
      },
    );
    if (integritySchedule === undefined) {
      return {};
    }
    try {
      const job = await rescheduleCronJob(client, integritySchedule);
      if (job?.refused !== undefined) {
        return { notRescheduled: job.refused };
      }
      return job !== undefined && job.from !== integritySchedule
        ? { rescheduled: integritySchedule }
        : {};
    } catch (err) {
      return { notRescheduled: err };
    }
  } finally {
    await client.query('SELECT pg_advisory_unlock($1)', [MIGRATION_LOCK]).catch(() => undefined);
    await client.end();
  }
};
