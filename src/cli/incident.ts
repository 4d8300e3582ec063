import { parseDurationMs } from '../config.ts';
import { lsnReached, parseLsn } from '../db/lsn.ts';
import { leaseHoldings } from '../db/queries/leases.ts';
import { EVENT_TYPES, isEventType } from '../domain/events.ts';
import { logFullNow, probeWriteRefusal, writeRefusedReason } from '../log/capacity.ts';
import { UndecodableEntryError } from '../log/codec.ts';
import {
  AmbiguousDeadLetterError,
  type DeadLetter,
  deadLetterIdIn,
  isDeadLetterCursor,
  type LetterReads,
  RetryNotYetError,
} from '../log/dead-letters.ts';
import { persistenceRefusal } from '../log/durability.ts';
import { entryTime } from '../log/entry-id.ts';
import { readBuffer, type SiteBuffer, totalsOf } from '../ops/buffer.ts';
import { liveHolder, partitionRanges, projectorLeasesLine } from '../ops/lease-report.ts';
import { type Outcomes, waitForOutcomes } from '../ops/outcomes.ts';
import { inspectPending, type PendingEntry, stillPendingAfter } from '../ops/pending.ts';
import { logRestartNote, siteClaimNote } from '../ops/site-name.ts';
import { reasonOf } from '../reason.ts';
import { CliError, print, progress, table, wholeNumberFlag } from './output.ts';
import { warnWithoutProjector } from './recovery.ts';
import { requireLogRoom, requirePartitionOf, type Site, withSite } from './site.ts';

export type IncidentFlags = {
  json: boolean;
  partition?: string;
  idle?: string;
  consumer?: string;
  limit?: string;
  reason?: string;
  all?: boolean;
  cursor?: string;
  wait?: boolean;
};

/** `outpost pending`: what waits, where, for how long, and for what. */
export const pending = (flags: IncidentFlags) => {
  // A bare number is refused rather than read as milliseconds, as the configuration reads it:
  // the output shows idle times in seconds, and `--idle 60` (or `060`) would quietly mean 60 ms.
  // Zero is zero in any unit.
  const minIdleMs =
    flags.idle === undefined || /^(?!0+$)\d+$/.test(flags.idle.trim())
      ? undefined
      : parseDurationMs(flags.idle);
  if (flags.idle !== undefined && minIdleMs === undefined) {
    throw new CliError(
      `--idle takes a duration with its unit, such as 60s, 500ms or 5m, not ${flags.idle}`,
    );
  }
  // Past it, Number() rounds, and Redis refuses what it is sent without naming the flag.
  if (minIdleMs !== undefined && !Number.isSafeInteger(minIdleMs)) {
    throw new CliError(`--idle must be at most ${Number.MAX_SAFE_INTEGER}ms`);
  }
  const partition = wholeNumberFlag(flags.partition, '--partition');
  const limit = wholeNumberFlag(flags.limit, '--limit', { min: 1 }) ?? 50;
  return withSite(async (site) => {
    requirePartitionOf(site, partition);
    const report = await inspectPending(
      {
        eventLog: site.eventLog,
        main: site.main,
        replica: site.replica,
        replicaIsMain: site.config.replicaIsMain,
      },
      { partition, minIdleMs, consumer: flags.consumer, limit },
    );
    // Since the site accepted the entry, by Redis's clock, which names entries. Idle times restart
    // at every re-read (each retry of a failing batch), so only this tells how long one waits;
    // and a partition's oldest may be undelivered (no projector reading it), with no idle time.
    const buffer = await readBuffer(site.eventLog);
    const sinceMs = (acceptedMs: number | undefined) =>
      acceptedMs === undefined ? undefined : Math.max(0, buffer.nowMs - acceptedMs);
    const oldestOf = new Map(buffer.partitions.map((b) => [b.partition, b.oldestAcceptedMs]));
    const r = report.replica;
    // The replica has what these entries wait for, and the acker has had many passes since: the
    // acknowledgement itself is stuck. The API's waiting_for keeps to its two values; the operator
    // is told which of the two stages it is.
    const replayed = r.replay_lsn ? parseLsn(r.replay_lsn) : undefined;
    const unacknowledged = await stillPendingAfter(
      site.eventLog,
      report.entries.filter(
        (e) =>
          e.waiting_for === 'replica' &&
          e.commit_lsn !== null &&
          replayed !== undefined &&
          lsnReached(e.commit_lsn, replayed),
      ),
      Math.min(
        ACK_GRACE_MAX_MS,
        Math.max(ACK_GRACE_MS, ACK_GRACE_PASSES * site.config.ackIntervalMs),
      ),
      // The second look only refines the table already read; failing, it flags nothing.
    ).catch((): PendingEntry[] => []);
    // Not asked again of a main database the report found unreachable: another connect timeout.
    const mainUnreachable =
      r.replay_lsn !== null && r.lag_bytes === null && r.main_refusal === undefined;
    // Asked together: a main database behind a link that drops packets costs one connect
    // timeout, not one per question.
    const [leases, siteClaim, restart] = mainUnreachable
      ? [
          { unknown: 'the main database cannot be reached' },
          { unknown: 'the main database cannot be reached' },
          { unknown: 'the main database cannot be reached' },
        ]
      : await Promise.all([
          leaseHoldings(site.main, site.config.site).then(
            (holdings) => ({ holdings }),
            (err: unknown) => ({ unknown: `the main database did not answer (${reasonOf(err)})` }),
          ),
          siteClaimNote({ redis: site.redis, main: site.main, config: site.config }).then(
            (note) => ({ line: note?.line }),
            (err: unknown) => ({
              unknown: `the site name's claim could not be read (${reasonOf(err)})`,
            }),
          ),
          logRestartNote({ redis: site.redis, main: site.main, config: site.config }).then(
            (note) => ({ note }),
            (err: unknown) => ({
              unknown: `whether this Redis log began anew could not be read (${reasonOf(err)})`,
            }),
          ),
        ]);
    // Whether the site's name is applied from another Redis log (a second site given this one's
    // name): one of the two sites applies nothing, and both operators should hear of it.
    const claim = 'line' in siteClaim ? siteClaim.line : undefined;
    const letters = totalsOf(buffer).deadLetters;
    const blocked = letters > 0 ? await site.deadLetters.blockedAggregates() : 0;
    // A Redis that refuses writes (MISCONF after a failed save, READONLY) refuses the projector's
    // reads, records and acknowledgements too: everything above then waits on Redis, whatever the
    // entries' waiting_for says. Not knowing (another error) is not a refusal.
    const logRefusal = await probeWriteRefusal(site.eventLog.redis).catch(() => undefined);
    // Settings under which Redis would not keep a write through a crash: the service refuses the
    // writers, as /health's write_error says, while the projector goes on. Only those refused
    // whatever OUTPOST_APPENDFSYNC says (appendfsync no, appendonly off): this shell's may not
    // be the service's, and `everysec` is refused only where the service expects `always`.
    const unsafe =
      logRefusal === undefined
        ? await persistenceRefusal(site.eventLog.redis, 'everysec').catch(() => undefined)
        : undefined;
    // A full log refuses the writers, not the projector: said beside what waits, which is what
    // frees it.
    const logFull = await logFullNow(site.eventLog.redis);
    if (flags.json) {
      // The report /admin/pending answers, and what the table's closing lines say, for scripts.
      print(
        JSON.stringify({
          ...report,
          partitions: report.partitions.map((p) => ({
            ...p,
            oldest_age_ms: sinceMs(oldestOf.get(p.partition)) ?? null,
          })),
          unacknowledged_entry_ids: unacknowledged.map((e) => e.entry_id),
          backlog: backlogOf(buffer),
          projector_leases:
            'holdings' in leases
              ? Array.from({ length: site.config.partitions }, (_, partition) => {
                  const holding = leases.holdings.find((h) => h.partition === partition);
                  return {
                    partition,
                    holder: liveHolder(holding) ?? null,
                    last_holder: holding?.owner ?? null,
                    expired_seconds: holding?.expiredSeconds ?? null,
                  };
                })
              : null,
          ...('unknown' in leases && { projector_leases_unknown: leases.unknown }),
          site_claim: claim ?? null,
          // Null above says all is well only where this is absent.
          ...('unknown' in siteClaim && { site_claim_unknown: siteClaim.unknown }),
          dead_letters: { count: letters, blocked_aggregates: blocked },
          log_restarted:
            'note' in restart && restart.note !== undefined
              ? {
                  began_at: restart.note.began_at,
                  earlier_log_seen_at: restart.note.earlier_log_seen_at,
                }
              : null,
          // Null above says no restart only where this is absent.
          ...('unknown' in restart && { log_restarted_unknown: restart.unknown }),
          log_write_error: logRefusal ?? unsafe ?? null,
          log_full: logFull ?? null,
        }),
      );
      return;
    }
    const age = (acceptedMs: number | undefined) => {
      const ms = sinceMs(acceptedMs);
      return ms === undefined ? '-' : seconds(ms);
    };
    print(
      table(
        report.partitions.map((p) => ({
          partition: p.partition,
          pending: p.count,
          undelivered: p.undelivered,
          oldest_age: age(oldestOf.get(p.partition)),
          oldest_idle: seconds(p.oldest_idle_ms),
          lowest_id: p.lowest_id,
          consumers: Object.entries(p.consumers)
            .map(([name, n]) => `${name}=${n}`)
            .join(' '),
        })),
      ),
    );
    const groupless = report.partitions.filter((p) => p.no_group).map((p) => p.partition);
    if (groupless.length > 0) {
      print(
        `partition(s) ${partitionRanges(groupless)} have no consumer group on this Redis: no service with OUTPOST_PARTITIONS=${site.config.partitions} has started on it, or Redis lost its data`,
      );
    }
    print('');
    print(
      table(
        report.entries.map((e) => ({
          entry_id: e.entry_id,
          p: e.partition,
          consumer: e.consumer,
          age: age(entryTime(e.entry_id)),
          idle: seconds(e.idle_ms),
          deliveries: e.deliveries,
          attempts: e.attempts,
          type: e.type,
          event_id: e.event_id,
          waiting_for: unacknowledged.includes(e) ? 'acknowledgement' : e.waiting_for,
          commit_lsn: e.commit_lsn,
        })),
      ),
    );
    // Why an entry waiting for projection waits: its own failures, which deliveries do not tell
    // from a batch retried through a database outage.
    for (const e of report.entries.filter(
      (entry) => entry.waiting_for === 'projection' && entry.attempts > 0,
    )) {
      print(
        `${e.entry_id} (partition ${e.partition}) failed ${e.attempts} attempt(s) (dead-lettered at its projector's OUTPOST_MAX_ATTEMPTS), the last: ${e.last_error}`,
      );
    }
    if (report.truncated) {
      print(
        `showing the ${report.entries.length} oldest entries of those that match: --limit shows more, --partition, --idle and --consumer narrow them`,
      );
    }
    print('');
    print(backlogLine(buffer, mainUnreachable));
    if (logRefusal !== undefined) {
      print(
        `${writeRefusedReason(logRefusal)}; until then the projector can neither read new entries nor record or acknowledge what it applies`,
      );
    }
    if (unsafe !== undefined) {
      print(
        `writes are refused: ${unsafe}; writers get 503 log_unavailable until then (the projector goes on applying what is pending)`,
      );
    }
    if (logFull !== undefined) {
      print(
        `${logFull}; writers get 503 log_unavailable until then, and the log frees room as what is pending here is applied and acknowledged`,
      );
    }
    print(
      r.replay_lsn
        ? `replica replayed up to ${r.replay_lsn}, ${
            r.lag_bytes === null
              ? r.main_refusal === undefined
                ? 'lag unknown: the main database cannot be reached'
                : `lag unknown: the main database refused to give its WAL position: ${r.main_refusal}`
              : `${r.lag_bytes} bytes behind the main database`
          }`
        : `replica position unknown: ${r.error ?? 'unreachable'}`,
    );
    if (r.reason) {
      print(r.reason);
    }
    if (unacknowledged.length > 0) {
      print(
        `${unacknowledged.length} of these entries are applied and replayed by the replica, yet not acknowledged: ${
          logRefusal === undefined
            ? "no projector process is acknowledging (not running, or failing: see background_processor.last_error in /health, and the projector's log)"
            : 'Redis refuses the acknowledgements (above)'
        }`,
      );
    }
    print(
      'holdings' in leases
        ? projectorLeasesLine(leases.holdings, site.config.partitions)
        : `projector leases unknown: ${leases.unknown}`,
    );
    if (claim !== undefined) {
      print(claim);
    }
    if ('note' in restart && restart.note !== undefined) {
      print(restart.note.line);
    }
    if (letters > 0) {
      print(deadLettersLine(letters, blocked));
    }
  });
};

/** The site's unacknowledged events by what they wait for, as `pending --json` gives them. */
const backlogOf = (buffer: SiteBuffer) => {
  const totals = totalsOf(buffer);
  return {
    pending: totals.pending,
    partitions_holding: totals.partitionsHolding,
    to_apply: Math.max(0, totals.pending - totals.awaitingReplica),
    undelivered: totals.undelivered,
    awaiting_replica: totals.awaitingReplica,
    oldest_age_seconds: Math.round(totals.oldestPendingSeconds),
  };
};

/**
 * The site's backlog in one line, first of `pending`'s closing lines: what the per-partition
 * table and the listed entries (the oldest fifty) leave the operator to add up.
 * `mainUnreachable`: this shell cannot reach the main database either, which is what then holds
 * what is to be applied.
 */
export const backlogLine = (buffer: SiteBuffer, mainUnreachable: boolean): string => {
  const backlog = backlogOf(buffer);
  if (backlog.pending === 0) {
    return 'nothing pending: every event accepted is applied and acknowledged';
  }
  const partitions = buffer.partitions.length;
  return `${backlog.pending} event${backlog.pending === 1 ? '' : 's'} pending in ${backlog.partitions_holding} of ${partitions} partition${partitions === 1 ? '' : 's'}, the oldest accepted ${seconds(backlog.oldest_age_seconds * 1000)} ago: ${backlog.to_apply} to be applied (${backlog.undelivered} not yet read by a projector), ${backlog.awaiting_replica} applied and waiting for the replica${
    mainUnreachable && backlog.to_apply > 0
      ? '; the main database cannot be reached from here: none is applied while the projector cannot reach it either'
      : ''
  }`;
};

export const deadLettersLine = (letters: number, blockedAggregates: number): string =>
  `${letters} dead letter${letters === 1 ? '' : 's'}${
    blockedAggregates > 0
      ? `; ${blockedAggregates} aggregate${blockedAggregates === 1 ? '' : 's'} held behind them, whose later events follow them into the dead letters`
      : ''
  }: outpost dead list`;

const seconds = (ms: number) => `${Math.round(ms / 1000)}s`;

/** Why a letter listed at the start of a retry was not retried: it had left the dead letters. */
const GONE = 'gone: retried or discarded meanwhile';

/** How long a replayed entry may wait for its acknowledgement before it counts as stuck. */
const ACK_GRACE_MS = 1_000;
const ACK_GRACE_PASSES = 25;
/** An operator waits for the entries table: a slow acker's many passes are not worth minutes. */
const ACK_GRACE_MAX_MS = 5_000;

const deadRow = (d: DeadLetter) => ({
  id: d.id,
  p: d.partition,
  type: d.type,
  aggregate_id: d.aggregate_id,
  attempts: d.attempts.length,
  dead_at: d.dead_at,
  error: d.error.length > 80 ? `${d.error.slice(0, 77)}...` : d.error,
});

/** One dead letter for a reader: its fields one per line, then every attempt with its error. */
const deadLetterTables = ({ attempts, ...fields }: DeadLetter) =>
  [
    table(Object.entries(fields).map(([field, value]) => ({ field, value }))),
    '',
    table(attempts.map((attempt, i) => ({ attempt: i + 1, ...attempt }))),
  ].join('\n');

/**
 * The dead letter an action names, read before connecting: with Redis away, a missing or mistyped
 * id would be blamed on Redis.
 */
const namedDeadLetter = (id: string | undefined): { named: string; id: string } => {
  const named = id === undefined ? undefined : deadLetterIdIn(id);
  if (id === undefined || named === undefined) {
    throw new CliError(
      'give the dead letter id (the event id, a UUID, or undecodable-<partition>-<entry id> as listed)',
    );
  }
  return { named, id };
};

/** How long `dead retry --wait` waits for what it put back: as long as a replay waits. */
const RETRY_WAIT_MS = 600_000;

/**
 * `dead retry --wait`: waits until each event put back is applied or dead-lettered again, and
 * writes what became of it (and a new letter's error) into its row: without it the operator who
 * fixed a cause learns whether the fix held only from a later `dead list`.
 */
const followRetried = async (site: Site, rows: RetryRow[], json: boolean): Promise<Outcomes> => {
  const retried = rows.filter((row) => row.retried);
  await warnWithoutProjector(site, [...new Set(retried.map((row) => row.partition))], 'the retry');
  const shown = progress(json);
  const outcomes = await waitForOutcomes(
    { eventLog: site.eventLog, main: site.main },
    retried.map((row) => ({ eventId: row.id, partition: row.partition })),
    RETRY_WAIT_MS,
    (w) => shown.report({ ...w }),
  ).finally(shown.end);
  const applied = new Set(outcomes.applied);
  const dead = new Set(outcomes.dead);
  for (const row of retried) {
    row.outcome = applied.has(row.id) ? 'applied' : dead.has(row.id) ? 'dead' : 'pending';
    if (row.outcome === 'dead') {
      row.error = (await site.deadLetters.get(row.id, row.partition))?.error;
    }
  }
  return outcomes;
};

/** Exit 1 when what `dead retry --wait` put back did not apply: dead again, or not yet. */
const refuseUnsettled = (rows: readonly RetryRow[], outcomes: Outcomes) => {
  const retried = rows.filter((row) => row.retried).length;
  const deadAgain = rows.filter((row) => row.outcome === 'dead');
  const [first] = deadAgain;
  if (first !== undefined) {
    throw new CliError(
      `${deadAgain.length} of ${retried} retried event(s) were dead-lettered again (${first.id}: ${first.error ?? 'its letter is gone'}); outpost dead show <id> has each attempt`,
    );
  }
  const open = rows.filter((row) => row.outcome === 'pending').length;
  if (open > 0) {
    throw new CliError(
      `${open} of ${retried} retried event(s) were not applied within ${RETRY_WAIT_MS / 60_000} minutes${
        outcomes.mainDatabaseError === undefined
          ? ''
          : ` (the main database could not be asked: ${outcomes.mainDatabaseError})`
      }; they stay in the log and apply once the projector can: /health background_processor.last_error says what stops it`,
    );
  }
};

const requireDead = async (site: Site, { named, id }: { named: string; id: string }) => {
  const dead = await site.deadLetters.find(named).catch((err: unknown) => {
    throw err instanceof AmbiguousDeadLetterError ? new CliError(err.message) : err;
  });
  if (!dead) {
    throw new CliError(`no dead letter ${id}`);
  }
  return dead;
};

/** Every dead letter of the site, page after page. */
const allDeadLetters = async (site: Site) => {
  const letters: DeadLetter[] = [];
  let cursor: string | undefined;
  do {
    const page = await site.deadLetters.list(1_000, cursor);
    letters.push(...page.items);
    cursor = page.next_cursor ?? undefined;
  } while (cursor !== undefined);
  return letters;
};

/**
 * The order `dead retry --all` puts letters back in: what others derive from first (a unit's
 * configuration, then the unit, its files, its packages), oldest first within each. By entry id
 * alone, a file could go back before its unit's start whose letter was filed again later (an
 * earlier retry that failed), meet its unit still dead and be filed again behind it.
 */
const UPSTREAM_RANK: Record<string, number> = {
  instrument_configuration: 0,
  executed_obs_unit: 1,
  raw_data_file: 2,
  raw_data_package: 3,
};
const upstreamFirst = (a: DeadLetter, b: DeadLetter) =>
  (UPSTREAM_RANK[a.aggregate_type] ?? 4) - (UPSTREAM_RANK[b.aggregate_type] ?? 4) ||
  a.original_entry_id.localeCompare(b.original_entry_id, 'en', { numeric: true });

/** One line of a retry's report; `with`: the letter named, that put this one back with it. */
type RetryRow = {
  id: string;
  partition: number;
  entry_id: string | null;
  retried: boolean;
  why_not?: string;
  with?: string;
  /** With --wait: what became of it, and, dead-lettered again, why. */
  outcome?: 'applied' | 'dead' | 'pending';
  error?: string;
};

/**
 * The dead letters that followed `letter`'s aggregate into the dead letters (a unit's files,
 * behind its dead start): a retry or discard of its letters leaves them where they are, and
 * `dead list` alone would not say they wait on it.
 */
const followersOf = async (site: Site, letter: DeadLetter): Promise<DeadLetter[]> =>
  (await allDeadLetters(site)).filter((other) => other.follows?.includes(letter.aggregate_id));

const followersLine = (letter: DeadLetter, followers: DeadLetter[], advice: string) =>
  `${followers.length} dead letter(s) followed ${letter.aggregate_type} ${letter.aggregate_id} into the dead letters and wait still; ${advice}: ${followers
    .map((f) => f.id)
    .join(' ')}`;

const DEAD_USAGE =
  'usage: outpost dead list [--limit N] [--cursor C]|show <id>|retry <id>|retry --all [--wait]|discard <id> --reason R';

/** `outpost dead list|show|retry|discard`. */
export const dead = (action: string | undefined, id: string | undefined, flags: IncidentFlags) => {
  // Before connecting: with Redis away, a mistyped action would be blamed on Redis.
  if (action === undefined || !['list', 'show', 'retry', 'discard'].includes(action)) {
    throw new CliError(DEAD_USAGE);
  }
  if (action === 'retry' && flags.all && id !== undefined) {
    throw new CliError(
      `give a dead letter's id or --all, not both: outpost dead retry ${id} retries its aggregate's letters, --all every letter (nothing was done)`,
    );
  }
  const limit = wholeNumberFlag(flags.limit, '--limit', { min: 1 }) ?? 100;
  if (flags.cursor !== undefined && !isDeadLetterCursor(flags.cursor)) {
    throw new CliError('--cursor takes the next_cursor an earlier listing printed');
  }
  if (action !== 'list' && !(action === 'retry' && flags.all)) {
    namedDeadLetter(id);
  }
  return withSite(async (site) => {
    switch (action) {
      case 'list': {
        const page = await site.deadLetters.list(limit, flags.cursor);
        if (flags.json) {
          print(JSON.stringify(page));
          return;
        }
        print(table(page.items.map(deadRow)));
        if (page.next_cursor) {
          // The page size given carries on: without it, the next page would be the default's.
          const pageSize = flags.limit === undefined ? '' : ` --limit ${limit}`;
          print(`more: outpost dead list${pageSize} --cursor ${page.next_cursor}`);
        }
        return;
      }
      case 'show': {
        const letter = await requireDead(site, namedDeadLetter(id));
        print(flags.json ? JSON.stringify(letter) : deadLetterTables(letter));
        return;
      }
      case 'retry': {
        await requireLogRoom(site);
        const letters = flags.all
          ? (await allDeadLetters(site)).sort(upstreamFirst)
          : [await requireDead(site, namedDeadLetter(id))];
        const results: RetryRow[] = [];
        // A retry puts back every dead letter of the letter's aggregate: later ones are done.
        // Keyed by partition too: dead-letter ids are entry ids of each partition's own stream,
        // and two partitions dead-lettering in one millisecond name their letters alike.
        const retried = new Map<string, string>();
        const keyOf = (partition: number, deadId: string) => `${partition}:${deadId}`;
        const reads: LetterReads = new Map();
        // A retry of one letter puts back its aggregate's other letters too: they are reported
        // with it, or they would leave `dead list` with nothing said of where they went.
        // With --all, those a listing taken before them could not name (filed since) are too.
        const alsoRetried: { eventId: string; entryId: string; partition: number; with: string }[] =
          [];
        const listed = new Set(letters.map((l) => keyOf(l.partition, l.dead_letter_id)));
        // A failure no letter explains (Redis out of memory or gone) stops a run of --all; the
        // report still lists every letter, so the operator sees which went back before it.
        let stoppedBy: { id: string; err: unknown } | undefined;
        for (const letter of letters) {
          const earlier = retried.get(keyOf(letter.partition, letter.dead_letter_id));
          if (stoppedBy && earlier === undefined) {
            results.push({
              id: letter.id,
              partition: letter.partition,
              entry_id: null,
              retried: false,
              why_not: `not tried: the run stopped at ${stoppedBy.id}`,
            });
            continue;
          }
          const outcome = await (earlier === undefined
            ? site.deadLetters.retryAggregate(letter, reads).then((ids) => {
                for (const [deadId, { entryId }] of ids) {
                  retried.set(keyOf(letter.partition, deadId), entryId);
                }
                for (const [deadId, other] of ids) {
                  const reported = flags.all
                    ? listed.has(keyOf(letter.partition, deadId))
                    : deadId === letter.dead_letter_id;
                  if (!reported) {
                    alsoRetried.push({
                      ...other,
                      partition: letter.partition,
                      with: flags.all ? letter.id : (id ?? letter.id),
                    });
                  }
                }
                return ids.get(letter.dead_letter_id)?.entryId;
              })
            : Promise.resolve(earlier)
          ).then(
            (entryId) => ({ entryId, why: entryId === undefined ? GONE : '' }),
            (err: unknown) => {
              if (err instanceof RetryNotYetError) {
                if (!flags.all) {
                  throw new CliError(
                    `dead letter ${letter.id} cannot be retried yet: ${err.message}`,
                  );
                }
                return { entryId: undefined, why: err.whyNot };
              }
              if (!(err instanceof UndecodableEntryError)) {
                if (!flags.all) {
                  throw err;
                }
                stoppedBy = { id: letter.id, err };
                return { entryId: undefined, why: `failed: ${reasonOf(err)}` };
              }
              if (!flags.all) {
                throw new CliError(
                  `dead letter ${letter.id} cannot be retried: ${err.message}; discard it: outpost dead discard ${letter.id} --reason "<why>"`,
                );
              }
              return { entryId: undefined, why: 'undecodable: discard it with a reason' };
            },
          );
          results.push({
            id: letter.id,
            partition: letter.partition,
            entry_id: outcome.entryId ?? null,
            retried: outcome.entryId !== undefined,
            ...(outcome.why ? { why_not: outcome.why } : {}),
          });
        }
        for (const { eventId, entryId, partition, with: along } of alsoRetried) {
          results.push({ id: eventId, partition, entry_id: entryId, retried: true, with: along });
        }
        const outcomes = flags.wait ? await followRetried(site, results, flags.json) : undefined;
        // The letter named, put back: what followed it in waits still.
        const named = !flags.all && results[0]?.retried ? letters[0] : undefined;
        const followers = named === undefined ? [] : await followersOf(site, named);
        print(
          flags.json
            ? JSON.stringify({
                items: results,
                ...(followers.length > 0 && { followers_waiting: followers.map((f) => f.id) }),
              })
            : table(results),
        );
        if (!flags.json && named !== undefined && followers.length > 0) {
          print(
            followersLine(
              named,
              followers,
              'now that it is back, retry them (outpost dead retry <id>, or --all)',
            ),
          );
        }
        if (stoppedBy) {
          throw new CliError(
            `retry --all stopped at dead letter ${stoppedBy.id}: ${reasonOf(stoppedBy.err)}; ${
              results.filter((r) => r.retried).length
            } of ${results.length} dead letter(s) were retried before it (see the report)`,
          );
        }
        if (!flags.all && results[0]?.retried === false) {
          throw new CliError(`dead letter ${id} was not retried: ${results[0].why_not ?? GONE}`);
        }
        if (outcomes !== undefined) {
          refuseUnsettled(results, outcomes);
        }
        // A letter another operator retried or discarded meanwhile is not left.
        const left = results.filter((r) => !r.retried && r.why_not !== GONE).length;
        if (left > 0) {
          // The report is whole on stdout; the exit code says that letters are left.
          throw new CliError(
            `${left} of ${results.length} dead letter(s) were not retried; see why_not for each`,
          );
        }
        return;
      }
      case 'discard': {
        // An id that names no dead letter is reported first, whatever else the command lacks.
        const letter = await requireDead(site, namedDeadLetter(id));
        if (!flags.reason?.trim()) {
          throw new CliError('discarding needs --reason "<why>"; it is kept in the audit record');
        }
        const auditId = await site.deadLetters.discard(
          letter,
          flags.reason.trim(),
          `cli:${process.env.USER ?? 'unknown'}`,
        );
        if (auditId === undefined) {
          throw new CliError(`dead letter ${letter.id} is ${GONE}`);
        }
        // Only a creation's discard leaves them with nothing to derive from; after an update's,
        // they follow a block that a retry of the rest lifts.
        const followers =
          isEventType(letter.type) && EVENT_TYPES[letter.type].creates
            ? await followersOf(site, letter)
            : [];
        const result = {
          id: letter.id,
          discarded: true,
          audit_id: auditId,
          ...(followers.length > 0 && { followers_waiting: followers.map((f) => f.id) }),
        };
        print(flags.json ? JSON.stringify(result) : `discarded ${letter.id} (audit ${auditId})`);
        if (!flags.json && followers.length > 0) {
          print(
            followersLine(
              letter,
              followers,
              'they derive from it, and retried without it they fail again: discard them too (outpost dead discard <id> --reason …)',
            ),
          );
        }
        return;
      }
      default:
        throw new CliError(DEAD_USAGE);
    }
  });
};
