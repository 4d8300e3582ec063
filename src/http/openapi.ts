import { readFileSync } from 'node:fs';
import { z } from 'zod';
import { projectPath } from '../paths.ts';
import { ERROR_STATUS, type ErrorCode } from './errors.ts';
import { type JsonSchema, RESPONSE_SCHEMAS } from './openapi-responses.ts';
import {
  CreateConfigurationBody,
  CreatePackageBody,
  FileListQuery,
  FinishUnitBody,
  PatchUnitBody,
  RegisterFilesBody,
  StartUnitBody,
  UnitListQuery,
  uuid,
} from './schemas.ts';

/**
 * The OpenAPI 3.1 document of DESIGN §6. Request bodies and query parameters are generated from
 * the zod schemas that validate them, so the document cannot drift from what the API accepts; a
 * unit test checks that every route is documented and every example is accepted.
 */

export type Example = { summary: string; value: unknown };

/** A request part documented from the zod schema that validates it. */
export type ZodPart = { zod: z.ZodType; examples?: Record<string, Example> };

/**
 * A request part whose zod schema is not exported from schemas.ts (yet): documented by hand, with
 * `why` saying where the validating schema lives, so it is easy to switch over once it moves.
 */
export type InlinePart = { inline: JsonSchema; why: string; examples?: Record<string, Example> };

type Method = 'get' | 'post' | 'patch' | 'delete';

type Success = {
  status: number;
  description: string;
  /** A name in RESPONSE_SCHEMAS; absent for non-JSON answers. */
  schema?: string;
  contentType?: string;
};

export type OperationSpec = {
  method: Method;
  /** OpenAPI form: `{id}` where Hono has `:id`. A path parameter is a UUID, or as `pathId` adds. */
  path: string;
  pathId?: { description: string; orPattern: string };
  operationId: string;
  tag: Tag;
  summary: string;
  description?: string;
  query?: ZodPart | InlinePart;
  body?: (ZodPart | InlinePart) & { optional?: boolean };
  responses: Success[];
  errors?: readonly ErrorCode[];
  /** Under /admin: bearer token, and the three auth refusals, checked before anything else. */
  admin?: boolean;
  /** Honours Idempotency-Key (DESIGN §6). */
  idempotent?: boolean;
};

const TAGS = {
  units: 'Executed obs units',
  files: 'Raw data files',
  packages: 'Raw data packages',
  configurations: 'Instrument configurations',
  events: 'Events',
  operations: 'Operations',
  admin: 'Admin',
  docs: 'Documentation',
} as const;
type Tag = keyof typeof TAGS;

const BODY_ERRORS = [
  'malformed_json',
  'invalid_utf8',
  'validation_failed',
  'payload_too_large',
  'unsupported_media_type',
] as const satisfies readonly ErrorCode[];
const WRITE_ERRORS = [...BODY_ERRORS, 'idempotency_key_reused', 'log_unavailable'] as const;
// Merged reads and lists read the log as well as the replica.
const READ_ERRORS = [
  'not_found',
  'replica_unavailable',
  'log_unavailable',
] as const satisfies readonly ErrorCode[];
const LIST_ERRORS = [
  'validation_failed',
  'invalid_cursor',
  'replica_unavailable',
  'log_unavailable',
] as const satisfies readonly ErrorCode[];
// Every admin operation reads the log (pending entries, dead letters, idempotency keys).
const ADMIN_ERRORS = [
  'unauthorized',
  'forbidden',
  'admin_disabled',
  'log_unavailable',
] as const satisfies readonly ErrorCode[];

/** A message per code for the documented error examples; the Record keeps it complete. */
const ERROR_EXAMPLES: Record<ErrorCode, string> = {
  malformed_json: 'request body is not valid JSON',
  invalid_utf8: 'request body is not valid UTF-8',
  validation_failed: 'request body is invalid',
  files_span_units: 'the files of a package must belong to one executed obs unit',
  invalid_cursor: 'cursor is not one this API returned',
  unauthorized: 'admin endpoints need Authorization: Bearer <OUTPOST_ADMIN_TOKEN>',
  forbidden: 'the admin token is wrong',
  admin_disabled: 'admin endpoints are disabled: set OUTPOST_ADMIN_TOKEN to enable them',
  not_found: 'executed obs unit not found',
  method_not_allowed: 'method not allowed',
  conflict: 'conflict',
  upgrade_required: 'open this URL as a WebSocket',
  already_finished: 'executed obs unit 0195f2a4-… is already success',
  idempotency_key_reused: 'this Idempotency-Key was used with a different request body',
  payload_too_large: 'request body is over 1048576 bytes',
  unsupported_media_type: 'Content-Type must be application/json',
  internal: 'internal error',
  log_unavailable: 'the local log cannot be reached right now',
  replica_unavailable: 'the read replica cannot be reached',
  main_unavailable: 'the main database cannot be reached',
};

/** The live feed's query as clients send it (the validating schema splits comma lists). */
const LIVE_QUERY_DOC = z.object({
  aggregate_type: z
    .string()
    .optional()
    .describe('comma-separated aggregate types, e.g. executed_obs_unit,raw_data_file'),
  aggregate_id: z.uuid().optional(),
  state: z.string().optional().describe('comma-separated: accepted, applied, confirmed, dead'),
  since: z.string().optional().describe('resume after this feed id (WebSocket)'),
  access_token: z.string().optional().describe('an API token, for clients that cannot set headers'),
});

const UNIT_ID = '0195f2a4-7c1e-7b3a-9d2e-5a1c3e4f0b10';
const FILE_IDS = ['0195f2a4-8a02-7c44-8e1f-2b3c4d5e6f10', '0195f2a4-8a02-7c44-8e1f-2b3c4d5e6f20'];

const ENTRY_OR_TIME =
  '`^\\d+(-\\d+)?$` is a stream entry id; anything else must be an ISO-8601 time, read as UTC unless it names an offset';

/** Dead letters are named by their event id, or, for an entry without one, by its partition and entry id. */
const DEAD_LETTER_ID: OperationSpec['pathId'] = {
  description:
    'the event id (a UUID), or `undecodable-<partition>-<entry id>` for an entry that has none, as listed (`undecodable-<entry id>`, as earlier builds listed it, is taken while only one partition holds it: 409 otherwise); anything else is 404',
  orPattern: '^undecodable-([0-9]+-)?[0-9]+-[0-9]+$',
};

export const OPERATIONS: readonly OperationSpec[] = [
  {
    method: 'post',
    path: '/executed_obs_units/start',
    operationId: 'startExecutedObsUnit',
    tag: 'units',
    summary: 'Start an executed obs unit',
    description:
      'Appends `ExecutedObsUnitStarted` to the local log; 201 means the event is fsynced. ' +
      '`metadata` may nest at most 32 levels and take at most 64 KB.',
    body: {
      zod: StartUnitBody,
      examples: {
        minimal: {
          summary: 'Only what is required',
          value: { obs_unit_id: 'ou-1', instrument: 'nirspec' },
        },
        full: {
          summary: 'With start time, notes and metadata',
          value: {
            obs_unit_id: 'ou-2026-03-01-042',
            instrument: 'nirspec',
            start_time: '2026-03-01T04:12:00.000Z',
            notes: 'seeing 0.6 arcsec',
            metadata: { program: 'P-117', airmass: 1.12 },
          },
        },
      },
    },
    responses: [{ status: 201, description: 'accepted and durable', schema: 'UnitStarted' }],
    errors: [...WRITE_ERRORS, 'not_found', 'replica_unavailable'],
    idempotent: true,
  },
  {
    method: 'post',
    path: '/executed_obs_units/{id}/finish',
    operationId: 'finishExecutedObsUnit',
    tag: 'units',
    summary: 'Finish an executed obs unit',
    description: 'Allowed from `running` or `paused`; a second finish is 409 `already_finished`.',
    body: {
      zod: FinishUnitBody,
      examples: {
        success: {
          summary: 'Finished successfully',
          value: { status: 'success', end_time: '2026-03-01T05:40:00Z' },
        },
        interrupted: {
          summary: 'Interrupted, with a note',
          value: { status: 'interrupted', notes: 'dome closed: wind' },
        },
      },
    },
    responses: [{ status: 202, description: 'accepted and durable', schema: 'EventAccepted' }],
    errors: [...WRITE_ERRORS, 'not_found', 'already_finished', 'replica_unavailable'],
    idempotent: true,
  },
  {
    method: 'patch',
    path: '/executed_obs_units/{id}',
    operationId: 'updateExecutedObsUnit',
    tag: 'units',
    summary: 'Pause, resume or annotate a running executed obs unit',
    description: 'Give at least one of `status`, `notes`, `metadata`. 409 once finished.',
    body: {
      zod: PatchUnitBody,
      examples: {
        pause: { summary: 'Pause', value: { status: 'paused', notes: 'clouds' } },
        metadata: { summary: 'Replace metadata', value: { metadata: { airmass: 1.3 } } },
      },
    },
    responses: [{ status: 202, description: 'accepted and durable', schema: 'EventAccepted' }],
    errors: [...WRITE_ERRORS, 'not_found', 'already_finished', 'replica_unavailable'],
    idempotent: true,
  },
  {
    method: 'get',
    path: '/executed_obs_units/{id}',
    operationId: 'getExecutedObsUnit',
    tag: 'units',
    summary: 'Read an executed obs unit, pending events folded over the replica row',
    responses: [{ status: 200, description: 'the merged record', schema: 'ExecutedObsUnit' }],
    errors: READ_ERRORS,
  },
  {
    method: 'get',
    path: '/executed_obs_units',
    operationId: 'listExecutedObsUnits',
    tag: 'units',
    summary: 'List executed obs units',
    query: { zod: UnitListQuery },
    responses: [{ status: 200, description: 'one page', schema: 'ExecutedObsUnitPage' }],
    errors: LIST_ERRORS,
  },
  {
    method: 'post',
    path: '/raw_data_files',
    operationId: 'registerRawDataFiles',
    tag: 'files',
    summary: 'Register 1–1000 raw data files of an executed obs unit',
    description:
      'All files are appended in one atomic call: all or none. A checksum is hex, at most 16 ' +
      'digits for xxh64 and 64 for sha256, and is stored in lower case. An unknown unit is 404.',
    body: {
      zod: RegisterFilesBody,
      examples: {
        two: {
          summary: 'Two files',
          value: {
            executed_obs_unit_id: UNIT_ID,
            files: [
              {
                path: '/data/2026-03-01/ou-42/frame-0001.fits',
                size_bytes: 16_777_216,
                checksum: '9f86d081884c7d65',
                checksum_algorithm: 'xxh64',
              },
              {
                path: '/data/2026-03-01/ou-42/frame-0002.fits',
                size_bytes: 16_777_216,
                checksum: 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855',
                checksum_algorithm: 'sha256',
                created_at: '2026-03-01T04:20:00Z',
              },
            ],
          },
        },
      },
    },
    responses: [{ status: 201, description: 'accepted and durable', schema: 'FilesRegistered' }],
    errors: [...WRITE_ERRORS, 'not_found', 'replica_unavailable'],
    idempotent: true,
  },
  {
    method: 'get',
    path: '/raw_data_files/{id}',
    operationId: 'getRawDataFile',
    tag: 'files',
    summary: 'Read a raw data file',
    responses: [{ status: 200, description: 'the merged record', schema: 'RawDataFile' }],
    errors: READ_ERRORS,
  },
  {
    method: 'get',
    path: '/raw_data_files',
    operationId: 'listRawDataFiles',
    tag: 'files',
    summary: 'List raw data files',
    query: { zod: FileListQuery },
    responses: [{ status: 200, description: 'one page', schema: 'RawDataFilePage' }],
    errors: LIST_ERRORS,
  },
  {
    method: 'post',
    path: '/raw_data_packages',
    operationId: 'createRawDataPackage',
    tag: 'packages',
    summary: 'Create a package of raw data files',
    description:
      'The files must be known at this site (404 otherwise) and belong to one executed obs unit ' +
      '(400 `files_span_units` otherwise); `file_ids` must not repeat.',
    body: {
      zod: CreatePackageBody,
      examples: {
        package: { summary: 'A package', value: { name: 'ou-42 night 1', file_ids: FILE_IDS } },
      },
    },
    responses: [{ status: 201, description: 'accepted and durable', schema: 'EventAccepted' }],
    errors: [...WRITE_ERRORS, 'not_found', 'files_span_units', 'replica_unavailable'],
    idempotent: true,
  },
  {
    method: 'get',
    path: '/raw_data_packages/{id}',
    operationId: 'getRawDataPackage',
    tag: 'packages',
    summary: 'Read a raw data package',
    responses: [{ status: 200, description: 'the merged record', schema: 'RawDataPackage' }],
    errors: READ_ERRORS,
  },
  {
    method: 'post',
    path: '/instrument_configurations',
    operationId: 'createInstrumentConfiguration',
    tag: 'configurations',
    summary: 'Create an instrument configuration',
    description: '`configuration` may nest at most 32 levels and take at most 64 KB.',
    body: {
      zod: CreateConfigurationBody,
      examples: {
        nirspec: {
          summary: 'A spectrograph set-up',
          value: {
            instrument: 'nirspec',
            configuration: { grating: 'G395H', filter: 'F290LP', slit: 'S200A1' },
          },
        },
      },
    },
    responses: [{ status: 201, description: 'accepted and durable', schema: 'EventAccepted' }],
    errors: WRITE_ERRORS,
    idempotent: true,
  },
  {
    method: 'get',
    path: '/instrument_configurations/{id}',
    operationId: 'getInstrumentConfiguration',
    tag: 'configurations',
    summary: 'Read an instrument configuration',
    responses: [
      { status: 200, description: 'the merged record', schema: 'InstrumentConfiguration' },
    ],
    errors: READ_ERRORS,
  },
  {
    method: 'get',
    path: '/events/{event_id}',
    operationId: 'getEvent',
    tag: 'events',
    summary: 'Where an event is: pending, applied, confirmed or dead',
    responses: [{ status: 200, description: 'the event', schema: 'Event' }],
    errors: READ_ERRORS,
  },
  {
    method: 'get',
    path: '/events/live',
    operationId: 'streamLiveEvents',
    tag: 'events',
    summary: 'Live feed of state changes (Server-Sent Events)',
    description:
      'Each event when accepted, applied, confirmed and dead-lettered, from every process of the ' +
      'site: `data` is `{event_id, aggregate_id, aggregate_type, type, state, partition, ' +
      'entry_id, at}`, `id` the feed position. Send `Last-Event-ID` to resume. Comments every ' +
      '15 s keep idle connections open; a client that does not keep up gets `event: dropped` and ' +
      'is disconnected. With API tokens, scope `read` (`access_token` query parameter accepted).',
    query: { zod: LIVE_QUERY_DOC },
    responses: [{ status: 200, description: 'the event stream', contentType: 'text/event-stream' }],
    errors: ['validation_failed'],
  },
  {
    method: 'get',
    path: '/events/live/ws',
    operationId: 'openLiveEventsWebSocket',
    tag: 'events',
    summary: 'Live feed of state changes (WebSocket)',
    description:
      'The same feed as /events/live as WebSocket text messages `{id, message}`; `since` resumes ' +
      'after a feed id. Pings every 15 s; a client that does not keep up is closed with 1008 ' +
      'and the reason; a resume the server could not read is closed with 1011, to retry.',
    query: { zod: LIVE_QUERY_DOC },
    responses: [{ status: 101, description: 'switching to WebSocket', contentType: 'text/plain' }],
    errors: ['validation_failed', 'upgrade_required'],
  },
  {
    method: 'get',
    path: '/aggregates/{id}/events',
    operationId: 'listAggregateEvents',
    tag: 'events',
    summary: 'Applied and pending events of an aggregate, in order',
    responses: [{ status: 200, description: 'the events', schema: 'AggregateEvents' }],
    errors: READ_ERRORS,
  },
  {
    method: 'get',
    path: '/health',
    operationId: 'getHealth',
    tag: 'operations',
    summary: 'Health of the site and its pipeline',
    description: '503 only when writes cannot be accepted (Redis unreachable).',
    responses: [
      { status: 200, description: 'healthy or degraded', schema: 'Health' },
      { status: 503, description: 'unhealthy: writes cannot be accepted', schema: 'Health' },
    ],
  },
  {
    method: 'get',
    path: '/buffer-stats',
    operationId: 'getBufferStats',
    tag: 'operations',
    summary: 'The site buffer: pending, failed, drain rate',
    responses: [{ status: 200, description: 'buffer statistics', schema: 'BufferStats' }],
    errors: ['log_unavailable'],
  },
  {
    method: 'get',
    path: '/metrics',
    operationId: 'getMetrics',
    tag: 'operations',
    summary: 'Prometheus metrics (DESIGN §9)',
    responses: [
      {
        status: 200,
        description: 'Prometheus text exposition format',
        contentType: 'text/plain; version=0.0.4; charset=utf-8',
      },
    ],
  },
  {
    method: 'get',
    path: '/openapi.json',
    operationId: 'getOpenApiDocument',
    tag: 'docs',
    summary: 'This document',
    responses: [{ status: 200, description: 'OpenAPI 3.1', contentType: 'application/json' }],
  },
  {
    method: 'get',
    path: '/docs',
    operationId: 'getDocs',
    tag: 'docs',
    summary: 'This document as a page, with a form to try each operation',
    responses: [{ status: 200, description: 'HTML, self-contained', contentType: 'text/html' }],
  },
  {
    method: 'get',
    path: '/admin/pending',
    operationId: 'inspectPending',
    tag: 'admin',
    summary: 'What is pending and what each entry waits for',
    query: {
      why: 'validated by PendingQuery in routes/admin.ts, which schemas.ts does not export',
      inline: {
        type: 'object',
        properties: {
          partition: { type: 'integer', minimum: 0, description: 'below OUTPOST_PARTITIONS' },
          min_idle_ms: { type: 'integer', minimum: 0 },
          consumer: { type: 'string', minLength: 1, maxLength: 200 },
          limit: { type: 'integer', minimum: 1, maximum: 1000, default: 100 },
        },
      },
    },
    responses: [{ status: 200, description: 'the pending report', schema: 'PendingReport' }],
    errors: ['validation_failed'],
    admin: true,
  },
  {
    method: 'get',
    path: '/admin/dead-letters',
    operationId: 'listDeadLetters',
    tag: 'admin',
    summary: 'Dead-lettered events',
    query: {
      why: 'validated by DeadListQuery in routes/admin.ts, which schemas.ts does not export',
      inline: {
        type: 'object',
        properties: {
          limit: { type: 'integer', minimum: 1, maximum: 1000, default: 100 },
          cursor: { type: 'string', pattern: '^\\d+:\\d+-\\d+$' },
        },
      },
    },
    responses: [{ status: 200, description: 'one page', schema: 'DeadLetterPage' }],
    errors: ['validation_failed'],
    admin: true,
  },
  {
    method: 'get',
    path: '/admin/dead-letters/{id}',
    pathId: DEAD_LETTER_ID,
    operationId: 'getDeadLetter',
    tag: 'admin',
    summary: 'One dead letter, with its error and attempt history',
    responses: [{ status: 200, description: 'the dead letter', schema: 'DeadLetter' }],
    errors: ['not_found'],
    admin: true,
  },
  {
    method: 'post',
    path: '/admin/dead-letters/{id}/retry',
    pathId: DEAD_LETTER_ID,
    operationId: 'retryDeadLetter',
    tag: 'admin',
    summary: 'Put a dead-lettered event back on its partition stream',
    responses: [{ status: 200, description: 'retried', schema: 'DeadLetterRetried' }],
    errors: ['idempotency_key_reused', 'conflict', ...BODY_ERRORS, 'not_found'],
    admin: true,
    idempotent: true,
  },
  {
    method: 'delete',
    path: '/admin/dead-letters/{id}',
    pathId: DEAD_LETTER_ID,
    operationId: 'discardDeadLetter',
    tag: 'admin',
    summary: 'Discard a dead letter, keeping an audit record',
    description: 'The reason comes from `?reason=` or from the JSON body.',
    query: {
      why: 'read directly by the handler in routes/admin.ts',
      inline: {
        type: 'object',
        properties: { reason: { type: 'string', minLength: 1, maxLength: 2000 } },
      },
    },
    body: {
      optional: true,
      why: 'validated by DiscardBody in routes/admin.ts, which schemas.ts does not export',
      inline: {
        type: 'object',
        properties: { reason: { type: 'string', minLength: 1, maxLength: 2000 } },
        required: ['reason'],
        additionalProperties: false,
      },
      examples: {
        reason: { summary: 'Why', value: { reason: 'duplicate of a corrected registration' } },
      },
    },
    responses: [{ status: 200, description: 'discarded', schema: 'DeadLetterDiscarded' }],
    errors: ['idempotency_key_reused', 'conflict', ...BODY_ERRORS, 'not_found'],
    admin: true,
    idempotent: true,
  },
  {
    method: 'post',
    path: '/admin/replay',
    operationId: 'replay',
    tag: 'admin',
    summary: 'Re-apply a range of the log; what is already applied is skipped',
    body: {
      why: 'validated by ReplayBody in routes/admin.ts, which schemas.ts does not export',
      inline: {
        type: 'object',
        properties: {
          from: { type: 'string', minLength: 1, maxLength: 64, description: ENTRY_OR_TIME },
          to: { type: 'string', minLength: 1, maxLength: 64, description: ENTRY_OR_TIME },
          partition: { type: 'integer', minimum: 0, description: 'below OUTPOST_PARTITIONS' },
          dry_run: { type: 'boolean', default: false },
        },
        required: ['from'],
        additionalProperties: false,
      },
      examples: {
        dryRun: {
          summary: 'Dry run of one partition from a time',
          value: { from: '2026-03-01T00:00:00Z', partition: 3, dry_run: true },
        },
        entries: {
          summary: 'A range of entry ids',
          value: { from: '1772323200000-0', to: '1772326800000-0' },
        },
      },
    },
    description:
      'Events the main database lacks are given back to the projector with their own ' +
      '`event_id`, so its dedupe, ordering and dead-letter rules apply; the call waits for them.',
    responses: [{ status: 200, description: 'what the replay did', schema: 'ReplayResult' }],
    errors: ['idempotency_key_reused', 'conflict', ...BODY_ERRORS, 'main_unavailable'],
    admin: true,
    idempotent: true,
  },
  {
    method: 'get',
    path: '/admin/integrity',
    operationId: 'getIntegritySnapshot',
    tag: 'admin',
    summary: 'The latest integrity snapshot: counts and sample rows',
    responses: [{ status: 200, description: 'the snapshot', schema: 'IntegritySnapshot' }],
    errors: ['replica_unavailable'],
    admin: true,
  },
  {
    method: 'post',
    path: '/admin/integrity/refresh',
    operationId: 'refreshIntegrity',
    tag: 'admin',
    summary: 'Refresh the integrity views now',
    description: 'Runs `outpost_refresh_integrity()` on the main database and waits for it.',
    responses: [{ status: 200, description: 'refreshed', schema: 'IntegrityRefresh' }],
    errors: ['idempotency_key_reused', 'conflict', ...BODY_ERRORS, 'main_unavailable'],
    admin: true,
    idempotent: true,
  },
];

/** JSON Schema of a zod schema, as a client must send it (before transforms and defaults). */
export const inputSchemaOf = (schema: z.ZodType): JsonSchema => {
  const { $schema: _, ...rest } = z.toJSONSchema(schema, { io: 'input' }) as JsonSchema;
  return rest;
};

/** Hand-written parts say so in the document, for whoever wonders why they drift. */
const schemaOfPart = (part: ZodPart | InlinePart): JsonSchema =>
  'zod' in part ? inputSchemaOf(part.zod) : { ...part.inline, 'x-hand-written': part.why };

const pathParameters = (path: string, pathId: OperationSpec['pathId']) =>
  [...path.matchAll(/\{(\w+)\}/g)].map(([, name]) => ({
    name,
    in: 'path',
    required: true,
    description:
      pathId?.description ?? 'a UUID; one that is not a UUID is 404, like an unknown one',
    schema: pathId
      ? { anyOf: [inputSchemaOf(uuid), { type: 'string', pattern: pathId.orPattern }] }
      : inputSchemaOf(uuid),
  }));

const queryParameters = (query: ZodPart | InlinePart | undefined) => {
  if (!query) {
    return [];
  }
  const schema = schemaOfPart(query);
  const properties = (schema.properties ?? {}) as Record<string, JsonSchema>;
  const required = new Set((schema.required ?? []) as string[]);
  return Object.entries(properties).map(([name, property]) => ({
    name,
    in: 'query',
    required: required.has(name),
    schema: property,
  }));
};

const errorResponses = (codes: readonly ErrorCode[]) => {
  const byStatus = new Map<number, ErrorCode[]>();
  for (const code of codes) {
    const status = ERROR_STATUS[code];
    byStatus.set(status, [...(byStatus.get(status) ?? []), code]);
  }
  return Object.fromEntries(
    [...byStatus].map(([status, group]) => [
      String(status),
      {
        description: group.map((code) => `\`${code}\``).join(', '),
        ...(status === 503
          ? { headers: { 'Retry-After': { $ref: '#/components/headers/RetryAfter' } } }
          : {}),
        content: {
          'application/json': {
            schema: { $ref: '#/components/schemas/Error' },
            examples: Object.fromEntries(
              group.map((code) => [
                code,
                { value: { error: { code, message: ERROR_EXAMPLES[code] } } },
              ]),
            ),
          },
        },
      },
    ]),
  );
};

const successResponse = (success: Success, idempotent: boolean) => ({
  description: success.description,
  ...(idempotent
    ? { headers: { 'Idempotent-Replayed': { $ref: '#/components/headers/IdempotentReplayed' } } }
    : {}),
  content: {
    [success.contentType ?? 'application/json']: {
      schema: success.schema
        ? { $ref: `#/components/schemas/${success.schema}` }
        : { type: success.contentType?.startsWith('application/json') ? 'object' : 'string' },
    },
  },
});

const operationObject = (op: OperationSpec) => {
  const parameters = [
    ...pathParameters(op.path, op.pathId),
    ...queryParameters(op.query),
    ...(op.idempotent ? [{ $ref: '#/components/parameters/IdempotencyKey' }] : []),
  ];
  const errors = [...(op.admin ? ADMIN_ERRORS : []), ...(op.errors ?? [])];
  return {
    operationId: op.operationId,
    tags: [TAGS[op.tag]],
    summary: op.summary,
    ...(op.description ? { description: op.description } : {}),
    ...(op.admin ? { security: [{ bearerAuth: [] }] } : {}),
    ...(parameters.length > 0 ? { parameters } : {}),
    ...(op.body
      ? {
          requestBody: {
            required: op.body.optional !== true,
            content: {
              'application/json': {
                schema: schemaOfPart(op.body),
                ...(op.body.examples ? { examples: op.body.examples } : {}),
              },
            },
          },
        }
      : {}),
    responses: {
      ...Object.fromEntries(
        op.responses.map((r) => [String(r.status), successResponse(r, op.idempotent === true)]),
      ),
      ...errorResponses(errors),
    },
  };
};

const packageVersion = (): string =>
  (
    JSON.parse(readFileSync(projectPath('package.json'), 'utf8')) as {
      version: string;
    }
  ).version;

export const buildOpenApiDocument = () => {
  const paths: Record<string, Record<string, ReturnType<typeof operationObject>>> = {};
  for (const op of OPERATIONS) {
    paths[op.path] = { ...paths[op.path], [op.method]: operationObject(op) };
  }
  return {
    openapi: '3.1.0',
    info: {
      title: 'Outpost',
      version: packageVersion(),
      description:
        'Event-sourced outbox of an observatory site. Every write is an event appended to the ' +
        "site's Redis Stream and answered once fsynced; projectors apply it to the main " +
        'PostgreSQL exactly once; reads fold events still in flight over the replica row. ' +
        'Errors are `{"error":{"code","message","details"?}}`.',
    },
    tags: Object.values(TAGS).map((name) => ({ name })),
    paths,
    components: {
      schemas: RESPONSE_SCHEMAS,
      securitySchemes: {
        bearerAuth: {
          type: 'http',
          scheme: 'bearer',
          description:
            '`OUTPOST_ADMIN_TOKEN`. Missing: 401; wrong: 403; no token configured: 403 `admin_disabled`.',
        },
      },
      parameters: {
        IdempotencyKey: {
          name: 'Idempotency-Key',
          in: 'header',
          required: false,
          description:
            'Scoped to method and path. The same key with the same JSON within 24 h answers the ' +
            'original status and body and appends nothing; with a different body, 409.',
          schema: { type: 'string', pattern: '^[\\x21-\\x7e]{1,255}$' },
        },
      },
      headers: {
        RetryAfter: {
          description: 'seconds to wait before retrying',
          schema: { type: 'integer', minimum: 0 },
        },
        IdempotentReplayed: {
          description: '`true` when this is the stored answer to an earlier request with the key',
          schema: { type: 'string', const: 'true' },
        },
      },
    },
  };
};
