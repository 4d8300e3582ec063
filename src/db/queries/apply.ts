import type { AggregateState } from '../../domain/fold.ts';
import type { Queryable } from '../client.ts';

/** The projection table of each aggregate type; states are rows of these tables. */
export const PROJECTION_TABLES = {
  executed_obs_unit: 'executed_obs_units',
  raw_data_file: 'raw_data_files',
  raw_data_package: 'raw_data_packages',
  instrument_configuration: 'instrument_configurations',
} as const;
export type ProjectionTable = (typeof PROJECTION_TABLES)[keyof typeof PROJECTION_TABLES];

export type EventRow = {
  event_id: string;
  aggregate_id: string;
  seq: number;
  type: string;
  version: number;
  data: unknown;
  site: string;
  partition: number;
  stream_entry_id: string;
  occurred_at: string;
  written_by: string | null;
};
export type AggregateRow = {
  id: string;
  type: string;
  site: string;
  partition: number;
  created_at: string;
};
export type HeadRow = { aggregate_id: string; seq: number; event_id: string; at: string };
export type LinkRow = { upstream_id: string; downstream_id: string; kind: string };

/*
 * Every batch write is one statement fed by one JSON array, whatever the batch size: round trips
 * stay constant per batch, and the JSON goes into PostgreSQL once instead of as thousands of
 * parameters.
 */
const json = (rows: readonly unknown[]) => JSON.stringify(rows);

export const appliedEventIds = async (db: Queryable, eventIds: readonly string[]) => {
  const { rows } = await db.query<{ event_id: string; has_lsn: boolean }>(
    'SELECT event_id, commit_lsn IS NOT NULL AS has_lsn FROM events WHERE event_id = ANY($1::uuid[])',
    [eventIds],
  );
  return new Map(rows.map((row) => [row.event_id, row.has_lsn]));
};

export const headSeqs = async (db: Queryable, aggregateIds: readonly string[]) => {
  const { rows } = await db.query<{ aggregate_id: string; seq: number }>(
    `SELECT aggregate_id, max(seq) AS seq FROM aggregate_heads
      WHERE aggregate_id = ANY($1::uuid[]) AND ref = 'head' GROUP BY aggregate_id`,
    [aggregateIds],
  );
  return new Map(rows.map((row) => [row.aggregate_id, row.seq]));
};

const TIMESTAMP_FIELDS = ['accepted_at', 'updated_at', 'start_time', 'end_time', 'created_at'];

/** Rows come back with `+00:00` offsets; states carry the ISO form the fold writes (`Z`). */
export const stateFromRow = (row: Record<string, unknown>): AggregateState => {
  const state: Record<string, unknown> = { ...row };
  for (const field of TIMESTAMP_FIELDS) {
    const value = state[field];
    if (typeof value === 'string') {
      state[field] = new Date(value).toISOString();
    }
  }
  return state as AggregateState;
};

export const projectionRows = async (
  db: Queryable,
  table: ProjectionTable,
  ids: readonly string[],
): Promise<AggregateState[]> => {
  const { rows } = await db.query<{ row: Record<string, unknown> }>(
    `SELECT to_jsonb(t) AS row FROM ${table} t WHERE id = ANY($1::uuid[])`,
    [ids],
  );
  return rows.map((r) => stateFromRow(r.row));
};

export const insertAggregates = async (db: Queryable, rows: readonly AggregateRow[]) => {
  if (rows.length > 0) {
    await db.query(
      `INSERT INTO aggregates (id, type, site, partition, created_at)
       SELECT id, type, site, partition, created_at
         FROM jsonb_to_recordset($1::jsonb)
           AS r(id uuid, type text, site text, partition int, created_at timestamptz)`,
      [json(rows)],
    );
  }
};

export const insertEvents = async (db: Queryable, rows: readonly EventRow[]) => {
  if (rows.length > 0) {
    await db.query(
      `INSERT INTO events (event_id, aggregate_id, seq, type, version, data, site, partition,
                           stream_entry_id, occurred_at, written_by)
       SELECT event_id, aggregate_id, seq, type, version, data, site, partition,
              stream_entry_id, occurred_at, written_by
         FROM jsonb_to_recordset($1::jsonb)
           AS r(event_id uuid, aggregate_id uuid, seq int, type text, version int, data jsonb,
                site text, partition int, stream_entry_id text, occurred_at timestamptz,
                written_by text)`,
      [json(rows)],
    );
  }
};

/** Heads and stats of aggregates created in this batch. */
export const insertHeadsAndStats = async (db: Queryable, rows: readonly HeadRow[]) => {
  if (rows.length > 0) {
    await db.query(
      `WITH r AS (SELECT * FROM jsonb_to_recordset($1::jsonb)
                    AS r(aggregate_id uuid, seq int, event_id uuid, at timestamptz)),
            heads AS (INSERT INTO aggregate_heads (aggregate_id, ref, seq, event_id)
                      SELECT aggregate_id, 'head', seq, event_id FROM r)
       INSERT INTO aggregate_stats (aggregate_id, event_count, last_event_at)
       SELECT aggregate_id, seq + 1, at FROM r`,
      [json(rows)],
    );
  }
};

/** Heads and stats of aggregates that existed before this batch. */
export const advanceHeadsAndStats = async (db: Queryable, rows: readonly HeadRow[]) => {
  if (rows.length > 0) {
    await db.query(
      `WITH r AS (SELECT * FROM jsonb_to_recordset($1::jsonb)
                    AS r(aggregate_id uuid, seq int, event_id uuid, at timestamptz)),
            heads AS (UPDATE aggregate_heads h SET seq = r.seq, event_id = r.event_id
                        FROM r WHERE h.aggregate_id = r.aggregate_id AND h.ref = 'head')
       UPDATE aggregate_stats s SET event_count = r.seq + 1, last_event_at = r.at
         FROM r WHERE s.aggregate_id = r.aggregate_id`,
      [json(rows)],
    );
  }
};

export const insertLinks = async (db: Queryable, rows: readonly LinkRow[]) => {
  if (rows.length > 0) {
    await db.query(
      `INSERT INTO aggregate_links (upstream_id, downstream_id, kind)
       SELECT upstream_id, downstream_id, kind
         FROM jsonb_to_recordset($1::jsonb) AS r(upstream_id uuid, downstream_id uuid, kind text)
       ON CONFLICT DO NOTHING`,
      [json(rows)],
    );
  }
};

const projectionColumns = new Map<ProjectionTable, string[]>();

/** The columns of a projection table, read once from the catalog so states map onto rows. */
const columnsOf = async (db: Queryable, table: ProjectionTable): Promise<string[]> => {
  const known = projectionColumns.get(table);
  if (known) {
    return known;
  }
  const { rows } = await db.query<{ column_name: string }>(
    `SELECT column_name FROM information_schema.columns
      WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position`,
    [table],
  );
  const columns = rows.map((r) => r.column_name);
  projectionColumns.set(table, columns);
  return columns;
};

/** Writes folded states as whole rows: insert new aggregates, replace existing ones. */
export const upsertProjection = async (
  db: Queryable,
  table: ProjectionTable,
  states: readonly AggregateState[],
) => {
  if (states.length === 0) {
    return;
  }
  const columns = await columnsOf(db, table);
  const list = columns.map((c) => `"${c}"`).join(', ');
  const updates = columns
    .filter((c) => c !== 'id')
    .map((c) => `"${c}" = excluded."${c}"`)
    .join(', ');
  await db.query(
    `INSERT INTO ${table} (${list})
     SELECT ${list} FROM jsonb_populate_recordset(null::${table}, $1::jsonb)
     ON CONFLICT (id) DO UPDATE SET ${updates}`,
    [json(states)],
  );
};

export const currentWalInsertLsn = async (db: Queryable): Promise<string> => {
  const { rows } = await db.query<{ lsn: string }>(
    'SELECT pg_current_wal_insert_lsn()::text AS lsn',
  );
  return rows[0]?.lsn ?? '';
};

export const setCommitLsn = async (db: Queryable, lsn: string, eventIds: readonly string[]) => {
  if (eventIds.length > 0) {
    await db.query(
      `UPDATE events SET commit_lsn = $1::pg_lsn
        WHERE event_id = ANY($2::uuid[]) AND commit_lsn IS NULL`,
      [lsn, eventIds],
    );
  }
};
