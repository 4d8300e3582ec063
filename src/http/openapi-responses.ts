/**
 * JSON Schemas (2020-12, as OpenAPI 3.1 uses) of what the API answers. Responses have no zod
 * schema to generate from, so they are written here by hand; request schemas never are (see
 * openapi.ts). Objects stay open (no additionalProperties: false) so adding a field to a response
 * does not break a client generated from this document.
 */
import { PROBLEMS } from '../integrity/problems.ts';

export type JsonSchema = { [key: string]: unknown };

const ref = (name: string): JsonSchema => ({ $ref: `#/components/schemas/${name}` });
const nullable = (schema: JsonSchema): JsonSchema => ({ anyOf: [schema, { type: 'null' }] });
const object = (properties: Record<string, JsonSchema>, optional: string[] = []): JsonSchema => ({
  type: 'object',
  properties,
  required: Object.keys(properties).filter((name) => !optional.includes(name)),
});

const id: JsonSchema = { type: 'string', format: 'uuid', description: 'UUIDv7' };
const time: JsonSchema = { type: 'string', format: 'date-time' };
const lsn: JsonSchema = {
  type: 'string',
  pattern: '^[0-9A-F]{1,8}/[0-9A-F]{1,8}$',
  description: 'PostgreSQL WAL position (pg_lsn text form)',
};
const entryId: JsonSchema = {
  type: 'string',
  pattern: '^\\d+-\\d+$',
  description: 'Redis stream entry id',
};
const seconds: JsonSchema = { type: 'number', minimum: 0 };
const count: JsonSchema = { type: 'integer', minimum: 0 };
/** Why a read replica is behind, as PostgreSQL reports it; all null without a standby. */
const replayState: Record<string, JsonSchema> = {
  receive_lsn: nullable(lsn),
  replay_paused: nullable({ type: 'boolean' }),
  wal_receiver: nullable({
    type: 'string',
    description: "pg_stat_wal_receiver.status, or 'stopped' when no WAL receiver runs",
  }),
  reason: nullable({
    type: 'string',
    description:
      "Why the replica does not replay the main database's commits, when something holds it, or why its position cannot be read",
  }),
};
const connection: JsonSchema = { type: 'string', enum: ['connected', 'disconnected'] };
const freeJson: JsonSchema = { type: 'object', additionalProperties: true };
const unitStatus: JsonSchema = {
  type: 'string',
  enum: ['running', 'paused', 'success', 'failed', 'interrupted'],
};

/** Columns every projection row has, plus how the merged read was put together. */
const aggregate = (properties: Record<string, JsonSchema>, optional: string[] = []) =>
  object(
    {
      id,
      site: { type: 'string' },
      accepted_at: time,
      updated_at: time,
      version: { type: 'integer', minimum: 1, description: 'number of events folded' },
      ...properties,
      consistency: ref('Consistency'),
    },
    optional,
  );

const page = (item: string) =>
  object({
    items: { type: 'array', items: ref(item) },
    next_cursor: nullable({
      type: 'string',
      description: 'pass as `cursor` for the next page; null on the last page',
    }),
  });

export const RESPONSE_SCHEMAS: Record<string, JsonSchema> = {
  Error: object({
    error: object(
      {
        code: { type: 'string', description: 'stable, machine-readable' },
        message: { type: 'string', description: 'for humans; may change' },
        details: {
          type: 'array',
          items: object({
            path: { type: 'string', examples: ['files.0.size_bytes'] },
            message: { type: 'string' },
          }),
        },
        requestId: { type: 'string', description: 'also in the x-request-id header' },
      },
      ['details', 'requestId'],
    ),
  }),
  Consistency: object({
    source: {
      type: 'string',
      enum: ['replica', 'replica+pending', 'pending'],
      description: 'replica row only, replica row with pending events folded over it, or pending',
    },
    pending_events: count,
  }),
  UnitStarted: object({
    id,
    event_id: id,
    status: { const: 'running' },
    accepted_at: time,
  }),
  EventAccepted: object({ id, event_id: id }),
  FilesRegistered: object({
    ids: { type: 'array', items: id, description: '`ids[i]` belongs to `files[i]`' },
    event_ids: { type: 'array', items: id },
  }),
  ExecutedObsUnit: aggregate({
    obs_unit_id: { type: 'string' },
    instrument: { type: 'string' },
    status: unitStatus,
    start_time: time,
    end_time: nullable(time),
    instrument_configuration_id: nullable(id),
    notes: nullable({ type: 'string' }),
    metadata: freeJson,
  }),
  RawDataFile: aggregate({
    executed_obs_unit_id: id,
    path: { type: 'string' },
    size_bytes: count,
    checksum: { type: 'string', pattern: '^[0-9a-f]+$' },
    checksum_algorithm: { type: 'string', enum: ['xxh64', 'sha256'] },
    created_at: time,
  }),
  RawDataPackage: aggregate({
    name: { type: 'string' },
    executed_obs_unit_id: id,
    file_ids: { type: 'array', items: id },
  }),
  InstrumentConfiguration: aggregate({
    instrument: { type: 'string' },
    configuration: freeJson,
  }),
  ExecutedObsUnitPage: page('ExecutedObsUnit'),
  RawDataFilePage: page('RawDataFile'),
  Event: object(
    {
      event_id: id,
      aggregate_id: id,
      aggregate_type: {
        type: 'string',
        enum: [
          'executed_obs_unit',
          'raw_data_file',
          'raw_data_package',
          'instrument_configuration',
        ],
      },
      type: { type: 'string', examples: ['ExecutedObsUnitStarted'] },
      version: { type: 'integer' },
      partition: count,
      entry_id: entryId,
      state: {
        type: 'string',
        enum: ['pending', 'applied', 'confirmed', 'dead'],
        description:
          'pending: in the log only; applied: committed on the main database, waiting for the ' +
          'replica; confirmed: replayed by the replica and acknowledged; dead: dead-lettered',
      },
      seq: { type: 'integer', minimum: 0, description: 'once applied' },
      commit_lsn: { ...lsn, description: 'once applied' },
      accepted_at: time,
      data: freeJson,
      error: { type: 'string', description: 'why a dead-lettered event could not apply' },
      written_by: {
        type: ['string', 'null'],
        description: 'name of the API token that wrote the event; null when the API was open',
      },
    },
    ['seq', 'commit_lsn', 'error', 'written_by'],
  ),
  AggregateEvents: object({ items: { type: 'array', items: ref('Event') } }),
  Health: object(
    {
      status: { type: 'string', enum: ['healthy', 'degraded', 'unhealthy'] },
      site: { type: 'string' },
      role: { type: 'string', enum: ['main', 'secondary'] },
      database: connection,
      database_error: nullable({
        type: 'string',
        description:
          'only while the main database is disconnected: why, in its words (with its SQLSTATE when it answered and refused, as a standby in recovery or one with too many clients does)',
      }),
      replica: connection,
      redis: connection,
      transaction_buffer: object({
        size: nullable({ ...count, description: 'null when the buffer could not be read' }),
        failed: nullable({ ...count, description: 'null when the buffer could not be read' }),
        oldest_pending_seconds: nullable({
          ...seconds,
          description: 'null when the buffer could not be read',
        }),
        full: {
          type: 'boolean',
          description:
            "Redis's memory leaves no room for writes: they are refused (503) and /health answers 503",
        },
        memory_used_bytes: nullable(count),
        memory_limit_bytes: nullable({
          ...count,
          description: "Redis's maxmemory; null without one",
        }),
        write_error: nullable({
          type: 'string',
          description:
            "Redis's own refusal of every write, in its words (MISCONF after a failed save, a full disk say; READONLY on a replica): writes are refused (503) and /health answers 503; null while it takes writes",
        }),
      }),
      background_processor: object({
        status: { type: 'string', enum: ['running', 'failing', 'stopped', 'disabled'] },
        last_run: nullable(time),
        transactions_processed: count,
        success_rate: { type: 'number', minimum: 0, maximum: 1 },
        last_error: nullable({ type: 'string' }),
      }),
      replication_lag: object({
        current_lag_seconds: seconds,
        bytes: count,
        main_lsn: nullable(lsn),
        replica_lsn: nullable(lsn),
        ...replayState,
      }),
      circuit_breaker: { type: 'string', enum: ['closed', 'open', 'half_open'] },
      integrity: object({
        mode: {
          type: 'string',
          enum: ['pg_cron', 'scheduler', 'unknown'],
          description: 'what refreshes the integrity views at this site',
        },
        refreshed_at: nullable(time),
      }),
      api_tokens: object({
        error: {
          type: 'string',
          description:
            "why the token file's last edit was refused; the tokens read before it stay in force",
        },
      }),
      partition_count: object({
        error: {
          type: 'string',
          description:
            "why this process refuses writes and reads: the site's partition count is no longer its own",
        },
      }),
      live_feed: object({
        error: {
          type: 'string',
          description:
            "why the live feed's reader fails to read; its clients hear nothing until it reads again",
        },
      }),
    },
    ['api_tokens', 'database_error', 'partition_count', 'live_feed'],
  ),
  BufferStats: object({
    pending_transactions: count,
    failed_transactions: count,
    processing_rate: { type: 'number', minimum: 0, description: 'events applied per second' },
    average_execution_time_ms: { type: 'number', minimum: 0 },
    buffer_size_mb: nullable({
      type: 'number',
      minimum: 0,
      description: "Redis's used memory; null where Redis will not say (INFO denied by an ACL)",
    }),
    oldest_pending_seconds: seconds,
  }),
  PendingReport: object({
    partitions: {
      type: 'array',
      items: object({
        partition: count,
        count,
        lowest_id: nullable(entryId),
        highest_id: nullable(entryId),
        oldest_idle_ms: count,
        consumers: { type: 'object', additionalProperties: count },
        undelivered: count,
      }),
    },
    entries: {
      type: 'array',
      items: object({
        entry_id: entryId,
        partition: count,
        consumer: { type: 'string' },
        idle_ms: count,
        deliveries: count,
        event_id: nullable(id),
        aggregate_id: nullable(id),
        type: nullable({ type: 'string' }),
        commit_lsn: nullable(lsn),
        waiting_for: { type: 'string', enum: ['projection', 'replica'] },
        attempts: {
          ...count,
          description:
            'failed attempts at applying it, counted towards OUTPOST_MAX_ATTEMPTS (a database out of reach counts none); `deliveries` counts reads, which every retry of a batch repeats',
        },
        last_error: nullable({ type: 'string', description: 'the last failed attempt’s error' }),
      }),
      description:
        'the `limit` oldest pending entries that match, whichever partitions hold them, by partition',
    },
    truncated: { type: 'boolean', description: 'more entries match than `limit` let through' },
    replica: object(
      {
        replay_lsn: nullable(lsn),
        lag_bytes: nullable(count),
        ...replayState,
        error: { type: 'string' },
        main_refusal: {
          type: 'string',
          description:
            'what the main database answered, with its SQLSTATE, when it refused to give its WAL position (lag_bytes is then null)',
        },
      },
      ['error', 'main_refusal'],
    ),
  }),
  DeadLetter: object(
    {
      id: { ...id, description: 'the event id; the path id of the dead-letter endpoints' },
      dead_letter_id: entryId,
      partition: count,
      original_entry_id: entryId,
      event_id: id,
      aggregate_id: id,
      aggregate_type: { type: 'string' },
      type: { type: 'string' },
      error: { type: 'string' },
      attempts: { type: 'array', items: object({ at: time, error: { type: 'string' } }) },
      dead_at: time,
      data: freeJson,
      follows: {
        type: 'array',
        items: id,
        description:
          "the aggregates whose dead letters it followed here, not failing itself (a file behind its unit's dead start); it is retried once they are",
      },
    },
    ['follows'],
  ),
  DeadLetterPage: page('DeadLetter'),
  DeadLetterRetried: object({
    id,
    event_id: id,
    partition: count,
    entry_id: { ...entryId, description: 'the new stream entry of the retried event' },
    retried: { const: true },
    also_retried: {
      type: 'array',
      items: object({ event_id: id, entry_id: entryId }),
      description:
        "the aggregate's other dead letters, put back with it in the order the site accepted them",
    },
  }),
  DeadLetterDiscarded: object({
    id,
    event_id: id,
    discarded: { const: true },
    reason: { type: 'string' },
    audit_id: { type: 'string', description: 'the audit record kept for the discard' },
  }),
  ReplayResult: object(
    {
      scanned: count,
      already_applied: count,
      applied: { ...count, description: 'in a dry run: what would be applied' },
      failed: count,
      dry_run: { type: 'boolean' },
      in_flight: {
        ...count,
        description: 'still pending when scanned; the projector applies them',
      },
      unfinished: { ...count, description: 'given back to the projector, not yet applied or dead' },
      discarded: { ...count, description: 'discarded from the dead letters: left out' },
      history_starts_at: nullable({
        ...entryId,
        description:
          "where the log's history begins now, when the range reaches back before it (entries before were trimmed and not looked at); null when the whole range was held",
      }),
      overtaken: {
        ...count,
        description:
          'given back though a later event of their aggregate is applied, pending or dead-lettered: they apply after it, out of order; check those aggregates',
      },
      overtaken_aggregates: {
        type: 'array',
        items: id,
        description: 'the first 20 aggregates of the overtaken events',
      },
      moved: {
        ...count,
        description:
          'given back to another partition than the stream they lay in: written under an earlier OUTPOST_PARTITIONS, their aggregate maps there now',
      },
      unscanned_partitions: {
        type: 'array',
        items: { type: 'integer', minimum: 0 },
        description:
          "partitions past the site's count (written under an earlier, higher OUTPOST_PARTITIONS) whose streams hold events of the range that the main database lacks: not given back",
      },
      warning: {
        type: 'string',
        description:
          'only when `from` lies more than five minutes in the future (a mistyped year): the range holds nothing yet, so its zeros say nothing of what is lost',
      },
    },
    [
      'warning',
      'in_flight',
      'unfinished',
      'discarded',
      'history_starts_at',
      'overtaken',
      'overtaken_aggregates',
      'moved',
      'unscanned_partitions',
    ],
  ),
  IntegrityRefresh: object({
    refreshed_at: time,
    duration_ms: { type: 'number', minimum: 0 },
    anomalies: ref('Anomalies'),
  }),
  IntegritySnapshot: object({
    refreshed_at: nullable(time),
    duration_ms: nullable({ type: 'number', minimum: 0 }),
    mode: nullable({
      type: 'string',
      description: 'what ran the refresh: pg_cron, scheduler, manual',
    }),
    anomalies: ref('Anomalies'),
    samples: {
      type: 'object',
      description: 'a few offending rows of each problem, as its materialized view has them',
      properties: Object.fromEntries(
        PROBLEMS.map((problem) => [problem, { type: 'array', items: freeJson }]),
      ),
    },
  }),
  Anomalies: {
    ...object(Object.fromEntries(PROBLEMS.map((problem) => [problem, count]))),
    description: 'rows violating each invariant of DESIGN §5 in the snapshot',
  },
};
