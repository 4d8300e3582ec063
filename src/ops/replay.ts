import type pg from 'pg';
import { z } from 'zod';
import { appliedEventIds } from '../db/queries/apply.ts';
import { partitionRootOf, upstreamIdsOf } from '../domain/events.ts';
import { partitionOf } from '../domain/ids.ts';
import { appendTo } from '../lists.ts';
import { decodeEntry, type LogEntry, type RawEntry } from '../log/codec.ts';
import { type Discards, discardedIds, isDiscardedEntry } from '../log/dead-letters.ts';
import {
  compareEntryIds,
  entryIdAt,
  isStreamEntryId,
  parseEntryId,
  U64_MAX,
} from '../log/entry-id.ts';
import type { EventLog } from '../log/event-log.ts';
import type { PartitionKeys } from '../log/keys.ts';
import { pipelineReplies } from '../log/redis.ts';
import { PartWayError } from '../reason.ts';
import { type OutcomeWaiting, waitForOutcomes } from './outcomes.ts';

export type ReplayRequest = { from: string; to?: string; partition?: number; dryRun: boolean };

export type ReplayReport = {
  scanned: number;
  already_applied: number;
  /** Applied by this replay (in a dry run: would be applied). */
  applied: number;
  /** Could not be applied: dead-lettered, or undecodable. */
  failed: number;
  dry_run: boolean;
  /** Still pending in the log when scanned: the projector applies them anyway. */
  in_flight: number;
  /** Re-appended but not yet applied or dead-lettered when the wait ended. */
  unfinished: number;
  /**
   * Why the main database could not be asked what applied, where it could not when the wait
   * ended: some of the unfinished may be applied by now.
   */
  main_database_error?: string;
  /** Discarded by an operator (the audit stream says who and why): never brought back. */
  discarded: number;
  /**
   * Where the log's history begins now, when the range reaches back before it: entries older
   * than this were trimmed (retention, or memory pressure) and could not be looked at. The
   * latest such start over the partitions read; null when the whole range was still held.
   */
  history_starts_at: string | null;
  /**
   * Given back (in a dry run: would be) though their aggregate has a later event already applied,
   * still pending, or held in its dead letters: the projector applies them after it, out of
   * order (a restore from a backup lost them while later events of the aggregate went on).
   */
  overtaken: number;
  /** The first of those events' aggregates, to check and correct. */
  overtaken_aggregates: string[];
  /**
   * Given back (in a dry run: would be) to another partition than the stream they were read from:
   * written under an earlier OUTPOST_PARTITIONS, their aggregate maps there now.
   */
  moved: number;
  /**
   * Partitions past the site's count (written under an earlier, higher OUTPOST_PARTITIONS) whose
   * streams hold events of the range that the main database lacks: not given back.
   */
  unscanned_partitions: number[];
};

/** How many overtaken aggregates a report names. */
export const OVERTAKEN_LISTED = 20;

export type ReplayProgress = { partition: number; scanned: number; position: string };

/** Where the wait for what a replay gave back stands. */
export type ReplayWaiting = OutcomeWaiting;

const PAGE = 500;

export class ReplayBoundError extends Error {
  constructor(text: string) {
    super(`${text} is neither a stream entry id (1700000000000-0) nor an ISO-8601 time`);
    this.name = 'ReplayBoundError';
  }
}

/**
 * The ISO-8601 times a bound takes: a day, or a day and a time, with an offset or not. Only these:
 * `Date.parse` reads any other form it can make sense of ("2026-12-05 2:00") in the local time
 * zone of the host that parses it, and an operator's shell in UTC-3 would start a replay three
 * hours late, its dry run reporting nothing lost. Without an offset the time is UTC, as entry ids
 * count UTC milliseconds.
 */
const ISO_TIME =
  /^(\d{4}-\d{2}-\d{2})(?:[Tt ](\d{2}:\d{2})(:\d{2}(?:\.\d+)?)?([Zz]|[+-]\d{2}(?::?\d{2})?)?)?$/;

/** A day the calendar has: `Date.parse` rolls 2026-02-30 over into March without a word. */
const CALENDAR_DATE = z.iso.date();

const boundTimeMs = (text: string): number => {
  const iso = ISO_TIME.exec(text);
  if (!iso || !CALENDAR_DATE.safeParse(iso[1]).success) {
    return Number.NaN;
  }
  const [, day, hoursMinutes = '00:00', seconds = ':00', offset = 'Z'] = iso;
  const zone = /^[Zz]$/.test(offset)
    ? 'Z'
    : `${offset.slice(0, 3)}:${offset.slice(3).replace(':', '') || '00'}`;
  return Date.parse(`${day}T${hoursMinutes}${seconds}${zone}`);
};

/**
 * `from`/`to` as the API and CLI take them: an entry id, or an ISO-8601 time (DESIGN §6), in UTC
 * unless it names an offset.
 */
export const replayBound = (text: string, end: 'from' | 'to' = 'from'): string => {
  if (isStreamEntryId(text)) {
    return text;
  }
  const ms = boundTimeMs(text);
  if (Number.isNaN(ms)) {
    throw new ReplayBoundError(text);
  }
  // As an end, a time takes in its whole millisecond: XRANGE reads an id without its sequence
  // number as the last entry of that millisecond, where `<ms>-0` would stop at the first.
  return end === 'to' ? String(Math.max(0, Math.floor(ms))) : entryIdAt(ms);
};

export class ReplayRangeError extends Error {
  constructor(from: string, to: string) {
    super(`from ${from} lies after to ${to}: the range holds nothing`);
    this.name = 'ReplayRangeError';
  }
}

/**
 * How far past this host's clock a start may lie before it is said to be a likely mistake: the
 * log's entry ids come from Redis's clock, which may run a little ahead of this host's.
 */
const FUTURE_START_TOLERANCE_MS = 5 * 60_000;

/**
 * What to tell of a start in the future (a mistyped year after a restore), whose report of zeros
 * would read as "nothing lost"; undefined for any other. Said, not refused: a range that holds
 * nothing yet is a valid request (a no-op replay), and the contract answers it with its report.
 */
export const futureStartWarning = (fromText: string, nowMs = Date.now()): string | undefined => {
  const [fromMs] = parseEntryId(replayBound(fromText));
  return fromMs > nowMs + FUTURE_START_TOLERANCE_MS
    ? `from ${fromText} lies in the future (it is ${new Date(nowMs).toISOString()} here): the range holds nothing yet, so nothing was looked at; check the date`
    : undefined;
};

/**
 * The range as XRANGE reads it. One whose start lies after its end is refused: its report of zeros
 * would read as "nothing lost".
 */
export const replayRange = (fromText: string, toText?: string): { from: string; to: string } => {
  const from = replayBound(fromText);
  if (toText === undefined) {
    return { from, to: '+' };
  }
  const to = replayBound(toText, 'to');
  // An end without its sequence number takes in the whole millisecond.
  const [toMs] = parseEntryId(to);
  const lastOfEnd = to.includes('-') ? to : `${toMs}-${U64_MAX}`;
  if (compareEntryIds(from, lastOfEnd) > 0) {
    throw new ReplayRangeError(fromText, toText);
  }
  return { from, to };
};

type Deps = { eventLog: EventLog; main: pg.Pool };

/**
 * Re-reads the log with XRANGE and gives back to the projector every event the main database
 * lacks, in partition order: they are appended again with their own event_id, so the projector
 * applies them with its usual dedupe, fencing, ordering and dead-letter rules, and a second run
 * (or a run racing the projector) changes nothing. Then waits until each is applied or dead.
 */
export const replay = async (
  deps: Deps,
  request: ReplayRequest,
  options: {
    /** Awaited: the scan goes on once it returns. */
    onProgress?: (p: ReplayProgress) => void | Promise<void>;
    onWaiting?: (w: ReplayWaiting) => void;
    waitMs?: number;
  } = {},
): Promise<ReplayReport> => {
  const { from, to } = replayRange(request.from, request.to);
  const report = emptyReport(request.dryRun);
  if (request.partition === undefined) {
    report.unscanned_partitions = await streamsPastCount(deps, from, to);
  }
  const resent: { eventId: string; partition: number }[] = [];
  const partitions = deps.eventLog
    .allKeys()
    .filter((k) => request.partition === undefined || k.partition === request.partition);
  const historyStartsAt = (start: string) => {
    if (report.history_starts_at === null || compareEntryIds(start, report.history_starts_at) > 0) {
      report.history_starts_at = start;
    }
  };
  const discardedIn = discardedReaders(deps);
  // The entries this replay appended, moved to a partition scanned after the one they were read
  // from: its scan meets them, and must not count them a second time.
  const givenBack = new Set<string>();
  try {
    for (const keys of partitions) {
      const looked: LookedAt = new Map();
      // One set, kept up to date by each page's look.
      const discarded = await discardedIn(keys.partition);
      // An open end is the partition's last entry now: past it lie the replay's own appends and
      // new writes, which a busy partition would keep the scan chasing.
      const end =
        to === '+'
          ? ((
              (await deps.eventLog.redis.xrevrange(keys.stream, '+', '-', 'COUNT', 1)) as RawEntry[]
            )[0]?.[0] ?? '0-0')
          : to;
      let cursor = from;
      // The last entry this scan has looked at: a trim that reaches past it (memory pressure
      // halving the history while an operator replays after an outage) took entries of the range
      // before the scan got to them.
      let scannedThrough: string | undefined;
      for (;;) {
        // The mark as the page is read, in one step: a trim records it before removing anything,
        // so entries gone before this read are always seen by it, and a trim after it is not.
        const [page, trimmedThrough] = await deps.eventLog.pageWithTrimMark(
          keys.partition,
          cursor,
          end,
          PAGE,
        );
        if (
          trimmedThrough !== null &&
          compareEntryIds(trimmedThrough, from) >= 0 &&
          (scannedThrough === undefined || compareEntryIds(trimmedThrough, scannedThrough) > 0)
        ) {
          historyStartsAt(await firstEntryAfter(deps, keys, trimmedThrough));
        }
        if (page.length === 0) {
          break;
        }
        scannedThrough = page.at(-1)?.[0];
        cursor = `(${scannedThrough}`;
        const entries: LogEntry[] = [];
        for (const entry of page) {
          if (givenBack.has(`${keys.partition}:${entry[0]}`)) {
            continue;
          }
          report.scanned += 1;
          try {
            const decoded = decodeEntry(entry);
            if (looked.get(decoded.event.event_id) !== 'settled') {
              entries.push(decoded);
            }
          } catch {
            // One an operator discarded (as the runbook says to) has no event id to find it by.
            if (discarded.has(entry[0])) {
              report.discarded += 1;
            } else {
              report.failed += 1;
            }
          }
        }
        const missing = await missingFrom(
          deps,
          keys.partition,
          entries,
          discardedIn,
          report,
          looked,
        );
        for (const [partition, group] of byCurrentPartition(
          missing,
          deps.eventLog.partitions,
          keys.partition,
        )) {
          if (partition !== keys.partition) {
            report.moved += group.length;
          }
          const blocked = await countOvertaken(deps, partition, group, report);
          if (request.dryRun) {
            const behindDeadLetters = await countBehindDeadLetters(deps, group, blocked);
            // Appended, those of a blocked aggregate would follow its dead letter, not apply: the
            // run counts them failed, and the dry run says so beforehand.
            report.applied += group.length - behindDeadLetters;
            report.failed += behindDeadLetters;
          } else {
            const appended = await deps.eventLog.append({
              partition,
              events: group.map((e) => e.event),
            });
            for (const entryId of appended.kind === 'appended' ? appended.entryIds : []) {
              givenBack.add(`${partition}:${entryId}`);
            }
            resent.push(...group.map((e) => ({ eventId: e.event.event_id, partition })));
          }
        }
        await options.onProgress?.({
          partition: keys.partition,
          scanned: report.scanned,
          position: page.at(-1)?.[0] ?? '',
        });
        if (page.length < PAGE) {
          break;
        }
      }
    }
    if (!request.dryRun) {
      const before = { applied: report.applied, failed: report.failed };
      const outcomes = await waitForOutcomes(
        deps,
        resent,
        options.waitMs ?? 600_000,
        options.onWaiting &&
          ((w) =>
            options.onWaiting?.({
              ...w,
              applied: before.applied + w.applied,
              failed: before.failed + w.failed,
            })),
      );
      report.applied += outcomes.applied.length;
      report.failed += outcomes.dead.length;
      report.unfinished = outcomes.open.length;
      if (outcomes.mainDatabaseError !== undefined) {
        report.main_database_error = outcomes.mainDatabaseError;
      }
    }
  } catch (err) {
    if (resent.length === 0) {
      throw err;
    }
    // The events appended so far stay given back: the projector applies them, and the same
    // replay run again finds them applied or pending and gives back only what is still missing.
    throw new PartWayError(
      `the replay stopped after giving back ${resent.length} event(s) the main database lacked, which apply as the projector reaches them; the same replay run again gives back only what is still missing`,
      err,
    );
  }
  return report;
};

const emptyReport = (dryRun: boolean): ReplayReport => ({
  scanned: 0,
  already_applied: 0,
  applied: 0,
  failed: 0,
  dry_run: dryRun,
  in_flight: 0,
  unfinished: 0,
  discarded: 0,
  history_starts_at: null,
  overtaken: 0,
  overtaken_aggregates: [],
  moved: 0,
  unscanned_partitions: [],
});

/** The highest partition count a site can have had (OUTPOST_PARTITIONS' bound). */
const MAX_PARTITIONS = 1024;

/**
 * The partitions past the count whose streams hold events of the range that the main database
 * lacks. A count lowered (once nothing was pending, as the README says) leaves the higher
 * partitions' streams in Redis, untrimmed, since no projector holds them; their aggregates now
 * map to other partitions, so a replay cannot give their events back in order there, and says
 * so instead of reporting the range whole. Their streams are looked up by name, not by SCAN: a
 * bounded pipeline, which a Redis holding a day of idempotency keys answers at once.
 */
const streamsPastCount = async (deps: Deps, from: string, to: string): Promise<number[]> => {
  const { eventLog } = deps;
  const past = Array.from(
    { length: Math.max(0, MAX_PARTITIONS - eventLog.partitions) },
    (_, i) => eventLog.partitions + i,
  );
  const look = eventLog.redis.pipeline();
  for (const partition of past) {
    look.xrange(eventLog.keys(partition).stream, from, to, 'COUNT', 1);
  }
  const firsts = (await pipelineReplies(look)) as RawEntry[][];
  const lacking: number[] = [];
  for (const [i, partition] of past.entries()) {
    if ((firsts[i]?.length ?? 0) > 0 && (await lacksEventsOf(deps, partition, from, to))) {
      lacking.push(partition);
    }
  }
  return lacking;
};

/**
 * Whether the main database lacks an event of a partition stream's range that a replay would give
 * back, by the scan's own test (missingFrom): undecodable entries, and events discarded from the
 * dead letters or still in them, are left out (the count was lowered only with none pending and
 * the dead letters settled).
 */
const lacksEventsOf = async (
  deps: Deps,
  partition: number,
  from: string,
  to: string,
): Promise<boolean> => {
  const stream = deps.eventLog.keys(partition).stream;
  const discardedIn = discardedReaders(deps);
  // Its counts are not the replay's: these partitions are not scanned.
  const uncounted = emptyReport(true);
  const looked: LookedAt = new Map();
  let cursor = from;
  for (;;) {
    const page = (await deps.eventLog.redis.xrange(
      stream,
      cursor,
      to,
      'COUNT',
      PAGE,
    )) as RawEntry[];
    const entries = page.flatMap((entry) => {
      try {
        return [decodeEntry(entry)];
      } catch {
        return [];
      }
    });
    if ((await missingFrom(deps, partition, entries, discardedIn, uncounted, looked)).length > 0) {
      return true;
    }
    const last = page.at(-1)?.[0];
    if (page.length < PAGE || last === undefined) {
      return false;
    }
    cursor = `(${last}`;
  }
};

/** Where a partition's history begins now that trimming removed everything through `trimmedThrough`. */
const firstEntryAfter = async (
  deps: Deps,
  keys: PartitionKeys,
  trimmedThrough: string,
): Promise<string> => {
  const [first] = (await deps.eventLog.redis.xrange(
    keys.stream,
    `(${trimmedThrough}`,
    '+',
    'COUNT',
    1,
  )) as RawEntry[];
  // Nothing left after it (all trimmed): the last entry trimmed stands for where it ends.
  return first?.[0] ?? trimmedThrough;
};

/** `discardedIds` of each partition a scan asks about, each read whole once and then kept up to date. */
type DiscardedIn = (partition: number) => Promise<Discards>;

const discardedReaders = (deps: Deps): DiscardedIn => {
  const readers = new Map<number, () => Promise<Discards>>();
  return (partition) => {
    let reader = readers.get(partition);
    if (reader === undefined) {
      reader = discardedIds(deps.eventLog, partition);
      readers.set(partition, reader);
    }
    return reader();
  };
};

const currentPartitionOf = (entry: LogEntry, partitions: number, readFrom: number): number => {
  const current = partitionOf(partitionRootOf(entry.event), partitions);
  // A hand-written entry whose unit id is not a UUID names no partition: it stays where it lay.
  return Number.isInteger(current) ? current : readFrom;
};

/**
 * The entries to give back, by the partition each goes to: the one its aggregate maps to under the
 * site's count now. An event written under an earlier OUTPOST_PARTITIONS may lie in another
 * stream than its aggregate's later events; given back where it lay, the two streams' projectors
 * would apply them in either order. (Partitions are scanned in ascending order, so after a count
 * doubled, an aggregate's older stream is read before its newer one and its events go back in
 * order; after other changes, one given back after a later event of its aggregate is counted as
 * overtaken.) In order within each group, as read.
 */
const byCurrentPartition = (
  entries: readonly LogEntry[],
  partitions: number,
  readFrom: number,
): Map<number, LogEntry[]> => {
  const groups = new Map<number, LogEntry[]>();
  for (const entry of entries) {
    appendTo(groups, currentPartitionOf(entry, partitions, readFrom), [entry]);
  }
  return groups;
};

/**
 * Which entries of a partition's page are still pending, and which are dead-lettered: there, or
 * (an event of an aggregate that maps elsewhere now, given back by an earlier replay) in its
 * aggregate's partition, `currents[i]` for entry i.
 */
const heldInLog = async (
  deps: Deps,
  partition: number,
  entries: readonly LogEntry[],
  currents: readonly number[],
): Promise<{ pending: boolean[]; dead: boolean[] }> => {
  const look = async (at: number, ids: string[]) => {
    const [pending, dead] = await Promise.all([
      deps.eventLog.unacknowledged(ids, at),
      deps.eventLog.redis.hmget(deps.eventLog.keys(at).deadIndex, ...ids),
    ]);
    return { pending, dead: dead.map((letter) => letter !== null) };
  };
  const ids = entries.map((e) => e.event.event_id);
  const held = await look(partition, ids);
  for (const at of new Set(currents)) {
    if (at !== partition) {
      const movedHere = currents.flatMap((current, i) => (current === at ? [i] : []));
      const there = await look(
        at,
        movedHere.map((i) => ids[i] as string),
      );
      movedHere.forEach((i, k) => {
        held.pending[i] ||= there.pending[k] ?? false;
        held.dead[i] ||= there.dead[k] ?? false;
      });
    }
  }
  return held;
};

/** What the entries of a partition looked at so far said of each event (missingFrom). */
type LookedAt = Map<string, 'settled' | 'discarded'>;

/** The entries the main database lacks that are neither pending, dead-lettered nor discarded. */
const missingFrom = async (
  deps: Deps,
  partition: number,
  entries: LogEntry[],
  discardedIn: DiscardedIn,
  report: ReplayReport,
  /**
   * What the entries looked at before said of each event, to which this adds: an event is
   * counted by its first entry not discarded, and as discarded once, whatever entries follow. By
   * its first entry alone, a discarded one hid a later entry of the same event put back after the
   * discard, which the projector applies (isDiscardedEntry).
   */
  looked: LookedAt,
) => {
  if (entries.length === 0) {
    return [];
  }
  const ids = entries.map((e) => e.event.event_id);
  // The log before the main database: an event the projector applies and the acker acknowledges
  // between the two looks applied then. The other way round it looked neither pending nor
  // applied, was appended again (harmless, deduplicated) and counted as applied by this replay,
  // a dry run's count of what the database lacks included.
  const currents = entries.map((entry) =>
    currentPartitionOf(entry, deps.eventLog.partitions, partition),
  );
  const { pending, dead } = await heldInLog(deps, partition, entries, currents);
  const applied = await appliedEventIds(deps.main, ids);
  // After the dead index: one discarded since holds its audit record by now, filed where the
  // letter was: where the entry lies, or (given back by an earlier replay) its aggregate's
  // partition now.
  const discarded = new Map<number, Discards>();
  for (const at of new Set([partition, ...currents])) {
    discarded.set(at, await discardedIn(at));
  }
  const isDiscarded = ({ entryId, event }: LogEntry, i: number) =>
    [partition, currents[i] ?? partition].some((at) => {
      const discards = discarded.get(at);
      return discards !== undefined && isDiscardedEntry(discards, entryId, event.event_id);
    });
  const missing: LogEntry[] = [];
  entries.forEach((entry, i) => {
    const eventId = entry.event.event_id;
    const before = looked.get(eventId);
    if (before === 'settled') {
      return;
    }
    if (!applied.has(eventId) && isDiscarded(entry, i)) {
      report.discarded += before === undefined ? 1 : 0;
      looked.set(eventId, 'discarded');
      return;
    }
    looked.set(eventId, 'settled');
    if (applied.has(eventId)) {
      report.already_applied += 1;
    } else if (pending[i]) {
      report.in_flight += 1;
    } else if (dead[i]) {
      report.failed += 1;
    } else {
      missing.push(entry);
    }
  });
  return missing;
};

/**
 * Counts the missing events that a later event of their aggregate has overtaken: applied in the
 * main database, pending in the log, or dead-lettered (the aggregate blocked, so the event would
 * follow into the dead letters behind it). Appending them again is still right (a write is never
 * dropped), but the operator must check those aggregates: an older update applied after a newer
 * one shows the older values. Answers which of their aggregates, and of the aggregates they
 * derive from, are blocked by dead letters.
 */
const countOvertaken = async (
  deps: Deps,
  partition: number,
  missing: readonly LogEntry[],
  report: ReplayReport,
): Promise<ReadonlySet<string>> => {
  if (missing.length === 0) {
    return new Set();
  }
  const aggregateIds = [...new Set(missing.map((e) => e.event.aggregate_id))];
  const upstreamIds = [...new Set(missing.flatMap((e) => upstreamIdsOf(e.event)))];
  const asked = [...aggregateIds, ...upstreamIds];
  const [inflight, blocked, { rows: laterApplied }] = await Promise.all([
    deps.eventLog.readInflightMany(aggregateIds, partition),
    deps.eventLog.redis.smismember(deps.eventLog.keys(partition).blockedAggregates, asked),
    deps.main.query<{ event_id: string }>(
      `SELECT DISTINCT m.event_id::text FROM unnest($1::uuid[], $2::uuid[], $3::bigint[])
                AS m(event_id, aggregate_id, accepted_ms)
         JOIN events e ON e.aggregate_id = m.aggregate_id
                      AND (extract(epoch FROM e.occurred_at) * 1000)::bigint > m.accepted_ms`,
      [
        missing.map((e) => e.event.event_id),
        missing.map((e) => e.event.aggregate_id),
        missing.map((e) => e.event.accepted_at),
      ],
    ),
  ]);
  const newestInflight = new Map(
    aggregateIds.map((id, i) => [
      id,
      Math.max(-1, ...(inflight[i] ?? []).map((e) => e.event.accepted_at)),
    ]),
  );
  const blockedIds = new Set(asked.filter((_, i) => blocked[i] === 1));
  const appliedLater = new Set(laterApplied.map((row) => row.event_id));
  for (const { event } of missing) {
    if (
      appliedLater.has(event.event_id) ||
      blockedIds.has(event.aggregate_id) ||
      (newestInflight.get(event.aggregate_id) ?? -1) > event.accepted_at
    ) {
      report.overtaken += 1;
      if (
        report.overtaken_aggregates.length < OVERTAKEN_LISTED &&
        !report.overtaken_aggregates.includes(event.aggregate_id)
      ) {
        report.overtaken_aggregates.push(event.aggregate_id);
      }
    }
  }
  return blockedIds;
};

/**
 * How many of the missing events would follow a dead letter once given back, as the projector
 * files them, in stream order: an event of a blocked aggregate, and a file (or package) whose unit
 * (or file) is not in the main database and is blocked, or is itself to fail earlier in this group
 * (a package of a file of a blocked unit), since nothing can apply before an operator retries
 * that one.
 */
const countBehindDeadLetters = async (
  deps: Deps,
  missing: readonly LogEntry[],
  blocked: ReadonlySet<string>,
): Promise<number> => {
  const upstreamsLacking = await lackingFromMain(deps, [
    ...new Set(missing.flatMap((e) => upstreamIdsOf(e.event))),
  ]);
  const failing = new Set(blocked);
  let behind = 0;
  for (const { event } of missing) {
    if (
      failing.has(event.aggregate_id) ||
      upstreamIdsOf(event).some((id) => upstreamsLacking.has(id) && failing.has(id))
    ) {
      failing.add(event.aggregate_id);
      behind += 1;
    }
  }
  return behind;
};

/** Which of `ids` the main database holds no aggregate of. */
const lackingFromMain = async (deps: Deps, ids: string[]): Promise<Set<string>> => {
  if (ids.length === 0) {
    return new Set();
  }
  const { rows } = await deps.main.query<{ id: string }>(
    'SELECT id::text FROM aggregates WHERE id = ANY($1::uuid[])',
    [ids],
  );
  const held = new Set(rows.map((row) => row.id));
  return new Set(ids.filter((id) => !held.has(id.toLowerCase())));
};
