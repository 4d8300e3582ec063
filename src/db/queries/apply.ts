import type pg from 'pg';
import type { AggregateState } from '../../domain/fold.ts';
import { prepared, type Queryable } from '../client.ts';
import { type Lease, leasesHeldSql, leasesParams } from './leases.ts';

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
 * parameters. It is read as jsonb: an event's `data` and a state's `metadata` then reach their
 * jsonb columns as parsed values, where rows read from `json` text were parsed once for the array
 * and again for each such column (a drain of 200,000 events: 9.3k → 10.1k events/s).
 */
const json = (rows: readonly unknown[]) => JSON.stringify(rows);

export const appliedEventIds = async (db: Queryable, eventIds: readonly string[]) => {
  const { rows } = await db.query<{ event_id: string; has_lsn: boolean }>(
    prepared(
      'SELECT event_id, commit_lsn IS NOT NULL AS has_lsn FROM events WHERE event_id = ANY($1::uuid[])',
      [eventIds],
    ),
  );
  return new Map(rows.map((row) => [row.event_id, row.has_lsn]));
};

/**
 * Which main database answers, and how far its WAL is flushed. A restore from a backup or a
 * failover changes one of them: another cluster, a new timeline, or a position gone back.
 */
export type MainPosition = { system: string; timeline: string; lsn: string };

/**
 * appliedEventIds, and in the same statement the main database's position: a batch checks that
 * it still writes to the database its earlier batches were committed to, at no extra round trip.
 */
export const appliedEventIdsAt = async (
  db: Queryable,
  eventIds: readonly string[],
): Promise<{ known: Map<string, boolean>; position: MainPosition }> => {
  const { rows } = await db.query<MainPosition & { event_id: string | null; has_lsn: boolean }>(
    prepared(
      `SELECT p.system, p.timeline, p.lsn, e.event_id, e.commit_lsn IS NOT NULL AS has_lsn
         FROM (SELECT system_identifier::text AS system,
                      substr(pg_walfile_name(pg_current_wal_flush_lsn()), 1, 8) AS timeline,
                      pg_current_wal_flush_lsn()::text AS lsn
                 FROM pg_control_system()) p
         LEFT JOIN events e ON e.event_id = ANY($1::uuid[])`,
      [eventIds],
    ),
  );
  const [first] = rows;
  if (!first) {
    throw new Error('the main database answered no position');
  }
  return {
    known: new Map(rows.flatMap((row) => (row.event_id ? [[row.event_id, row.has_lsn]] : []))),
    position: { system: first.system, timeline: first.timeline, lsn: first.lsn },
  };
};

export const headSeqs = async (db: Queryable, aggregateIds: readonly string[]) => {
  const { rows } = await db.query<{ aggregate_id: string; seq: number }>(
    prepared(
      `SELECT aggregate_id, max(seq) AS seq FROM aggregate_heads
        WHERE aggregate_id = ANY($1::uuid[]) AND ref = 'head' GROUP BY aggregate_id`,
      [aggregateIds],
    ),
  );
  return new Map(rows.map((row) => [row.aggregate_id, row.seq]));
};

/** Which of these aggregates the main database holds. */
export const existingAggregateIds = async (
  db: Queryable,
  ids: readonly string[],
): Promise<Set<string>> => {
  const { rows } = await db.query<{ id: string }>(
    prepared('SELECT id FROM aggregates WHERE id = ANY($1::uuid[])', [ids]),
  );
  return new Set(rows.map((row) => row.id));
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
    prepared(`SELECT to_jsonb(t) AS row FROM ${table} t WHERE id = ANY($1::uuid[])`, [ids]),
  );
  return rows.map((r) => stateFromRow(r.row));
};

export type BatchWrite = {
  aggregates: readonly AggregateRow[];
  events: readonly EventRow[];
  /** Heads and stats of aggregates created in this batch. */
  createdHeads: readonly HeadRow[];
  /** Heads and stats of aggregates that existed before this batch. */
  advancedHeads: readonly HeadRow[];
  links: readonly LinkRow[];
  projections: ReadonlyMap<ProjectionTable, readonly AggregateState[]>;
};

const HEAD_RECORD = 'aggregate_id uuid, seq int, event_id uuid, at timestamptz';

/**
 * Writes a whole batch in one statement, one CTE per table, and only while every one of `leases`
 * holds: the fencing check is part of the same statement, so a fenced projector writes nothing.
 * A batch may gather several partitions' events (see BatchCombiner); one lapsed lease writes
 * none. Run outside a transaction block, the statement is its own transaction: all of the batch
 * or none, committed when it returns, with no BEGIN or COMMIT round trips around it. One round
 * trip instead of one per table matters because every round trip of eight busy partitions waits
 * its turn on shared cores. The tables have no foreign keys between them, so the CTEs can write
 * in any order. False when any lease is no longer held.
 */
export const writeBatch = async (
  db: Queryable,
  batch: BatchWrite,
  leases: readonly Lease[],
): Promise<boolean> => {
  const params: unknown[] = leasesParams(leases);
  const ctes = [`held AS MATERIALIZED (${leasesHeldSql(1)})`];
  const leased = '(SELECT count(*) FROM held) = cardinality($1::int[])';
  const rowsOf = (rows: readonly unknown[], record: string) => {
    params.push(json(rows));
    return `jsonb_to_recordset($${params.length}::jsonb) AS r(${record})`;
  };
  if (batch.aggregates.length > 0) {
    ctes.push(`w_aggregates AS (
      INSERT INTO aggregates (id, type, site, partition, created_at)
      SELECT id, type, site, partition, created_at
        FROM ${rowsOf(batch.aggregates, 'id uuid, type text, site text, partition int, created_at timestamptz')}
       WHERE ${leased})`);
  }
  if (batch.events.length > 0) {
    ctes.push(`w_events AS (
      INSERT INTO events (event_id, aggregate_id, seq, type, version, data, site, partition,
                          stream_entry_id, occurred_at, written_by)
      SELECT event_id, aggregate_id, seq, type, version, data, site, partition,
             stream_entry_id, occurred_at, written_by
        FROM ${rowsOf(
          batch.events,
          `event_id uuid, aggregate_id uuid, seq int, type text, version int, data jsonb,
           site text, partition int, stream_entry_id text, occurred_at timestamptz,
           written_by text`,
        )}
       WHERE ${leased})`);
  }
  if (batch.createdHeads.length > 0) {
    ctes.push(
      `created AS (SELECT * FROM ${rowsOf(batch.createdHeads, HEAD_RECORD)})`,
      `w_created_heads AS (
        INSERT INTO aggregate_heads (aggregate_id, ref, seq, event_id)
        SELECT aggregate_id, 'head', seq, event_id FROM created WHERE ${leased})`,
      `w_created_stats AS (
        INSERT INTO aggregate_stats (aggregate_id, event_count, last_event_at)
        SELECT aggregate_id, seq + 1, at FROM created WHERE ${leased})`,
    );
  }
  if (batch.advancedHeads.length > 0) {
    ctes.push(
      `advanced AS (SELECT * FROM ${rowsOf(batch.advancedHeads, HEAD_RECORD)})`,
      `w_advanced_heads AS (
        UPDATE aggregate_heads h SET seq = a.seq, event_id = a.event_id
          FROM advanced a
         WHERE h.aggregate_id = a.aggregate_id AND h.ref = 'head' AND ${leased})`,
      `w_advanced_stats AS (
        UPDATE aggregate_stats s SET event_count = a.seq + 1, last_event_at = a.at
          FROM advanced a
         WHERE s.aggregate_id = a.aggregate_id AND ${leased})`,
    );
  }
  if (batch.links.length > 0) {
    ctes.push(`w_links AS (
      INSERT INTO aggregate_links (upstream_id, downstream_id, kind)
      SELECT upstream_id, downstream_id, kind
        FROM ${rowsOf(batch.links, 'upstream_id uuid, downstream_id uuid, kind text')}
       WHERE ${leased}
      ON CONFLICT DO NOTHING)`);
  }
  for (const [table, states] of batch.projections) {
    if (states.length > 0) {
      params.push(json(states));
      const upsert = projectionUpsertSql(table, await columnsOf(db, table), params.length, leased);
      ctes.push(`w_${table} AS (${upsert})`);
    }
  }
  // This one transaction commits without waiting for its WAL flush: the commit-LSN stamp that
  // always follows it on the same connection commits synchronously, and flushing the stamp's
  // commit record flushes this earlier one too, before any LSN leaves applyBatches. One flush wait
  // per batch instead of two; a crash in between loses an unacknowledged batch, which is applied
  // again from the stream.
  const { rows } = await db.query<{ leased: boolean }>(
    prepared(
      `WITH ${ctes.join(',\n')}
       SELECT ${leased} AS leased, set_config('synchronous_commit', 'off', true) AS flush`,
      params,
    ),
  );
  return rows[0]?.leased === true;
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

/** Inserts states as whole rows, replacing existing ones; `$param` holds them as a JSON array. */
const projectionUpsertSql = (
  table: ProjectionTable,
  columns: readonly string[],
  param: number,
  condition = 'true',
) => {
  const list = columns.map((c) => `"${c}"`).join(', ');
  const updates = columns
    .filter((c) => c !== 'id')
    .map((c) => `"${c}" = excluded."${c}"`)
    .join(', ');
  return `INSERT INTO ${table} (${list})
    SELECT ${list} FROM jsonb_populate_recordset(null::${table}, $${param}::jsonb)
     WHERE ${condition}
    ON CONFLICT (id) DO UPDATE SET ${updates}`;
};

/** Writes folded states as whole rows: insert new aggregates, replace existing ones. */
export const upsertProjection = async (
  db: Queryable,
  table: ProjectionTable,
  states: readonly AggregateState[],
) => {
  if (states.length > 0) {
    await db.query(projectionUpsertSql(table, await columnsOf(db, table), 1), [json(states)]);
  }
};

/*
 * Commit LSNs are WAL *flush* positions read after a synchronous COMMIT returned: that commit's
 * record is flushed by then, so the flush position is at or past it. The insert position would
 * be safe too, but it also covers other sessions' WAL that is not flushed yet, which the replica
 * cannot receive before the next commit or WAL-writer round (up to wal_writer_delay, 200 ms):
 * acknowledgements would wait for unrelated work.
 */

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

const STAMP_STATEMENT = 'outpost_stamp_commit_lsn';

/** Prepared once per connection: a simple query cannot carry parameters, but it can EXECUTE. */
const PREPARE_STAMP = `PREPARE ${STAMP_STATEMENT}(uuid[]) AS
  WITH batch AS MATERIALIZED (SELECT pg_current_wal_insert_lsn() AS lsn)
  UPDATE events SET commit_lsn = (SELECT lsn FROM batch)
   WHERE event_id = ANY($1) AND commit_lsn IS NULL`;

/**
 * Records the commit LSN of events whose batch has committed, in one round trip: in a transaction
 * of its own, stamp the events that lack a commit LSN with the insert position read at that point
 * (the batch's commit record is inserted by then, though with its asynchronous commit perhaps not
 * yet flushed, so the flush position could still lie before it), then read the flush position
 * once more, past the stamp's own synchronous commit and so the batch's too: the LSN
 * acknowledgement waits for, so no event is confirmed on the replica without its LSN. Statements of one simple query run in order and
 * stop at the first error. The ids are inlined as an array literal (a simple query takes no
 * parameters); they are the event_ids just written as `uuid`, and anything else is refused here.
 */
export const stampingSql = (eventIds: readonly string[]): string => {
  const flushLsn = 'SELECT pg_current_wal_flush_lsn()::text AS lsn';
  if (eventIds.length === 0) {
    return flushLsn;
  }
  for (const id of eventIds) {
    if (!UUID.test(id)) {
      throw new Error(`not a UUID, refusing to inline it: ${JSON.stringify(id)}`);
    }
  }
  return `BEGIN; EXECUTE ${STAMP_STATEMENT}('{${eventIds.join(',')}}'); COMMIT; ${flushLsn}`;
};

const stampPrepared = new WeakSet<Queryable>();

/** Runs `stampingSql` on `client`, preparing its statement on the first use of the connection. */
export const stampCommitLsns = async (
  client: pg.PoolClient,
  eventIds: readonly string[],
): Promise<string> => {
  if (eventIds.length > 0 && !stampPrepared.has(client)) {
    await client.query(PREPARE_STAMP);
    stampPrepared.add(client);
  }
  // Several statements in one simple query answer an array of results, one statement a result.
  const reply = (await client.query(stampingSql(eventIds))) as pg.QueryResult | pg.QueryResult[];
  return stampedLsnOf(Array.isArray(reply) ? reply : [reply]);
};

/** The LSN the last statement of `stampingSql` read. */
export const stampedLsnOf = (results: readonly { rows: unknown[] }[]): string => {
  const row = results.at(-1)?.rows[0] as { lsn?: string } | undefined;
  if (!row?.lsn) {
    throw new Error('the commit answered no LSN');
  }
  return row.lsn;
};
