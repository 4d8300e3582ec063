import type pg from 'pg';
import stringify from 'safe-stable-stringify';
import { PROJECTION_TABLES, projectionRows, upsertProjection } from '../db/queries/apply.ts';
import { differingBookkeeping, repairBookkeeping } from '../db/queries/bookkeeping.ts';
import type { AggregateType, Envelope } from '../domain/events.ts';
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
  /** The first differences found (all of them are counted in `differing`). */
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
const eventsPage = async (db: pg.Pool, after: string): Promise<AggregateEvents[]> => {
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

/** The state the events say the aggregate is in: the projector's own fold, after upcasting. */
export const foldStored = (aggregate: AggregateEvents): AggregateState | undefined =>
  fold(
    undefined,
    aggregate.events.map((e) => upcast({ ...e, accepted_at: Number(e.accepted_at) } as Envelope)),
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

/**
 * Recomputes every projection row from the events table with the projector's fold, and each
 * aggregate's head, stats and links from its events (src/db/queries/bookkeeping.ts). `verify` and
 * `dry-run` only report; `apply` rewrites the rows that differ.
 */
export const rebuildProjections = async (
  main: pg.Pool,
  mode: RebuildMode,
  onProgress?: (done: number) => void,
): Promise<RebuildReport> => {
  const report: RebuildReport = { mode, aggregates: 0, differing: 0, fixed: 0, differences: [] };
  let after = '00000000-0000-0000-0000-000000000000';
  const record = (difference: Difference) => {
    report.differing += 1;
    if (report.differences.length < MAX_LISTED) {
      report.differences.push(difference);
    }
  };
  for (;;) {
    const page = await eventsPage(main, after);
    if (page.length === 0) {
      return report;
    }
    after = page.at(-1)?.id ?? after;
    const byTable = new Map<string, { aggregate: AggregateEvents; expected: AggregateState }[]>();
    for (const aggregate of page) {
      const expected = aggregate.events.length > 0 ? foldStored(aggregate) : undefined;
      if (expected) {
        const table = PROJECTION_TABLES[aggregate.type];
        byTable.set(table, [...(byTable.get(table) ?? []), { aggregate, expected }]);
      }
    }
    for (const [table, items] of byTable) {
      const actual = new Map(
        (
          await projectionRows(
            main,
            table as (typeof PROJECTION_TABLES)[AggregateType],
            items.map((i) => i.aggregate.id),
          )
        ).map((row) => [row.id, row]),
      );
      const fixes: AggregateState[] = [];
      for (const { aggregate, expected } of items) {
        const fields = differingFields(expected, actual.get(aggregate.id));
        if (fields.length > 0) {
          record({ aggregate_id: aggregate.id, aggregate_type: aggregate.type, table, fields });
          fixes.push(expected);
        }
      }
      if (mode === 'apply' && fixes.length > 0) {
        await upsertProjection(main, table as (typeof PROJECTION_TABLES)[AggregateType], fixes);
        report.fixed += fixes.length;
      }
    }
    // After the projections: a missing link is read off the projection row that names it.
    const bookkeeping = await differingBookkeeping(
      main,
      page.map((aggregate) => aggregate.id),
    );
    const typeOf = new Map(page.map((aggregate) => [aggregate.id, aggregate.type]));
    for (const { aggregate_id, table } of bookkeeping) {
      record({
        aggregate_id,
        aggregate_type: typeOf.get(aggregate_id) ?? '',
        table,
        fields: ['*'],
      });
    }
    if (mode === 'apply' && bookkeeping.length > 0) {
      await repairBookkeeping(main, bookkeeping);
      report.fixed += bookkeeping.length;
    }
    report.aggregates += page.length;
    onProgress?.(report.aggregates);
  }
};
