import {
  cronJob,
  cronTimeZone,
  integrityReport,
  REFRESH_VISIBLE_WAIT_MS,
  refreshIntegrity,
  runningRefresh,
  type Snapshot,
} from '../db/queries/integrity.ts';
import { replicaPosition, replicaReached } from '../db/queries/replica.ts';
import { PROBLEMS } from '../integrity/problems.ts';
import { runsBetween } from '../integrity/schedule.ts';
import { databaseReason } from '../projector/errors.ts';
import { CliError, print, table } from './output.ts';
import { withSite } from './site.ts';

const INTEGRITY_USAGE = 'usage: outpost integrity refresh|status';

/** `outpost integrity refresh|status`: the databases alone, so it answers while Redis is down. */
export const integrity = (action: string | undefined, flags: { json: boolean }) => {
  if (action !== 'refresh' && action !== 'status') {
    throw new CliError(INTEGRITY_USAGE);
  }
  return withSite(
    async (site) => {
      switch (action) {
        case 'refresh': {
          const running = await runningRefresh(site.main);
          if (running) {
            process.stderr.write(
              `outpost: waiting for the integrity refresh already running (pid ${running.pid}, ${running.application || 'no application name'}${running.since ? `, since ${running.since.toISOString()}` : ''})\n`,
            );
          }
          const refreshed = await refreshIntegrity(site.mainUrl, 'manual', true);
          if (!refreshed) {
            throw new CliError('the refresh returned no snapshot');
          }
          const { lsn, ...snapshot } = refreshed;
          // `integrity status` reads the replica: it shows this refresh once it has replayed it.
          let lookFailed: unknown;
          const visible = await replicaReached(
            site.replica,
            site.config.replicaIsMain,
            lsn,
            REFRESH_VISIBLE_WAIT_MS,
            (err) => {
              lookFailed = err;
            },
          );
          if (!visible) {
            // Else a status read next shows the earlier snapshot, as if this refresh had failed.
            process.stderr.write(
              lookFailed === undefined
                ? `outpost: the replica has not replayed this refresh yet: integrity status shows it once the replica reaches ${lsn}\n`
                : `outpost: the read replica could not be asked whether it replayed this refresh (${databaseReason(lookFailed)}): integrity status reads the replica, and shows it once the replica answers and reaches ${lsn}\n`,
            );
          }
          print(flags.json ? JSON.stringify(snapshot) : render(snapshot));
          return;
        }
        case 'status': {
          // The snapshot and the views are read on the replica, which has them too: the anomaly
          // alert may well fire while the link to the main database is down.
          const { snapshot, samples } = await integrityReport(site.replica, 5);
          // Only the main database can say whether pg_cron runs the refresh: 'unknown' without it.
          const job = await cronJob(site.main).then(
            (found) => ({ found }),
            () => undefined,
          );
          const schedule = job?.found?.schedule ?? site.config.integritySchedule;
          // pg_cron keeps its schedule in its own time zone; the in-process scheduler in UTC.
          const timeZone = job?.found
            ? ((await cronTimeZone(site.main).catch(() => null)) ?? 'UTC')
            : 'UTC';
          // The replica holds the main database's snapshots as of its last replay: a site cut off
          // from the main database sees an old one however well the main keeps the schedule.
          const replicaLagSeconds = await replicaPosition(
            site.replica,
            site.config.replicaIsMain,
          ).then(
            (position) => position.lagSeconds,
            () => 0,
          );
          const now = Date.now();
          const runsSince = (until: number) =>
            snapshot === undefined
              ? 0
              : runsBetween(schedule, new Date(snapshot.refreshed_at), new Date(until), timeZone);
          const stale = runsSince(now - replicaLagSeconds * 1000) >= 3;
          const oldAsTheReplica = !stale && runsSince(now) >= 3;
          const status = {
            refreshed_at: snapshot?.refreshed_at ?? null,
            duration_ms: snapshot?.duration_ms ?? null,
            // How that refresh was run; `mode` below is how refreshes are scheduled.
            refreshed_by: snapshot?.mode ?? null,
            // Three scheduled refreshes since this one, the replica's lag aside (as the stale
            // alert counts): the schedule is not being kept.
            stale,
            mode: job === undefined ? 'unknown' : job.found ? 'pg_cron' : 'scheduler',
            schedule,
            replica_lag_seconds: replicaLagSeconds,
            anomalies: snapshot?.anomalies ?? null,
            samples,
          };
          if (flags.json) {
            print(JSON.stringify(status));
            return;
          }
          if (!snapshot) {
            print(
              `no integrity snapshot yet (mode ${status.mode}, schedule ${status.schedule}); run: outpost integrity refresh`,
            );
            return;
          }
          print(render(snapshot));
          print(`mode ${status.mode}, schedule ${status.schedule}`);
          if (oldAsTheReplica) {
            print(
              `old as the replica: three scheduled refreshes have come and gone since this snapshot, but the replica it is read from has replayed nothing of the main database for ${Math.round(replicaLagSeconds)} s (its link to the main database is down, or its replay is paused or behind): refreshes run since are not here yet; see outpost pending or /health for the replica`,
            );
          }
          if (stale) {
            print(
              `stale: three scheduled refreshes have come and gone since this snapshot, so these counts may be old; the refresh is not running (the pg_cron job, or the service's scheduler) or it fails: run outpost integrity refresh, which says why if it fails`,
            );
          }
          for (const problem of PROBLEMS) {
            if ((snapshot.anomalies[problem] ?? 0) > 0) {
              print(`\n${problem}: ${JSON.stringify(samples[problem])}`);
            }
          }
          return;
        }
        default:
          throw new CliError(INTEGRITY_USAGE);
      }
    },
    { redis: false },
  );
};

/** Why a refresh was run, as `integrity_refreshes.mode` says, for a reader of its snapshot. */
const REFRESHED_BY: Record<string, string> = {
  pg_cron: 'by pg_cron',
  scheduler: "by the service's scheduler",
  manual: 'on request (outpost integrity refresh or POST /admin/integrity/refresh)',
  watchdog:
    "by the projector's watchdog: pg_cron did not run the refresh due before it, and the projector's log says why",
  post_deploy: 'after a deploy',
};

const render = (snapshot: Snapshot) => {
  const { anomalies, refreshed_at: at, duration_ms: ms, mode } = snapshot;
  const rows = table(PROBLEMS.map((problem) => ({ problem, anomalies: anomalies[problem] ?? 0 })));
  return `${rows}\nrefreshed at ${at} in ${Math.round(ms)} ms, ${REFRESHED_BY[mode] ?? `by ${mode}`}`;
};
