import { leaseHoldings } from '../db/queries/leases.ts';
import { liveHolder, partitionRanges, projectorLeasesLine } from '../ops/lease-report.ts';
import {
  holdPartitions,
  keepPartitions,
  REBUILD_OWNER,
  RebuildLeaseError,
  type RebuildMode,
  rebuildProjections,
  releasePartitions,
} from '../ops/rebuild.ts';
import {
  futureStartWarning,
  OVERTAKEN_LISTED,
  ReplayBoundError,
  ReplayRangeError,
  replay,
  replayRange,
} from '../ops/replay.ts';
import { CliError, print, progress, table, wholeNumberFlag } from './output.ts';
import { requireLogRoom, requirePartitionOf, type Site, withSite } from './site.ts';

export type RecoveryFlags = {
  json: boolean;
  from?: string;
  to?: string;
  partition?: string;
  'dry-run'?: boolean;
  verify?: boolean;
};

/**
 * A replay (or `dead retry --wait`) waits up to ten minutes until the projector has applied what
 * it gives back: with no projector holding a partition it would wait in silence (progress shows
 * only on a terminal, or with --json), so the operator is told at once.
 */
export const warnWithoutProjector = async (
  site: Site,
  partitions: readonly number[] | undefined,
  waiter = 'the replay',
) => {
  const holdings = await leaseHoldings(site.main, site.config.site).catch(() => undefined);
  const scope = partitions ?? [...Array(site.config.partitions).keys()];
  if (holdings === undefined) {
    return;
  }
  const holderOf = (p: number) => liveHolder(holdings.find((h) => h.partition === p));
  const rebuilding = scope.filter((p) => holderOf(p) === REBUILD_OWNER);
  if (rebuilding.length > 0) {
    process.stderr.write(
      `outpost: ${REBUILD_OWNER} holds partition${rebuilding.length > 1 ? 's' : ''} ${partitionRanges(rebuilding)}: nothing applies their events until it ends; ${waiter} waits up to 10 minutes for them\n`,
    );
  } else if (!scope.every((p) => holderOf(p) !== undefined)) {
    process.stderr.write(
      `outpost: ${projectorLeasesLine(holdings, site.config.partitions)}; ${waiter} waits up to 10 minutes for them\n`,
    );
  }
};

/** `outpost replay --from ID|TIME [--to] [--partition N] [--dry-run]`. */
export const replayCommand = (flags: RecoveryFlags) => {
  const { from, to } = flags;
  if (!from) {
    throw new CliError('replay needs --from <entry id | ISO time>');
  }
  try {
    // Each bound read as the replay reads it, and the two in order.
    replayRange(from, to);
  } catch (err) {
    throw err instanceof ReplayBoundError || err instanceof ReplayRangeError
      ? new CliError(err.message)
      : err;
  }
  const partition = wholeNumberFlag(flags.partition, '--partition');
  return withSite(async (site) => {
    requirePartitionOf(site, partition);
    if (flags['dry-run'] !== true) {
      await requireLogRoom(site);
      await warnWithoutProjector(site, partition === undefined ? undefined : [partition]);
    }
    const shown = progress(flags.json);
    const report = await replay(
      { eventLog: site.eventLog, main: site.main },
      { from, to, partition, dryRun: flags['dry-run'] === true },
      {
        onProgress: (p) =>
          shown.report({ partition: p.partition, scanned: p.scanned, at: p.position }),
        onWaiting: (w) => shown.report({ ...w }),
      },
    ).finally(shown.end);
    const warning = futureStartWarning(from);
    print(
      flags.json
        ? JSON.stringify(warning === undefined ? report : { ...report, warning })
        : table([report]),
    );
    if (warning !== undefined) {
      process.stderr.write(`outpost: ${warning}\n`);
    }
    if (report.history_starts_at !== null) {
      process.stderr.write(
        `outpost: the range reaches back before the log's history, which now begins at ${report.history_starts_at} (older entries were trimmed: OUTPOST_STREAM_RETENTION, or memory pressure): events accepted before it were not looked at${report.dry_run ? '' : ', and the main database may lack some of them for good'}\n`,
      );
      // Not all of what was asked for could be given back: after a restore, a script that reads
      // exit 0 as "the database is whole again" would be wrong. A dry run did its job: it said so.
      if (!report.dry_run) {
        process.exitCode = 1;
      }
    }
    if (report.unscanned_partitions.length > 0) {
      const count = site.config.partitions;
      process.stderr.write(
        `outpost: partition stream(s) ${partitionRanges(report.unscanned_partitions)} hold events of the range that the main database lacks, but lie past the site's ${count} partitions (written before OUTPOST_PARTITIONS was lowered): the replay ${report.dry_run ? 'would not give' : 'did not give'} them back. To replay them, change the count back once outpost pending shows nothing pending and no dead letters (every process stopped, restarted with the earlier count), replay, then lower it again\n`,
      );
      if (!report.dry_run) {
        process.exitCode = 1;
      }
    }
    if (report.overtaken > 0) {
      process.stderr.write(
        `outpost: replay${report.dry_run ? ' --dry-run' : ''} ${report.dry_run ? 'would give' : 'gave'} back ${report.overtaken} event(s) older than an event of the same aggregate that is already applied, pending or dead-lettered: they apply after it, so an older update can show over a newer one; check ${report.overtaken_aggregates.join(', ')}${report.overtaken_aggregates.length === OVERTAKEN_LISTED ? ' and more' : ''} with GET /aggregates/{id}/events and correct them with a new write\n`,
      );
      if (!report.dry_run) {
        process.exitCode = 1;
      }
    }
    if (report.failed > 0 || report.unfinished > 0) {
      // The report stays on stdout, whole and parseable; the reason goes where failures go.
      // Failed counts every event of the range that cannot apply, dead-lettered before or now.
      const failed = `${report.failed} event(s) that cannot apply (dead-lettered or undecodable: outpost dead list)`;
      if (report.dry_run) {
        // A dry run did its job when it reported: after an incident the range often holds dead
        // letters, and a preview that failed on them would stop the operator's script there.
        process.stderr.write(`outpost: replay --dry-run found ${failed}\n`);
      } else {
        process.stderr.write(
          `outpost: replay left ${failed} and ${report.unfinished} not yet applied when it stopped waiting${
            report.main_database_error !== undefined
              ? ` (or not known to be: the main database could not be asked, ${report.main_database_error}; they stay in the log and apply once the projector reaches it, and replay --dry-run once it answers shows what is still missing)`
              : report.unfinished > 0
                ? ' (they stay in the log and apply once the projector can: its /health background_processor.last_error says what stops it, and replay --dry-run later shows what is still missing)'
                : ''
          }\n`,
        );
        process.exitCode = 1;
      }
    }
  });
};

/**
 * A rebuild rewrites rows from the events it read a moment before, so it holds every partition's
 * lease while it writes (holdPartitions); a projector holding one is named, with how to stop it.
 */
const refuseBesideProjectors = async (site: Site) => {
  const holdings = await leaseHoldings(site.main);
  const own = site.config.site;
  // Only the live holders, this site's first: what the operator has to stop. (Every partition's
  // lease, not only those below this shell's count, and no word of partitions nobody holds.)
  const held = new Map<string, Map<string, number[]>>();
  for (const holding of holdings) {
    const owner = liveHolder(holding);
    if (owner !== undefined) {
      const owners = held.get(holding.site) ?? new Map<string, number[]>();
      owners.set(owner, [...(owners.get(owner) ?? []), holding.partition]);
      held.set(holding.site, owners);
    }
  }
  // Site '' is every site's: a rebuild's leases, or an earlier build's.
  const label = (name: string) =>
    name === own ? `site ${name} (this one)` : name ? `site ${name}` : 'every site';
  const leases = [...held]
    .sort(([a], [b]) => Number(b === own) - Number(a === own))
    .map(
      ([name, owners]) =>
        `${label(name)}: ${[...owners]
          .map(([owner, partitions]) => `partitions ${partitionRanges(partitions)} by ${owner}`)
          .join(', ')}`,
    )
    .join('; ');
  if (holdings.some((holding) => liveHolder(holding) === REBUILD_OWNER)) {
    throw new CliError(
      `another rebuild-projections is running (${leases}): wait for it to end; --verify and --dry-run only read`,
    );
  }
  throw new CliError(
    `projectors are applying events (${leases}): stop them before rebuild-projections, which would overwrite what they write (the leases of one killed without stopping expire within ${Math.ceil(site.config.claimIdleMs / 1000)} s); --verify and --dry-run only read`,
  );
};

/** `outpost rebuild-projections [--dry-run | --verify]`. */
export const rebuildCommand = (flags: RecoveryFlags) => {
  if (flags['dry-run'] && flags.verify) {
    throw new CliError('give either --dry-run or --verify, not both');
  }
  // The databases alone: it answers while Redis is down.
  return withSite(
    async (site) => {
      const mode: RebuildMode = flags.verify ? 'verify' : flags['dry-run'] ? 'dry-run' : 'apply';
      const ttlMs = site.config.claimIdleMs;
      const leases =
        mode === 'apply'
          ? await holdPartitions(site.main, site.config.partitions, ttlMs).catch((err: Error) =>
              err instanceof RebuildLeaseError ? refuseBesideProjectors(site) : Promise.reject(err),
            )
          : [];
      const shown = progress(flags.json);
      const stopRenewing = keepPartitions(site.main, leases, ttlMs);
      const report = await rebuildProjections(site.main, mode, {
        onProgress: (aggregates) => shown.report({ aggregates }),
        fence: mode === 'apply' ? { leases, ttlMs } : undefined,
      }).finally(() => {
        shown.end();
        stopRenewing();
        return releasePartitions(site.main, leases);
      });
      if (flags.json) {
        print(JSON.stringify(report));
      } else {
        print(table(report.differences.map((d) => ({ ...d, fields: d.fields.join(',') }))));
        print(
          `${report.aggregates} aggregates folded, ${report.differing} rows differ from their events` +
            (report.differences.length < report.differing
              ? ` (${report.differences.length} listed)`
              : '') +
            (mode === 'apply' ? `, ${report.fixed} rewritten` : ' (nothing changed)'),
        );
      }
      if (report.unfoldable > 0) {
        process.stderr.write(
          `outpost: rebuild-projections found ${report.unfoldable} aggregate(s) whose events do not fold (listed as unfoldable, left as they are); outpost integrity status names their problems\n`,
        );
        process.exitCode = 1;
      }
      if (mode === 'verify' && report.differing > report.unfoldable) {
        // The report stays on stdout, whole and parseable; the reason goes where failures go.
        process.stderr.write(
          `outpost: rebuild-projections --verify found ${report.differing - report.unfoldable} projection row(s) that differ from their events; outpost rebuild-projections rewrites them\n`,
        );
        process.exitCode = 1;
      }
    },
    { redis: false },
  );
};
