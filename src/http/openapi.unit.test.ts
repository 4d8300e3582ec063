import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import { Redis } from 'ioredis';
import pg from 'pg';
import { loadConfig } from '../config.ts';
import { DeadLetters } from '../log/dead-letters.ts';
import { EventLog } from '../log/event-log.ts';
import { createLogger } from '../observability/logger.ts';
import { createMetrics } from '../observability/metrics.ts';
import { StatusSource } from '../ops/status.ts';
import { createApp } from './app.ts';
import { buildOpenApiDocument, type Example, OPERATIONS, type OperationSpec } from './openapi.ts';
import type { JsonSchema } from './openapi-responses.ts';
import { ReplicaLink } from './replica-link.ts';
import { CreatePackageBody, PatchUnitBody, RegisterFilesBody } from './schemas.ts';

/**
 * Real dependencies that never touch the network: the Redis client connects lazily, pools connect
 * on first query, and registering routes queries nothing. Only the app's route table is read.
 */
const idleDeps = () => {
  const config = loadConfig({ OUTPOST_ADMIN_TOKEN: 'unit-test-token' });
  // A closed port, not the defaults (the machine's own servers on 6379 and 5432): should a
  // route ever query while registering, this test fails instead of reaching them.
  const redis = new Redis({ port: 1, lazyConnect: true, enableOfflineQueue: false });
  const eventLog = new EventLog(redis, config.namespace, config.partitions);
  const main = new pg.Pool({ port: 1 });
  const replica = new pg.Pool({ port: 1 });
  const metrics = createMetrics();
  return {
    deps: {
      config,
      eventLog,
      deadLetters: new DeadLetters(eventLog),
      main,
      replica,
      replicaLink: new ReplicaLink(replica, createLogger('silent')),
      metrics,
      logger: createLogger('silent'),
      status: new StatusSource({ config, eventLog, main, replica, metrics }),
    },
    close: async () => {
      redis.disconnect();
      await Promise.all([main.end(), replica.end()]);
    },
  };
};

const key = (method: string, path: string) => `${method.toUpperCase()} ${path}`;
const toOpenApiPath = (honoPath: string) => honoPath.replace(/:(\w+)/g, '{$1}');

/**
 * Enough of JSON Schema to check the hand-written inline examples: types, required and unknown
 * properties, lengths, bounds and patterns. Zod-generated parts are checked with zod itself.
 */
const schemaProblems = (schema: JsonSchema, value: unknown, at = '$'): string[] => {
  const type = schema.type as string | undefined;
  if (type === 'object') {
    if (value === null || typeof value !== 'object' || Array.isArray(value)) {
      return [`${at} is not an object`];
    }
    const properties = (schema.properties ?? {}) as Record<string, JsonSchema>;
    const record = value as Record<string, unknown>;
    return [
      ...((schema.required ?? []) as string[])
        .filter((name) => !(name in record))
        .map((name) => `${at}.${name} is required`),
      ...Object.entries(record).flatMap(([name, item]) => {
        const property = properties[name];
        if (property) {
          return schemaProblems(property, item, `${at}.${name}`);
        }
        return schema.additionalProperties === false ? [`${at}.${name} is not allowed`] : [];
      }),
    ];
  }
  const problems: string[] = [];
  if (type === 'string') {
    if (typeof value !== 'string') {
      return [`${at} is not a string`];
    }
    if (typeof schema.minLength === 'number' && value.length < schema.minLength) {
      problems.push(`${at} is too short`);
    }
    if (typeof schema.maxLength === 'number' && value.length > schema.maxLength) {
      problems.push(`${at} is too long`);
    }
    if (typeof schema.pattern === 'string' && !new RegExp(schema.pattern).test(value)) {
      problems.push(`${at} does not match ${schema.pattern}`);
    }
  } else if (type === 'integer' || type === 'number') {
    if (typeof value !== 'number' || (type === 'integer' && !Number.isInteger(value))) {
      return [`${at} is not an ${type}`];
    }
    if (typeof schema.minimum === 'number' && value < schema.minimum) {
      problems.push(`${at} is below ${schema.minimum}`);
    }
    if (typeof schema.maximum === 'number' && value > schema.maximum) {
      problems.push(`${at} is above ${schema.maximum}`);
    }
  } else if (type === 'boolean' && typeof value !== 'boolean') {
    problems.push(`${at} is not a boolean`);
  }
  return problems;
};

/** Every object in a JSON document, the document included. */
const schemaNodes = (node: unknown): Record<string, unknown>[] => {
  if (Array.isArray(node)) {
    return node.flatMap(schemaNodes);
  }
  if (node === null || typeof node !== 'object') {
    return [];
  }
  const record = node as Record<string, unknown>;
  return [record, ...Object.values(record).flatMap(schemaNodes)];
};

/** The object at `path` inside `node`; fails the test where there is none. */
const nodeAt = (node: unknown, ...path: string[]): Record<string, unknown> => {
  const found = path.reduce<unknown>(
    (at, part) => (at as Record<string, unknown> | undefined)?.[part],
    node,
  );
  assert.ok(found !== null && typeof found === 'object', `nothing at ${path.join('.')}`);
  return found as Record<string, unknown>;
};

const examplesOf = (op: OperationSpec): [string, Example][] =>
  Object.entries(op.body?.examples ?? {});

void describe('OpenAPI document', () => {
  const doc = buildOpenApiDocument();
  const documented = new Set(
    Object.entries(doc.paths).flatMap(([path, item]) =>
      Object.keys(item).map((method) => key(method, path)),
    ),
  );
  const { deps, close } = idleDeps();
  after(close);
  const app = createApp(deps);
  const routes = new Set(
    app.routes.filter((r) => r.method !== 'ALL').map((r) => key(r.method, toOpenApiPath(r.path))),
  );

  void it('declares OpenAPI 3.1', () => {
    assert.match(doc.openapi, /^3\.1\.\d+$/);
  });

  void it('documents every route the app registers', () => {
    const undocumented = [...routes].filter((route) => !documented.has(route));
    assert.deepEqual(undocumented, [], 'routes missing from src/http/openapi.ts');
  });

  void it('documents only operations the app registers', () => {
    const phantom = [...documented].filter((op) => !routes.has(op));
    assert.deepEqual(phantom, [], 'documented operations without a route');
  });

  void it('protects exactly the /admin operations with the bearer token', () => {
    for (const [path, item] of Object.entries(doc.paths)) {
      for (const [method, op] of Object.entries(item)) {
        const secured = (op as { security?: unknown[] }).security !== undefined;
        assert.equal(secured, path.startsWith('/admin'), `${key(method, path)} security`);
      }
    }
  });

  void it('gives every POST and PATCH with a body at least one request example', () => {
    const bodies = OPERATIONS.filter((op) => op.body && op.method !== 'delete');
    assert.ok(bodies.length >= 7);
    for (const op of bodies) {
      assert.ok(examplesOf(op).length > 0, `${key(op.method, op.path)} has no example`);
    }
  });

  void it('has request examples the validating zod schemas accept', () => {
    let checked = 0;
    for (const op of OPERATIONS) {
      if (!op.body || !('zod' in op.body)) {
        continue;
      }
      for (const [name, example] of examplesOf(op)) {
        const parsed = op.body.zod.safeParse(example.value);
        assert.ok(
          parsed.success,
          `${key(op.method, op.path)} example ${name}: ${parsed.error?.message ?? ''}`,
        );
        checked += 1;
      }
    }
    assert.ok(checked >= 7);
  });

  void it('has inline request examples that match their hand-written schema', () => {
    for (const op of OPERATIONS) {
      if (op.body && 'inline' in op.body) {
        for (const [name, example] of examplesOf(op)) {
          const problems = schemaProblems(op.body.inline, example.value);
          assert.deepEqual(problems, [], `${key(op.method, op.path)} example ${name}`);
        }
      }
    }
  });

  void it('serves in the document the examples that were validated', () => {
    for (const op of OPERATIONS) {
      if (op.body?.examples) {
        const operation = doc.paths[op.path]?.[op.method] as
          | { requestBody?: { content: Record<string, { examples?: unknown }> } }
          | undefined;
        const served = operation?.requestBody?.content['application/json']?.examples;
        assert.deepEqual(served, op.body.examples);
      }
    }
  });

  void it('resolves every $ref', () => {
    const refs = schemaNodes(doc).flatMap((node) =>
      typeof node.$ref === 'string' ? [node.$ref] : [],
    );
    assert.ok(refs.length > 0);
    for (const ref of refs) {
      nodeAt(doc, ...ref.slice(2).split('/'));
    }
  });

  void it('writes patterns that take an id in either case, as the routes do', () => {
    // A pattern reaches the document without the regex's flags: one written /i took upper case
    // in the routes and called it invalid in the document.
    const id = '0190c5b2-7a3e-7d1f-9b2a-4c5d6e7f8a9b';
    const idPatterns = schemaNodes(doc)
      .map((node) => node.pattern)
      .filter((pattern): pattern is string => typeof pattern === 'string')
      .filter((pattern) => new RegExp(pattern).test(id));
    assert.ok(idPatterns.length >= 3, 'the document has id patterns');
    for (const pattern of idPatterns) {
      assert.match(id.toUpperCase(), new RegExp(pattern));
    }
  });

  void it('documents the limits the routes check by refinement', () => {
    const bodyOf = (path: string, method: string) =>
      nodeAt(doc.paths, path, method, 'requestBody', 'content', 'application/json', 'schema');
    const id = '0190c5b2-7a3e-7d1f-9b2a-4c5d6e7f8a9b';

    assert.equal(PatchUnitBody.safeParse({}).success, false);
    assert.equal(bodyOf('/executed_obs_units/{id}', 'patch').minProperties, 1);

    assert.equal(CreatePackageBody.safeParse({ name: 'p', file_ids: [id, id] }).success, false);
    assert.equal(
      nodeAt(bodyOf('/raw_data_packages', 'post'), 'properties', 'file_ids').uniqueItems,
      true,
    );

    const fileSchema = nodeAt(bodyOf('/raw_data_files', 'post'), 'properties', 'files', 'items')
      .anyOf as { properties: { checksum_algorithm: { const: string }; checksum: JsonSchema } }[];
    assert.equal(fileSchema.length, 2);
    for (const { properties } of fileSchema) {
      const files = (digits: number) => ({
        executed_obs_unit_id: id,
        files: [
          {
            path: '/raw/a.fits',
            size_bytes: 1,
            checksum: 'a'.repeat(digits),
            checksum_algorithm: properties.checksum_algorithm.const,
          },
        ],
      });
      const most = properties.checksum.maxLength as number;
      assert.equal(RegisterFilesBody.safeParse(files(most)).success, true);
      assert.equal(RegisterFilesBody.safeParse(files(most + 1)).success, false);
    }
  });

  void it('serves the document at /openapi.json', async () => {
    const response = await app.request('/openapi.json');
    assert.equal(response.status, 200);
    assert.deepEqual(await response.json(), JSON.parse(JSON.stringify(doc)));
  });

  void it('serves /docs as one page that loads nothing from elsewhere', async () => {
    const response = await app.request('/docs');
    assert.equal(response.status, 200);
    assert.match(response.headers.get('content-type') ?? '', /^text\/html/);
    const csp = response.headers.get('content-security-policy') ?? '';
    assert.match(csp, /default-src 'none'/);
    assert.match(csp, /connect-src 'self'/);
    const html = await response.text();
    assert.doesNotMatch(html, /<(script|link|img|iframe)[^>]+(src|href)=/i);
    assert.ok(html.includes('"openapi":"3.1.0"'));
  });
});
