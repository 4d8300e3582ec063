import type pg from 'pg';
import stringify from 'safe-stable-stringify';
import { type Queryable, withConnection } from '../db/client.ts';
import { PROJECTION_TABLES, projectionRows, upsertProjection } from '../db/queries/apply.ts';
import {
  type BookkeepingTable,
  differingBookkeeping,
  type ExpectedLinks,
  repairBookkeeping,
} from '../db/queries/bookkeeping.ts';
import {
  acquireLeases,
  type Lease,
  leaseHoldings,
  releaseLeases,
  renewLeasesIn,
} from '../db/queries/leases.ts';
import { type AggregateType, type Envelope, linksOf } from '../domain/events.ts';
import { type AggregateState, fold } from '../domain/fold.ts';
import { upcast } from '../domain/upcast.ts';

export type RebuildMode = 'apply' | 'dry-run' | 'verify';

export type Difference = {
  aggregate_id: string;
  aggregate_type: string;
  table: string;
  /**
   * Columns whose stored value differs from the fold; `*` when the row is missing, and for the
   * heads, stats and links beside the projections, when they are not what the events say.
   */
  fields: string[];
};

export type RebuildReport = {
  mode: RebuildMode;
  aggregates: number;
  differing: number;
  fixed: number;
  /**
   * Aggregates whose events do not fold (a first event that is no creation, a version this build
   * does not know): listed with the reason in `fields`, counted in `differing`, left as they are.
   */
  unfoldable: number;
  /**
   * The first differences found, up to a thousand rows that differ and a thousand unfoldable
   * aggregates, so the rows never crowd the unfoldable out (all are counted in `differing`).
   */
  differences: Difference[];
};

const PAGE = 500;
const MAX_LISTED = 1000;

type AggregateEvents = {
  id: string;
  type: AggregateType;
  events: (Omit<Envelope, 'accepted_at'> & { accepted_at: string })[];
};

/** The events of a page of aggregates, in seq order, shaped as the log carries them. */
const eventsPage = async (db: Queryable, after: string): Promise<AggregateEvents[]> => {
  const { rows } = await db.query<AggregateEvents>(
    `SELECT a.id::text, a.type,
            COALESCE(json_agg(json_build_object(
              'event_id', e.event_id, 'aggregate_id', e.aggregate_id, 'aggregate_type', a.type,
              'type', e.type, 'version', e.version, 'data', e.data, 'site', e.site,
              'accepted_at', (extract(epoch FROM e.occurred_at) * 1000)::bigint::text) ORDER BY e.seq)
              FILTER (WHERE e.event_id IS NOT NULL), '[]') AS events
       FROM (SELECT id, type FROM aggregates WHERE id > $1::uuid ORDER BY id LIMIT $2) a
       LEFT JOIN events e ON e.aggregate_id = a.id
      GROUP BY a.id, a.type ORDER BY a.id`,
    [after, PAGE],
  );
  return rows;
};

/** An aggregate's stored events as the log carries them, upcast as the projector reads them. */
const upcastStored = (aggregate: AggregateEvents): Envelope[] =>
  aggregate.events.map((e) => upcast({ ...e, accepted_at: Number(e.accepted_at) } as Envelope));

/** The state the events say the aggregate is in: the projector's own fold, after upcasting. */
export const foldStored = (aggregate: AggregateEvents): AggregateState | undefined =>
  fold(undefined, upcastStored(aggregate));

/** The upstream edges an aggregate's events name, as the projector links them. */
const linksOfStored = (aggregate: AggregateEvents): ExpectedLinks =>
  upcastStored(aggregate).flatMap((event) =>
    linksOf(event).map((link) => ({ ...link, downstream_id: aggregate.id })),
  );

const differingFields = (
  expected: AggregateState,
  actual: AggregateState | undefined,
): string[] => {
  if (!actual) {
    return ['*'];
  }
  const keys = new Set([...Object.keys(expected), ...Object.keys(actual)]);
  return [...keys].filter(
    (k) =>
      stringify((expected as Record<string, unknown>)[k]) !==
      stringify((actual as Record<string, unknown>)[k]),
  );
};

/** The lease owner an operator sees while a rebuild holds the partitions (`outpost pending`). */
export const REBUILD_OWNER = 'rebuild-projections';

/** Thrown when a partition's lease cannot be taken, or was lost while the rebuild wrote. */
export class RebuildLeaseError extends Error {
  override name = 'RebuildLeaseError';
}

/**
 * Every partition's lease, of every site sharing the main database, held by the rebuild:
 * projectors started while it runs (a supervisor's restart, a second operator) wait for them
 * instead of applying events beside it, and each page is written only while all of them are still
 * the rebuild's (`renewLeasesIn`). A rebuild folds rows from the events it read a moment before;
 * beside a projector it would put a row back behind an event committed in between (a finished
 * unit running again). It rewrites every site's rows, so every site's projectors must wait: it
 * takes each partition number's lease of every site (site '', which keeps it from all of them,
 * a site that never leased one too) and every site's own lease there is.
 */
export const holdPartitions = async (
  main: pg.Pool,
  partitions: number,
  ttlMs: number,
): Promise<Lease[]> => {
  // All in one statement and one transaction, or none: taken one at a time over a distant link,
  // the first would lapse before the last was taken.
  return withConnection(main, async (client) => {
    await client.query('BEGIN');
    try {
      // Read and taken with the table locked against lease writes: a site's first lease of a
      // number, taken between the read and the commit, would be neither seen nor kept out (its
      // check of the every-site lease would see the rebuild's as it was before).
      await client.query('LOCK TABLE partition_leases IN SHARE ROW EXCLUSIVE MODE');
      // The leases table's too: each site's, and a projector configured with more than this shell.
      const holdings = await leaseHoldings(client);
      const numbers = new Set([...Array(partitions).keys(), ...holdings.map((h) => h.partition)]);
      const wanted = new Map<string, { site: string; partition: number }>();
      for (const key of [
        ...[...numbers].map((partition) => ({ site: '', partition })),
        ...holdings.map(({ site, partition }) => ({ site, partition })),
      ]) {
        wanted.set(`${key.site}/${key.partition}`, key);
      }
      const all = [...wanted.values()];
      const rows = await acquireLeases(client, all, REBUILD_OWNER, ttlMs);
      if (rows.length < all.length) {
        const taken = new Set(rows.map((row) => `${row.site}/${row.partition}`));
        const held = [...wanted.keys()].filter((key) => !taken.has(key));
        throw new RebuildLeaseError(`partition(s) ${held.join(', ')} (site/partition) are held`);
      }
      await client.query('COMMIT');
      return rows.map((row) => ({ ...row, consumer: REBUILD_OWNER }));
    } catch (err) {
      await client.query('ROLLBACK').catch(() => undefined);
      throw err;
    }
  });
};

/**
 * Renews the rebuild's leases every third of their lifetime until the returned stop is called:
 * a page read slowly must not let them lapse between two writes. A renewal that fails is left to
 * the next page's own check, which then says the rebuild lost them.
 */
export const keepPartitions = (
  main: pg.Pool,
  leases: readonly Lease[],
  ttlMs: number,
): (() => void) => {
  if (leases.length === 0) {
    return () => undefined;
  }
  // One renewal at a time: one waits behind a page's transaction, which holds the lease rows.
  let renewing = false;
  const timer = setInterval(
    () => {
      if (!renewing) {
        renewing = true;
        void renewLeasesIn(main, leases, ttlMs)
          .catch(() => undefined)
          .finally(() => {
            renewing = false;
          });
      }
    },
    Math.max(50, Math.floor(ttlMs / 3)),
  );
  timer.unref();
  return () => clearInterval(timer);
};

export const releasePartitions = (main: pg.Pool, leases: readonly Lease[]): Promise<void> =>
  releaseLeases(main, leases).catch(() => undefined);

type Fixes = { table: (typeof PROJECTION_TABLES)[AggregateType]; states: AggregateState[] }[];

/**
 * A page's rewrites in one transaction, under the rebuild's leases: the projection rows, then the
 * bookkeeping read after them (a missing link is read off the projection row that names it).
 */
const writePage = async (
  main: pg.Pool,
  fixes: Fixes,
  ids: readonly string[],
  links: ExpectedLinks,
  fence: { leases: readonly Lease[]; ttlMs: number } | undefined,
) =>
  withConnection(main, async (client) => {
    await client.query('BEGIN');
    try {
      if (fence && !(await renewLeasesIn(client, fence.leases, fence.ttlMs))) {
        throw new RebuildLeaseError(
          'the rebuild lost a partition lease while it ran (a page took longer than the lease lasts?); run it again',
        );
      }
      for (const { table, states } of fixes) {
        await upsertProjection(client, table, states);
      }
      const bookkeeping = await differingBookkeeping(client, ids, links);
      await repairBookkeeping(client, bookkeeping, links);
      await client.query('COMMIT');
      return bookkeeping;
    } catch (err) {
      await client.query('ROLLBACK').catch(() => undefined);
      throw err;
    }
  });

/**
 * Recomputes every projection row from the events table with the projector's fold, and each
 * aggregate's head, stats and links from its events (src/db/queries/bookkeeping.ts). `verify` and
 * `dry-run` only report; `apply` rewrites the rows that differ, each page under `fence`, the
 * partition leases of `holdPartitions`.
 */
export const rebuildProjections = async (
  main: pg.Pool,
  mode: RebuildMode,
  {
    onProgress,
    fence,
  }: {
    onProgress?: (done: number) => void;
    fence?: { leases: readonly Lease[]; ttlMs: number };
  } = {},
): Promise<RebuildReport> => {
  const report: RebuildReport = {
    mode,
    aggregates: 0,
    differing: 0,
    fixed: 0,
    unfoldable: 0,
    differences: [],
  };
  let after = '00000000-0000-0000-0000-000000000000';
  let listedUnfoldable = 0;
  const record = (difference: Difference, unfoldable = false) => {
    report.differing += 1;
    const listed = unfoldable ? listedUnfoldable : report.differences.length - listedUnfoldable;
    if (listed < MAX_LISTED) {
      report.differences.push(difference);
      listedUnfoldable += unfoldable ? 1 : 0;
    }
  };
  // Only reporting, each page's reads share one snapshot: read apart, a batch a projector
  // committed between a page's events and its rows showed rows ahead of the fold, differences
  // that were not there, and --verify failed. Applying, the rebuild holds every partition's
  // lease, so nothing else commits meanwhile.
  const inSnapshot = <T>(read: (db: Queryable) => Promise<T>): Promise<T> =>
    mode === 'apply'
      ? read(main)
      : withConnection(main, async (client) => {
          await client.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY');
          const result = await read(client);
          await client.query('COMMIT');
          return result;
        });
  /** Checks (and, applying, rewrites) the page after `after`; true when there was none. */
  const rebuildPage = async (db: Queryable): Promise<boolean> => {
    const page = await eventsPage(db, after);
    if (page.length === 0) {
      return true;
    }
    after = page.at(-1)?.id ?? after;
    const byTable = new Map<string, { aggregate: AggregateEvents; expected: AggregateState }[]>();
    const links: ExpectedLinks[number][] = [];
    for (const aggregate of page) {
      const table = PROJECTION_TABLES[aggregate.type];
      try {
        const expected = aggregate.events.length > 0 ? foldStored(aggregate) : undefined;
        if (expected) {
          links.push(...linksOfStored(aggregate));
          byTable.set(table, [...(byTable.get(table) ?? []), { aggregate, expected }]);
        }
      } catch (err) {
        // One such aggregate must not stop the rest, least of all under --verify, which an
        // operator reaches for when the integrity views report such problems.
        report.unfoldable += 1;
        record(
          {
            aggregate_id: aggregate.id,
            aggregate_type: aggregate.type,
            table,
            fields: [`unfoldable: ${(err as Error).message}`],
          },
          true,
        );
      }
    }
    const fixes: Fixes = [];
    for (const [table, items] of byTable) {
      const projectionTable = table as (typeof PROJECTION_TABLES)[AggregateType];
      const actual = new Map(
        (
          await projectionRows(
            db,
            projectionTable,
            items.map((i) => i.aggregate.id),
          )
        ).map((row) => [row.id, row]),
      );
      const states: AggregateState[] = [];
      for (const { aggregate, expected } of items) {
        const fields = differingFields(expected, actual.get(aggregate.id));
        if (fields.length > 0) {
          record({ aggregate_id: aggregate.id, aggregate_type: aggregate.type, table, fields });
          states.push(expected);
        }
      }
      if (states.length > 0) {
        fixes.push({ table: projectionTable, states });
      }
    }
    const ids = page.map((aggregate) => aggregate.id);
    const bookkeeping: readonly { aggregate_id: string; table: BookkeepingTable }[] =
      mode === 'apply'
        ? await writePage(main, fixes, ids, links, fence)
        : await differingBookkeeping(db, ids, links);
    if (mode === 'apply') {
      report.fixed += fixes.reduce((n, { states }) => n + states.length, 0) + bookkeeping.length;
    }
    const typeOf = new Map(page.map((aggregate) => [aggregate.id, aggregate.type]));
    for (const { aggregate_id, table } of bookkeeping) {
      record({
        aggregate_id,
        aggregate_type: typeOf.get(aggregate_id) ?? '',
        table,
        fields: ['*'],
      });
    }
    report.aggregates += page.length;
    onProgress?.(report.aggregates);
    return false;
  };
  for (;;) {
    const last = await inSnapshot(rebuildPage);
    if (last) {
      return report;
    }
  }
};
