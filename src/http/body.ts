import type { IncomingMessage } from 'node:http';
import type { HttpBindings } from '@hono/node-server';
import type { Context } from 'hono';
import { z } from 'zod';
import { ApiError, type ErrorDetail } from './errors.ts';

/** Limits on free-form JSON (metadata, configurations): PostgreSQL must be able to store it all. */
export const MAX_JSON_DEPTH = 32;
export const MAX_FREE_JSON_BYTES = 64 * 1024;

/** Reused: making a decoder costs more than decoding a small body, and decode() keeps no state. */
const UTF8 = new TextDecoder('utf-8', { fatal: true });

const JSON_CONTENT_TYPE = /^application\/([a-z0-9.+-]*\+)?json\s*(;|$)/i;
/** Patch formats whose meaning a body read as plain JSON would silently change (RFC 7396, 6902). */
const PATCH_DOCUMENT_TYPE = /^application\/(merge-patch|json-patch)\+json\s*(;|$)/i;
const CHARSET_PARAMETER = /;\s*charset\s*=\s*(?:"([^"]*)"|([^;\s]*))/i;
/** The charsets whose bytes read as UTF-8 read as what the client meant (ASCII is a subset). */
const UTF8_CHARSETS = new Set(['utf-8', 'utf8', 'us-ascii']);

const bodyCutShort = (before = 'its Content-Length') =>
  new ApiError('malformed_json', `request body ended before ${before}`);

/**
 * The whole body of a request nothing has read from yet, straight off Node's request: the bytes
 * @hono/node-server's `arrayBuffer()` gives, without its copy into a fresh ArrayBuffer, which
 * measured 8 % of a small write's throughput. A client that hangs up before its Content-Length is
 * in, before or during the read, gets a 400, not an internal error.
 */
const readIncoming = (incoming: IncomingMessage): Promise<Buffer> =>
  // Its callbacks are unnamed: run through tsx (in-process tests, the no-bundle fallback), its
  // keep-names transform renames a named one on every call.
  new Promise((resolve, reject) => {
    // What already happened will not be emitted again: a request torn down before the read, or
    // an empty body already at its end.
    if (incoming.destroyed && !incoming.readableEnded) {
      reject(bodyCutShort());
      return;
    }
    if (incoming.readableEnded) {
      resolve(Buffer.alloc(0));
      return;
    }
    const chunks: Buffer[] = [];
    incoming.on('data', (chunk: Buffer) => chunks.push(chunk));
    incoming.once('end', () =>
      resolve(chunks.length === 1 ? (chunks[0] as Buffer) : Buffer.concat(chunks)),
    );
    incoming.once('error', () => reject(bodyCutShort()));
    incoming.once('close', () => {
      if (!incoming.complete) {
        reject(bodyCutShort());
      }
    });
  });

const readBytes = async (c: Context, maxBytes: number): Promise<Uint8Array> => {
  const header = c.req.header('content-length');
  const declared = header === undefined ? Number.NaN : Number(header);
  if (Number.isFinite(declared)) {
    if (declared > maxBytes) {
      throw new ApiError('payload_too_large', `request body is over ${maxBytes} bytes`);
    }
    // With a Content-Length within the limit, Node's parser stops at that length: read it whole.
    // This skips building a web ReadableStream, the largest cost of a small write. Served by
    // @hono/node-server, the request is read off Node's own; in-process (app.request), the web one.
    const incoming = (c.env as Partial<HttpBindings> | undefined)?.incoming;
    return incoming && !incoming.readableDidRead
      ? readIncoming(incoming)
      : new Uint8Array(await c.req.arrayBuffer());
  }
  const body = c.req.raw.body;
  if (!body) {
    return new Uint8Array();
  }
  const chunks: Uint8Array[] = [];
  let size = 0;
  // Without Content-Length (chunked) the size is counted while streaming.
  try {
    for await (const chunk of body as unknown as AsyncIterable<Uint8Array>) {
      size += chunk.byteLength;
      if (size > maxBytes) {
        throw new ApiError('payload_too_large', `request body is over ${maxBytes} bytes`);
      }
      chunks.push(chunk);
    }
  } catch (err) {
    // The stream fails only when the client hangs up mid-body: its 400 reaches no one, but an
    // internal error would be logged as a fault of the service's own.
    throw err instanceof ApiError ? err : bodyCutShort('its last chunk');
  }
  return Buffer.concat(chunks);
};

const pathOf = (path: readonly PropertyKey[]) => path.map(String).join('.');

/**
 * Zod's issues as problem details. Zod files unknown keys under the object holding them (path
 * `""` for a top-level one): each is named at its own path instead, so the caller sees which
 * field was not expected.
 */
export const issueDetails = (error: z.ZodError): ErrorDetail[] =>
  error.issues.flatMap((issue) =>
    issue.code === 'unrecognized_keys'
      ? issue.keys.map((key) => ({ path: pathOf([...issue.path, key]), message: 'unknown field' }))
      : [{ path: pathOf(issue.path), message: issue.message }],
  );

/**
 * Half of a UTF-16 surrogate pair without its other half. JSON.parse accepts one written as an
 * escape (`"\ud800"`), but no UTF-8 text can hold it: PostgreSQL refuses it in jsonb, so the event
 * would fail in the projector on every attempt.
 */
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

const textProblem = (text: string): string | undefined => {
  if (text.includes('\u0000')) {
    return 'a NUL character';
  }
  return LONE_SURROGATE.test(text) ? 'an unpaired UTF-16 surrogate (not valid Unicode)' : undefined;
};

/**
 * A walk of one body: the path to the node being visited, what was found so far, and the JSON
 * text it was parsed from with, once needed, the integers past 2^53 that text writes as such.
 */
type StorableWalk = {
  at: (string | number)[];
  problems: ErrorDetail[];
  source: string | undefined;
  unsafeIntegers?: Set<number>;
};

/** Strings (keys included) are matched whole, so digits inside them are never taken for numbers. */
const JSON_TOKEN = /"(?:[^"\\]|\\.)*"|-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?/g;

/**
 * The integer literals of a JSON text past Number.MAX_SAFE_INTEGER, as the numbers JSON.parse
 * made of them, and those written with a zero fraction that JSON.parse rounded
 * (18014398509481985.0 reads as …984). Matched by value: a double written elsewhere in the body
 * with the same value as such a literal is refused with it.
 */
const unsafeIntegerLiterals = (source: string): Set<number> => {
  const unsafe = new Set<number>();
  for (const [token] of source.matchAll(JSON_TOKEN)) {
    const wrote = /^(-?\d+)(\.0+)?$/.exec(token);
    const value = Number(token);
    if (!wrote || Number.isSafeInteger(value)) {
      continue;
    }
    // A zero fraction is how Python writes its floats up to 1e16 (9500000000000000.0): refused
    // only where the double lost digits, as an integer literal past 2^53 always is.
    if (!wrote[2] || (Number.isFinite(value) && BigInt(wrote[1] as string) !== BigInt(value))) {
      unsafe.add(value);
    }
  }
  return unsafe;
};

/**
 * An integer written past Number.MAX_SAFE_INTEGER may have lost its last digits to JSON.parse
 * (9007199254740993 reads as …992), and the contract refuses them all. A number written as a
 * double (3.0857e16, 6.02214076e23) is not an integer literal: it is stored as the double it
 * names, as any other. Without the text, every integer-valued number past it is refused.
 */
const isUnsafeIntegerLiteral = (walk: StorableWalk, node: number): boolean => {
  if (Number.isSafeInteger(node) || !Number.isInteger(node)) {
    return false;
  }
  if (walk.source === undefined) {
    return true;
  }
  walk.unsafeIntegers ??= unsafeIntegerLiterals(walk.source);
  return walk.unsafeIntegers.has(node);
};

const report = (walk: StorableWalk, message: string) =>
  walk.problems.push({ path: pathOf(walk.at), message });

const visitStorable = (walk: StorableWalk, node: unknown, depth: number) => {
  if (walk.problems.length >= 20) {
    return;
  }
  if (depth > MAX_JSON_DEPTH + 2) {
    report(walk, `nested deeper than ${MAX_JSON_DEPTH} levels`);
    return;
  }
  if (typeof node === 'string') {
    const problem = textProblem(node);
    if (problem) {
      report(walk, `contains ${problem}`);
    }
  } else if (typeof node === 'number') {
    if (!Number.isFinite(node)) {
      // JSON.parse reads 1e999 as Infinity, which JSON.stringify would write back as null.
      report(walk, 'number beyond the range of a double');
    } else if (isUnsafeIntegerLiteral(walk, node)) {
      report(walk, 'integer beyond Number.MAX_SAFE_INTEGER');
    }
  } else if (Array.isArray(node)) {
    for (let i = 0; i < node.length; i++) {
      walk.at.push(i);
      visitStorable(walk, node[i], depth + 1);
      walk.at.pop();
    }
  } else if (node !== null && typeof node === 'object') {
    for (const key in node) {
      const problem = textProblem(key);
      if (problem) {
        report(walk, `has a key with ${problem}`);
      }
      if (key === '__proto__') {
        // JSON.parse keeps it as a key, but validation copies objects by assignment, and
        // assigning __proto__ sets a prototype: the key and its value would vanish unsaid.
        report(walk, 'has a key named __proto__, which would be lost');
      }
      walk.at.push(key);
      visitStorable(walk, (node as Record<string, unknown>)[key], depth + 1);
      walk.at.pop();
    }
  }
};

/**
 * What PostgreSQL cannot store is refused at the door: NUL or an unpaired surrogate in a string or
 * key, numbers past a double's range and integer literals past 2^53 (JSON.parse has already
 * rounded them; `source` is the text `value` was parsed from), nesting deeper than MAX_JSON_DEPTH.
 *
 * Every write's body is walked, so the walk creates no functions: one path, pushed and popped,
 * spelled out only for the rare node with a problem; and no closures, each of which tsx's
 * keep-names transform (when the sources run through tsx, not bundled) would rename per call.
 */
export const storableProblems = (value: unknown, source?: string): ErrorDetail[] => {
  const walk: StorableWalk = { at: [], problems: [], source };
  visitStorable(walk, value, 0);
  return walk.problems;
};

export const depthOf = (value: unknown): number => {
  if (value === null || typeof value !== 'object') {
    return 0;
  }
  let deepest = 0;
  for (const item of Array.isArray(value) ? value : Object.values(value)) {
    const depth = depthOf(item);
    if (depth > deepest) {
      deepest = depth;
    }
  }
  return 1 + deepest;
};

/** Whether the request carries a body at all (Node gives even an empty request a stream). */
export const hasBody = (c: Context): boolean => {
  const length = c.req.header('content-length');
  return (
    (length !== undefined && length !== '0') || c.req.header('transfer-encoding') !== undefined
  );
};

export const requireJsonContentType = (c: Context) => {
  const type = c.req.header('content-type') ?? '';
  if (!JSON_CONTENT_TYPE.test(type)) {
    throw new ApiError(
      'unsupported_media_type',
      `Content-Type must be application/json${type ? `, not ${type}` : ''}`,
    );
  }
  if (PATCH_DOCUMENT_TYPE.test(type)) {
    throw new ApiError(
      'unsupported_media_type',
      `Content-Type must be application/json, not ${type}: a body's fields replace the record's (metadata as a whole), which is not what a patch document of that type means`,
    );
  }
  const charset = CHARSET_PARAMETER.exec(type);
  const declared = charset?.[1] ?? charset?.[2];
  // Read as UTF-8 anyway, a body in another charset could be stored as other text than was sent.
  if (declared !== undefined && !UTF8_CHARSETS.has(declared.toLowerCase())) {
    throw new ApiError(
      'unsupported_media_type',
      `Content-Type must be application/json in UTF-8 (RFC 8259), not charset=${declared}`,
    );
  }
};

/** Reads, decodes and validates a JSON body; every refusal is a 4xx with the offending path. */
export const readJson = async <S extends z.ZodType>(
  c: Context,
  schema: S,
  maxBytes: number,
): Promise<{ value: z.output<S>; raw: unknown }> => {
  // 415 is for a body of another type; no body at all, whatever its headers say, is a bad request.
  if (!hasBody(c)) {
    throw new ApiError('malformed_json', 'a JSON request body is required');
  }
  requireJsonContentType(c);
  const bytes = await readBytes(c, maxBytes);
  let text: string;
  try {
    text = UTF8.decode(bytes);
  } catch {
    throw new ApiError('invalid_utf8', 'request body is not valid UTF-8');
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw new ApiError(
      'malformed_json',
      `request body is not valid JSON: ${(err as Error).message}`,
    );
  }
  const problems = storableProblems(raw, text);
  if (problems.length > 0) {
    throw new ApiError('validation_failed', 'request body cannot be stored', problems);
  }
  const parsed = schema.safeParse(raw);
  if (!parsed.success) {
    throw new ApiError('validation_failed', 'request body is invalid', issueDetails(parsed.error));
  }
  return { value: parsed.data, raw };
};

/**
 * For a route that reads no body: one sent anyway must still be what any request's body must be
 * (JSON, within the limit), so a text/plain or oversized body gets its 415 or 413 here too. The
 * JSON sent, or null for none: an Idempotency-Key compares it, so the same key with another body
 * is refused as with any route.
 */
export const readUnusedBody = async (c: Context, maxBytes: number): Promise<unknown> =>
  hasBody(c) ? (await readJson(c, z.unknown(), maxBytes)).raw : null;
