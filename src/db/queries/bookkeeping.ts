import type { Queryable } from '../client.ts';

/** The derived rows beside the projections, each of which its events alone determine. */
export type BookkeepingTable = 'aggregate_heads' | 'aggregate_stats' | 'aggregate_links';

/*
 * What the events say each aggregate's bookkeeping must be: one 'head' row at its newest event,
 * one stats row counting every event and dated at the newest, and a link for every upstream its
 * events name (`ExpectedLinks`, from the fold's `linksOf`). The same invariants as the integrity
 * views missing_head, missing_stats, head_mismatch and missing_link, for a page of aggregates.
 * The links come from the events, not from the projection rows: a rebuild that only reports
 * reads rows still damaged, and a missing row named no link to miss.
 */
const NEWEST = `SELECT DISTINCT ON (e.aggregate_id) e.aggregate_id, e.seq, e.event_id, e.occurred_at
                  FROM events e WHERE e.aggregate_id = ANY($1::uuid[])
                 ORDER BY e.aggregate_id, e.seq DESC`;
const COUNTS = `SELECT aggregate_id, count(*)::int AS events
                  FROM events WHERE aggregate_id = ANY($1::uuid[]) GROUP BY aggregate_id`;
const LINKS = `SELECT * FROM unnest($2::uuid[], $3::uuid[], $4::text[]) AS l(downstream_id, upstream_id, kind)`;

/** The upstream edges of a page's derived aggregates, as its events name them. */
export type ExpectedLinks = readonly { downstream_id: string; upstream_id: string; kind: string }[];

const linkParams = (links: ExpectedLinks) => [
  links.map((l) => l.downstream_id),
  links.map((l) => l.upstream_id),
  links.map((l) => l.kind),
];

const DIFFERING_SQL = `
  WITH newest AS (${NEWEST}), counts AS (${COUNTS}), links AS (${LINKS})
  SELECT n.aggregate_id::text, 'aggregate_heads' AS "table" FROM newest n
   WHERE (SELECT count(*) FROM aggregate_heads h
           WHERE h.aggregate_id = n.aggregate_id AND h.ref = 'head') <> 1
      OR NOT EXISTS (SELECT 1 FROM aggregate_heads h
                      WHERE h.aggregate_id = n.aggregate_id AND h.ref = 'head'
                        AND h.seq = n.seq AND h.event_id = n.event_id)
  UNION ALL
  SELECT n.aggregate_id::text, 'aggregate_stats' FROM newest n JOIN counts c USING (aggregate_id)
   WHERE (SELECT count(*) FROM aggregate_stats s WHERE s.aggregate_id = n.aggregate_id) <> 1
      OR NOT EXISTS (SELECT 1 FROM aggregate_stats s
                      WHERE s.aggregate_id = n.aggregate_id AND s.event_count = c.events
                        AND s.last_event_at = n.occurred_at)
  UNION ALL
  SELECT DISTINCT l.downstream_id::text, 'aggregate_links' FROM links l
   WHERE NOT EXISTS (SELECT 1 FROM aggregate_links k
                      WHERE k.downstream_id = l.downstream_id AND k.upstream_id = l.upstream_id
                        AND k.kind = l.kind)
  ORDER BY 1, 2`;

/** The aggregates of `ids` whose heads, stats or links differ from what their events say. */
export const differingBookkeeping = async (
  db: Queryable,
  ids: readonly string[],
  links: ExpectedLinks,
): Promise<{ aggregate_id: string; table: BookkeepingTable }[]> =>
  (await db.query(DIFFERING_SQL, [ids, ...linkParams(links)])).rows;

/** What rewrites each table's rows for the aggregates `$1` names, from their events. */
const REPAIRS: Record<BookkeepingTable, string[]> = {
  aggregate_heads: [
    `DELETE FROM aggregate_heads WHERE ref = 'head' AND aggregate_id = ANY($1::uuid[])`,
    `INSERT INTO aggregate_heads (aggregate_id, ref, seq, event_id)
       SELECT aggregate_id, 'head', seq, event_id FROM (${NEWEST}) n`,
  ],
  aggregate_stats: [
    `DELETE FROM aggregate_stats WHERE aggregate_id = ANY($1::uuid[])`,
    `INSERT INTO aggregate_stats (aggregate_id, event_count, last_event_at)
       SELECT n.aggregate_id, c.events, n.occurred_at
         FROM (${NEWEST}) n JOIN (${COUNTS}) c USING (aggregate_id)`,
  ],
  aggregate_links: [
    `INSERT INTO aggregate_links (upstream_id, downstream_id, kind)
       SELECT upstream_id, downstream_id, kind FROM (${LINKS}) l
        WHERE downstream_id = ANY($1::uuid[])
       ON CONFLICT DO NOTHING`,
  ],
};

/**
 * Rewrites, inside the caller's transaction, each differing row from the events: a head or stats row only where
 * that row differs, since a projector advancing a sound aggregate meanwhile must not lose its step
 * to a rewrite; links are only added (the integrity views know no problem of an extra one). Every
 * differing head or stats row belongs to an aggregate with events, so none is deleted for good.
 */
export const repairBookkeeping = async (
  db: Queryable,
  differing: readonly { aggregate_id: string; table: BookkeepingTable }[],
  links: ExpectedLinks,
) => {
  for (const [table, statements] of Object.entries(REPAIRS)) {
    const ids = differing.filter((d) => d.table === table).map((d) => d.aggregate_id);
    const params = table === 'aggregate_links' ? [ids, ...linkParams(links)] : [ids];
    for (const statement of ids.length > 0 ? statements : []) {
      await db.query(statement, params);
    }
  }
};
