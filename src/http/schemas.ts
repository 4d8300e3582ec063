import { z } from 'zod';
import type { JsonObject } from '../domain/events.ts';
import { UUID_PATTERN } from '../domain/ids.ts';
import { depthOf, MAX_FREE_JSON_BYTES, MAX_JSON_DEPTH } from './body.ts';

/** Request schemas: the single source for validation and for the OpenAPI document. */

/**
 * Lengths are counted in characters (code points), as the contract and JSON Schema's `maxLength`
 * count them; a JavaScript string's length counts UTF-16 units, two for 🔭.
 */
const text = (max: number) =>
  z
    .string()
    .min(1)
    // A string no longer in UTF-16 units than `max` has no more characters: the usual case is free.
    .refine(
      (value) => value.length <= max || characterCount(value) <= max,
      `must be at most ${max} characters`,
    )
    .meta({ maxLength: max });

const characterCount = (value: string) => {
  let count = 0;
  for (const _ of value) {
    count += 1;
  }
  return count;
};

/**
 * The instants a four-digit year in UTC can spell. An offset can carry a valid time past either
 * end (`0001-01-01T00:00:00+01:00` is year 0 in UTC), and PostgreSQL refuses year 0 and years
 * past 9999 written as the log stores them.
 */
const EARLIEST_MS = Date.parse('0001-01-01T00:00:00.000Z');
const LATEST_MS = Date.parse('9999-12-31T23:59:59.999Z');

/** Timestamps are normalised to UTC with millisecond precision, the precision of the whole log. */
const timestamp = z.iso
  .datetime({ offset: true })
  .transform((value) => new Date(value).toISOString())
  .refine((value) => !Number.isNaN(Date.parse(value)), 'not a valid time')
  .refine((value) => {
    const ms = Date.parse(value);
    return ms >= EARLIEST_MS && ms <= LATEST_MS;
  }, 'outside years 0001-9999 in UTC');

export const uuid = z
  .string()
  .regex(UUID_PATTERN, 'must be a UUID')
  .transform((value) => value.toLowerCase());

const freeJson = (what: string) =>
  z
    .record(z.string(), z.unknown())
    .refine(
      (value) => depthOf(value) <= MAX_JSON_DEPTH,
      `${what} is nested deeper than ${MAX_JSON_DEPTH} levels`,
    )
    .refine(
      (value) => Buffer.byteLength(JSON.stringify(value)) <= MAX_FREE_JSON_BYTES,
      `${what} is larger than ${MAX_FREE_JSON_BYTES / 1024} KB`,
    )
    .transform((value) => value as JsonObject);

export const StartUnitBody = z.strictObject({
  obs_unit_id: text(128),
  instrument: text(200),
  start_time: timestamp.optional(),
  instrument_configuration_id: uuid.nullish(),
  notes: z.string().max(10_000).nullish(),
  metadata: freeJson('metadata').optional(),
});

export const FinishUnitBody = z.strictObject({
  status: z.enum(['success', 'failed', 'interrupted']),
  end_time: timestamp.optional(),
  notes: z.string().max(10_000).nullish(),
});

export const PatchUnitBody = z
  .strictObject({
    status: z.enum(['running', 'paused']).optional(),
    notes: z.string().max(10_000).nullish(),
    metadata: freeJson('metadata').optional(),
  })
  .refine((body) => Object.keys(body).length > 0, 'give at least one of status, notes, metadata')
  .meta({ minProperties: 1 });

/*
 * The most hex digits a digest of each algorithm has. Fewer are accepted: xxh64 is a 64-bit number
 * that many tools print without its leading zeros (`h64().toString(16)`), and the contract names
 * no format beyond the algorithm. More digits than the algorithm makes, or anything but hex, is a
 * digest of something else and refused at the door.
 */
const DIGEST_HEX_DIGITS = { xxh64: 16, sha256: 64 } as const;

export const RawDataFileInput = z
  .strictObject({
    path: text(4096),
    // int() stops at Number.MAX_SAFE_INTEGER by itself: a max() of it said the same twice.
    size_bytes: z.number().int().min(0),
    checksum: z.string().regex(/^[0-9a-fA-F]+$/, 'must be a hex digest'),
    checksum_algorithm: z.enum(['xxh64', 'sha256']),
    created_at: timestamp.optional(),
  })
  .superRefine((file, ctx) => {
    const digits = DIGEST_HEX_DIGITS[file.checksum_algorithm];
    if (file.checksum.length > digits) {
      ctx.addIssue({
        code: 'custom',
        path: ['checksum'],
        message: `a ${file.checksum_algorithm} digest has at most ${digits} hex digits`,
      });
    }
  })
  .transform((file) => ({ ...file, checksum: file.checksum.toLowerCase() }))
  // The per-algorithm limit above, for the OpenAPI document, which cannot read a refinement.
  .meta({
    anyOf: Object.entries(DIGEST_HEX_DIGITS).map(([algorithm, digits]) => ({
      properties: { checksum_algorithm: { const: algorithm }, checksum: { maxLength: digits } },
    })),
  });

export const RegisterFilesBody = z.strictObject({
  executed_obs_unit_id: uuid,
  files: z.array(RawDataFileInput).min(1).max(1000),
});

export const CreatePackageBody = z.strictObject({
  name: text(500),
  file_ids: z
    .array(uuid)
    .min(1)
    .max(1000)
    .refine((ids) => new Set(ids).size === ids.length, 'file_ids must not repeat')
    .meta({ uniqueItems: true }),
});

export const CreateConfigurationBody = z.strictObject({
  instrument: text(200),
  configuration: freeJson('configuration'),
});

/**
 * A whole number in a query string, in digits: coercion read `?partition=%20` as partition 0 and
 * took `0x1` or `1e2` for numbers.
 */
export const queryWholeNumber = z
  .string()
  .regex(/^\d+$/, 'must be a whole number written in digits')
  .transform(Number)
  // Past it, a number loses digits (and Redis refuses it): a 400, not a 500 from below.
  .refine(Number.isSafeInteger, 'must be at most 9007199254740991')
  // The document says what a client writes: a query string's whole number.
  .meta({ type: 'integer', minimum: 0 });

/** A page size: 1 to 1000, 100 when not given. */
export const pageLimit = queryWholeNumber
  .pipe(z.number().min(1).max(1000))
  .default(100)
  .meta({ type: 'integer', minimum: 1, maximum: 1000, description: '100 when not given' });

// Strict, as the admin lists: a misspelt filter (`?obs_unit=…`) ignored would answer with the whole
// list as if filtered.
export const ListQuery = z.strictObject({
  limit: pageLimit,
  // A page's next_cursor is the id it ended at. The route refuses any other string as
  // invalid_cursor (not validation_failed), so the pattern is only the document's.
  cursor: z.string().max(200).optional().meta({ pattern: UUID_PATTERN.source }),
});

export const UnitListQuery = ListQuery.extend({
  obs_unit_id: text(128).optional(),
  status: z.enum(['running', 'paused', 'success', 'failed', 'interrupted']).optional(),
});

export const FileListQuery = ListQuery.extend({ executed_obs_unit_id: uuid.optional() });
