import type { AggregateType } from '../../domain/events.ts';
import type { AggregateState } from '../../domain/fold.ts';
import type { Queryable } from '../client.ts';
import { PROJECTION_TABLES, stateFromRow } from './apply.ts';

/**
 * The replica's rows of some aggregates of one type, and which of the given events it already
 * holds, read in one statement so both come from the same snapshot: one round trip however many
 * aggregates a list merges.
 */
export const replicaRowsWithEvents = async (
  replica: Queryable,
  type: AggregateType,
  ids: readonly string[],
  eventIds: readonly string[],
): Promise<{ rows: Map<string, AggregateState>; visible: Set<string> }> => {
  const table = PROJECTION_TABLES[type];
  const { rows } = await replica.query<{
    rows: Record<string, unknown>[] | null;
    visible: string[];
  }>(
    `SELECT (SELECT jsonb_agg(to_jsonb(t)) FROM ${table} t WHERE id = ANY($1::uuid[])) AS rows,
            ARRAY(SELECT event_id::text FROM events WHERE event_id = ANY($2::uuid[])) AS visible`,
    [ids, eventIds],
  );
  const first = rows[0];
  const states = (first?.rows ?? []).map(stateFromRow);
  return {
    rows: new Map(states.map((state) => [state.id, state])),
    visible: new Set(first?.visible ?? []),
  };
};

export type ListFilter = { column: string; value: string };

export const listRows = async (
  replica: Queryable,
  type: AggregateType,
  filters: readonly ListFilter[],
  after: string | undefined,
  limit: number,
): Promise<AggregateState[]> => {
  const table = PROJECTION_TABLES[type];
  const params: unknown[] = [];
  const where = filters.map((f) => {
    params.push(f.value);
    return `${f.column} = $${params.length}`;
  });
  if (after) {
    params.push(after);
    where.push(`id > $${params.length}::uuid`);
  }
  params.push(limit);
  const { rows } = await replica.query<{ row: Record<string, unknown> }>(
    `SELECT to_jsonb(t) AS row FROM ${table} t
      ${where.length > 0 ? `WHERE ${where.join(' AND ')}` : ''}
      ORDER BY id LIMIT $${params.length}`,
    params,
  );
  return rows.map((r) => stateFromRow(r.row));
};

export type StoredEvent = {
  event_id: string;
  aggregate_id: string;
  aggregate_type: AggregateType;
  type: string;
  version: number;
  seq: number;
  data: unknown;
  site: string;
  partition: number;
  stream_entry_id: string;
  occurred_at: string;
  commit_lsn: string | null;
  written_by: string | null;
};

const STORED_EVENT_COLUMNS = `e.event_id::text, e.aggregate_id::text, a.type AS aggregate_type,
  e.type, e.version, e.seq, e.data, e.site, e.partition, e.stream_entry_id,
  to_char(e.occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') AS occurred_at,
  e.commit_lsn::text, e.written_by`;

export const storedEvent = async (
  db: Queryable,
  eventId: string,
): Promise<StoredEvent | undefined> => {
  const { rows } = await db.query<StoredEvent>(
    `SELECT ${STORED_EVENT_COLUMNS} FROM events e LEFT JOIN aggregates a ON a.id = e.aggregate_id
      WHERE e.event_id = $1`,
    [eventId],
  );
  return rows[0];
};

export const storedEventsOf = async (
  db: Queryable,
  aggregateId: string,
): Promise<StoredEvent[]> => {
  const { rows } = await db.query<StoredEvent>(
    `SELECT ${STORED_EVENT_COLUMNS} FROM events e LEFT JOIN aggregates a ON a.id = e.aggregate_id
      WHERE e.aggregate_id = $1 ORDER BY e.seq`,
    [aggregateId],
  );
  return rows;
};

/** Which of the given files exist on the replica, and under which executed obs unit. */
export const fileUnits = async (replica: Queryable, fileIds: readonly string[]) => {
  const { rows } = await replica.query<{ id: string; executed_obs_unit_id: string }>(
    'SELECT id::text, executed_obs_unit_id::text FROM raw_data_files WHERE id = ANY($1::uuid[])',
    [fileIds],
  );
  return new Map(rows.map((r) => [r.id, r.executed_obs_unit_id]));
};
