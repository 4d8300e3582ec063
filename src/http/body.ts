import type { Context } from 'hono';
import type { z } from 'zod';
import { ApiError, type ErrorDetail } from './errors.ts';

/** Limits on free-form JSON (metadata, configurations): PostgreSQL must be able to store it all. */
export const MAX_JSON_DEPTH = 32;
export const MAX_FREE_JSON_BYTES = 64 * 1024;

const JSON_CONTENT_TYPE = /^application\/([a-z0-9.+-]*\+)?json\s*(;|$)/i;

const readBytes = async (c: Context, maxBytes: number): Promise<Uint8Array> => {
  const header = c.req.header('content-length');
  const declared = header === undefined ? Number.NaN : Number(header);
  if (Number.isFinite(declared)) {
    if (declared > maxBytes) {
      throw new ApiError('payload_too_large', `request body is over ${maxBytes} bytes`);
    }
    // With a Content-Length within the limit, Node's parser stops at that length: read it whole.
    // This skips building a web ReadableStream, the largest cost of a small write.
    return new Uint8Array(await c.req.arrayBuffer());
  }
  const body = c.req.raw.body;
  if (!body) {
    return new Uint8Array();
  }
  const chunks: Uint8Array[] = [];
  let size = 0;
  // Without Content-Length (chunked) the size is counted while streaming.
  for await (const chunk of body as unknown as AsyncIterable<Uint8Array>) {
    size += chunk.byteLength;
    if (size > maxBytes) {
      throw new ApiError('payload_too_large', `request body is over ${maxBytes} bytes`);
    }
    chunks.push(chunk);
  }
  return Buffer.concat(chunks);
};

const pathOf = (path: readonly (string | number)[]) => path.join('.');

/**
 * What PostgreSQL cannot store is refused at the door: NUL in a string or key, integers past
 * 2^53 (JSON.parse has already rounded them), nesting deeper than MAX_JSON_DEPTH.
 */
export const storableProblems = (value: unknown, path: (string | number)[] = []): ErrorDetail[] => {
  const problems: ErrorDetail[] = [];
  const visit = (node: unknown, at: (string | number)[], depth: number) => {
    if (problems.length >= 20) {
      return;
    }
    if (depth > MAX_JSON_DEPTH + 2) {
      problems.push({ path: pathOf(at), message: `nested deeper than ${MAX_JSON_DEPTH} levels` });
      return;
    }
    if (typeof node === 'string') {
      if (node.includes('\u0000')) {
        problems.push({ path: pathOf(at), message: 'contains a NUL character' });
      }
    } else if (typeof node === 'number') {
      if (Number.isInteger(node) && !Number.isSafeInteger(node)) {
        problems.push({ path: pathOf(at), message: 'integer beyond Number.MAX_SAFE_INTEGER' });
      }
    } else if (Array.isArray(node)) {
      for (const [i, item] of node.entries()) {
        visit(item, [...at, i], depth + 1);
      }
    } else if (node !== null && typeof node === 'object') {
      for (const [key, item] of Object.entries(node)) {
        if (key.includes('\u0000')) {
          problems.push({ path: pathOf(at), message: 'has a key with a NUL character' });
        }
        visit(item, [...at, key], depth + 1);
      }
    }
  };
  visit(value, path, 0);
  return problems;
};

export const depthOf = (value: unknown): number => {
  if (Array.isArray(value)) {
    return 1 + Math.max(0, ...value.map(depthOf));
  }
  if (value !== null && typeof value === 'object') {
    return 1 + Math.max(0, ...Object.values(value).map(depthOf));
  }
  return 0;
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
};

/** Reads, decodes and validates a JSON body; every refusal is a 4xx with the offending path. */
export const readJson = async <S extends z.ZodType>(
  c: Context,
  schema: S,
  maxBytes: number,
): Promise<{ value: z.output<S>; raw: unknown }> => {
  if (c.req.header('content-type') === undefined && !hasBody(c)) {
    throw new ApiError('malformed_json', 'a JSON request body is required');
  }
  requireJsonContentType(c);
  const bytes = await readBytes(c, maxBytes);
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(bytes);
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
  const problems = storableProblems(raw);
  if (problems.length > 0) {
    throw new ApiError('validation_failed', 'request body cannot be stored', problems);
  }
  const parsed = schema.safeParse(raw);
  if (!parsed.success) {
    throw new ApiError(
      'validation_failed',
      'request body is invalid',
      parsed.error.issues.map((issue) => ({
        path: pathOf(issue.path as (string | number)[]),
        message: issue.message,
      })),
    );
  }
  return { value: parsed.data, raw };
};
