import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { request as httpRequest } from 'node:http';
import { after, before, describe, it } from 'node:test';
import { newIdInPartition, partitionForText, partitionOf } from '../src/domain/ids.ts';
import { depthOf, MAX_FREE_JSON_BYTES, MAX_JSON_DEPTH } from '../src/http/body.ts';
import { streamEventIds, waitForAllAcknowledged } from './harness/audit.ts';
import { Harness, type HttpResult, waitFor } from './harness/harness.ts';

const start = { obs_unit_id: 'ou-input', instrument: 'nirspec' };
/** A valid file of a registration; `extra` changes or adds fields. */
const fileRow = (path: string, extra: Record<string, unknown> = {}) => ({
  path,
  size_bytes: 1,
  checksum: 'ab'.repeat(8),
  checksum_algorithm: 'xxh64',
  ...extra,
});

void describe('HTTP input', () => {
  let h: Harness;
  let unitId: string;
  before(async () => {
    h = await Harness.start({ role: 'api' });
    unitId = (await h.post('/executed_obs_units/start', start)).body.id;
  });
  after(() => h?.close());

  /** Every refusal must leave the log exactly as it was. */
  const appendsNothing = async (
    attempt: () => Promise<Pick<HttpResult, 'status' | 'body'>>,
    status: number,
    code?: string,
  ) => {
    const before = await streamEventIds(h);
    const result = await attempt();
    assert.equal(result.status, status, JSON.stringify(result.body));
    assert.ok(result.body?.error?.code, 'an error body');
    assert.equal(typeof result.body.error.message, 'string');
    if (code) {
      assert.equal(result.body.error.code, code);
    }
    assert.deepEqual(await streamEventIds(h), before, 'nothing appended');
    return result.body.error;
  };

  void describe('x-request-id', () => {
    void it("echoes the client's request id on an accepted write, a read, a refusal and a metrics scrape", async () => {
      const requestId = `probe-${randomUUID()}`;
      const header = { 'x-request-id': requestId };
      const accepted = await h.post('/executed_obs_units/start', start, header);
      assert.equal(accepted.status, 201);
      assert.equal(accepted.headers.get('x-request-id'), requestId);
      const read = await h.get(`/executed_obs_units/${accepted.body.id}`, header);
      assert.equal(read.status, 200);
      assert.equal(read.headers.get('x-request-id'), requestId);
      const refused = await h.post('/executed_obs_units/start', { instrument: 'miri' }, header);
      assert.equal(refused.status, 400);
      assert.equal(refused.headers.get('x-request-id'), requestId);
      assert.equal(refused.body.error.requestId, requestId);
      const noRoute = await h.get('/no-such-route', header);
      assert.equal(noRoute.status, 404);
      assert.equal(noRoute.body.error.code, 'not_found');
      assert.equal(noRoute.body.error.requestId, requestId);
      // A response built as text rather than JSON: the header is set on it after the handler.
      const metrics = await h.get('/metrics', header);
      assert.equal(metrics.status, 200);
      assert.equal(metrics.headers.get('x-request-id'), requestId);
      assert.match(metrics.text, /outpost_/);
    });

    void it('makes one up when the client sends none or an unusable one', async () => {
      const fresh = await h.post('/executed_obs_units/start', start, {
        'x-request-id': 'no spaces',
      });
      assert.equal(fresh.status, 201);
      assert.match(fresh.headers.get('x-request-id') ?? '', /^[0-9a-f-]{36}$/);
    });
  });

  void describe('Idempotency-Key', () => {
    void it('replays the original response and appends nothing for the same key and body', async () => {
      const key = { 'Idempotency-Key': `key-${randomUUID()}` };
      const first = await h.post('/executed_obs_units/start', start, key);
      assert.equal(first.status, 201);
      const eventsAfterFirst = await streamEventIds(h);
      // Same JSON with another key order and spacing: compared canonically.
      const again = await h.post(
        '/executed_obs_units/start',
        `{ "instrument": "nirspec",   "obs_unit_id": "ou-input" }`,
        key,
      );
      assert.equal(again.status, 201);
      assert.deepEqual(again.body, first.body);
      assert.deepEqual(await streamEventIds(h), eventsAfterFirst);
      assert.equal(first.headers.get('idempotent-replayed'), null);
      assert.equal(again.headers.get('idempotent-replayed'), 'true');
      for (const response of [first, again]) {
        assert.match(response.headers.get('x-request-id') ?? '', /^[0-9a-f-]{36}$/);
        assert.equal(response.headers.get('content-type'), 'application/json');
      }
    });

    void it('answers a retry whose path is percent-encoded as the first attempt, appending nothing', async () => {
      const key = { 'Idempotency-Key': `encoded-${randomUUID()}` };
      const first = await h.post('/executed_obs_units/start', start, key);
      assert.equal(first.status, 201, first.text);
      const before = await streamEventIds(h);
      const again = await h.post('/executed_obs_units/st%61rt', start, key);
      assert.equal(again.status, 201, again.text);
      assert.deepEqual(again.body, first.body);
      assert.deepEqual(await streamEventIds(h), before, 'no second unit');
    });

    void it('refuses the same key with a different body with 409 idempotency_key_reused', async () => {
      const key = { 'Idempotency-Key': `key-${randomUUID()}` };
      assert.equal((await h.post('/executed_obs_units/start', start, key)).status, 201);
      await appendsNothing(
        () => h.post('/executed_obs_units/start', { ...start, instrument: 'miri' }, key),
        409,
        'idempotency_key_reused',
      );
    });

    void it('returns the original 202 for a replayed finish even though the unit is now finished', async () => {
      const unit = (await h.post('/executed_obs_units/start', start)).body.id;
      const key = { 'Idempotency-Key': `finish-${randomUUID()}` };
      const first = await h.post(`/executed_obs_units/${unit}/finish`, { status: 'success' }, key);
      assert.equal(first.status, 202);
      const replay = await h.post(`/executed_obs_units/${unit}/finish`, { status: 'success' }, key);
      assert.equal(replay.status, 202);
      assert.deepEqual(replay.body, first.body);
      // The same resource, its id spelt in upper case: the same request.
      const upper = await h.post(
        `/executed_obs_units/${unit.toUpperCase()}/finish`,
        { status: 'success' },
        key,
      );
      assert.equal(upper.status, 202, upper.text);
      assert.deepEqual(upper.body, first.body);
      // Percent-encoded unreserved characters name the same path too (RFC 3986 §6.2.2.2): the
      // router decodes them, so the key's scope must (this was a 409 for a replayed finish).
      const encoded = await h.post(
        `/executed_obs_units/${unit.replaceAll('-', '%2D')}/fin%69sh`,
        { status: 'success' },
        key,
      );
      assert.equal(encoded.status, 202, encoded.text);
      assert.deepEqual(encoded.body, first.body);
      await appendsNothing(
        () => h.post(`/executed_obs_units/${unit}/finish`, { status: 'success' }),
        409,
        'already_finished',
      );
    });

    void it('finishes a paused unit, then refuses to change it with 409 already_finished', async () => {
      const unit = (await h.post('/executed_obs_units/start', start)).body.id;
      const paused = await h.request('PATCH', `/executed_obs_units/${unit}`, { status: 'paused' });
      assert.equal(paused.status, 202, paused.text);
      const finished = await h.post(`/executed_obs_units/${unit}/finish`, {
        status: 'interrupted',
      });
      assert.equal(finished.status, 202, finished.text);
      const read = await h.get(`/executed_obs_units/${unit}`);
      assert.equal(read.body.status, 'interrupted');
      assert.equal(read.body.version, 3);
      for (const change of [{ status: 'running' }, { notes: 'too late' }]) {
        const error = await appendsNothing(
          () => h.request('PATCH', `/executed_obs_units/${unit}`, change),
          409,
          'already_finished',
        );
        assert.match(error.message, /interrupted/);
      }
    });

    void it('appends once when concurrent duplicates race', async () => {
      const key = { 'Idempotency-Key': `race-${randomUUID()}` };
      const before = (await streamEventIds(h)).size;
      const results = await Promise.all(
        Array.from({ length: 20 }, () => h.post('/executed_obs_units/start', start, key)),
      );
      assert.ok(results.every((r) => r.status === 201));
      assert.equal(new Set(results.map((r) => r.body.id)).size, 1);
      assert.equal((await streamEventIds(h)).size, before + 1);
    });

    void it('refuses a key reused for files of a unit in another partition', async () => {
      // A file goes to its unit's partition, so the two requests below meet in no stream.
      const unitIn = new Map<number, string>();
      while (unitIn.size < 2) {
        const id = (await h.post('/executed_obs_units/start', start)).body.id as string;
        unitIn.set(partitionOf(id, h.config.partitions), id);
      }
      const [first, second] = [...unitIn.values()];
      const files = (unit: string | undefined) => ({
        executed_obs_unit_id: unit,
        files: [
          {
            path: `/k/${randomUUID()}`,
            size_bytes: 1,
            checksum: 'ab'.repeat(8),
            checksum_algorithm: 'xxh64',
          },
        ],
      });
      const key = { 'Idempotency-Key': `files-${randomUUID()}` };
      const body = files(first);
      const accepted = await h.post('/raw_data_files', body, key);
      assert.equal(accepted.status, 201, accepted.text);
      await appendsNothing(
        () => h.post('/raw_data_files', files(second), key),
        409,
        'idempotency_key_reused',
      );
      const replayed = await h.post('/raw_data_files', body, key);
      assert.equal(replayed.status, 201);
      assert.deepEqual(replayed.body, accepted.body);
      assert.equal(replayed.headers.get('idempotent-replayed'), 'true');
    });

    void it('lets a key whose request was refused carry the corrected request', async () => {
      const unit = (await h.post('/executed_obs_units/start', start)).body.id as string;
      const key = { 'Idempotency-Key': `refused-${randomUUID()}` };
      const files = (executedObsUnitId: string) => ({
        executed_obs_unit_id: executedObsUnitId,
        files: [
          {
            path: `/r/${randomUUID()}`,
            size_bytes: 1,
            checksum: 'ab',
            checksum_algorithm: 'xxh64',
          },
        ],
      });
      const typo = await h.post(
        '/raw_data_files',
        files(newIdInPartition(0, h.config.partitions)),
        key,
      );
      assert.equal(typo.status, 404, typo.text);
      const corrected = await h.post('/raw_data_files', files(unit), key);
      assert.equal(corrected.status, 201, `nothing was accepted under the key: ${corrected.text}`);
      // Once a request is accepted, the key is its own.
      await appendsNothing(
        () => h.post('/raw_data_files', files(unit), key),
        409,
        'idempotency_key_reused',
      );
    });

    void it('scopes keys to the concrete path', async () => {
      const key = { 'Idempotency-Key': `scope-${randomUUID()}` };
      const a = (await h.post('/executed_obs_units/start', start)).body.id;
      const b = (await h.post('/executed_obs_units/start', start)).body.id;
      const first = await h.post(`/executed_obs_units/${a}/finish`, { status: 'failed' }, key);
      assert.equal(first.status, 202, first.text);
      // Scoped by method alone, the second would replay the first's answer and append nothing.
      const second = await h.post(`/executed_obs_units/${b}/finish`, { status: 'failed' }, key);
      assert.equal(second.status, 202, second.text);
      assert.equal(second.body.id, b);
      assert.notEqual(second.body.event_id, first.body.event_id);
      assert.equal(second.headers.get('idempotent-replayed'), null);
      const inLog = await streamEventIds(h);
      assert.ok(inLog.has(first.body.event_id) && inLog.has(second.body.event_id));
    });
  });

  void describe('bad input', () => {
    void it('answers malformed JSON with 400 malformed_json', async () => {
      await appendsNothing(
        () => h.post('/executed_obs_units/start', '{"obs_unit_id": "x",'),
        400,
        'malformed_json',
      );
    });

    void it('names each wrong, missing or unknown field in details', async () => {
      const error = await appendsNothing(
        () => h.post('/executed_obs_units/start', { obs_unit_id: 42, extra: true }),
        400,
        'validation_failed',
      );
      const paths = error.details.map((d: { path: string }) => d.path);
      assert.ok(paths.includes('obs_unit_id'), paths.join());
      assert.ok(paths.includes('instrument'), paths.join());
      assert.ok(paths.includes('extra'), `the unknown field by name: ${paths.join()}`);
      const nested = await appendsNothing(
        () =>
          h.post('/raw_data_files', {
            executed_obs_unit_id: unitId,
            files: [fileRow('/a'), fileRow('/b', { sizeBytes: 1 })],
          }),
        400,
        'validation_failed',
      );
      assert.deepEqual(nested.details, [{ path: 'files.1.sizeBytes', message: 'unknown field' }]);
    });

    void it('registers 1 to 1,000 files a request: none and 1,001 are refused, naming files', async () => {
      const unit = (await h.post('/executed_obs_units/start', start)).body.id;
      const files = (count: number) =>
        Array.from({ length: count }, (_, i) => fileRow(`/bounds/${count}/${i}`));
      for (const count of [0, 1001]) {
        const error = await appendsNothing(
          () => h.post('/raw_data_files', { executed_obs_unit_id: unit, files: files(count) }),
          400,
          'validation_failed',
        );
        assert.deepEqual(
          error.details.map((d: { path: string }) => d.path),
          ['files'],
          `${count} files`,
        );
      }
      const most = await h.post('/raw_data_files', {
        executed_obs_unit_id: unit,
        files: files(1000),
      });
      assert.equal(most.status, 201, most.text);
      assert.equal(new Set(most.body.ids).size, 1000);
      assert.equal(new Set(most.body.event_ids).size, 1000);
      const listed = await h.get(`/raw_data_files?executed_obs_unit_id=${unit}&limit=1000`);
      assert.equal(listed.status, 200, listed.text);
      assert.deepEqual(
        listed.body.items.map((f: { id: string }) => f.id).sort(),
        [...most.body.ids].sort(),
      );
    });

    void it('pages a list by 100 unless asked for up to 1,000; a larger limit is refused, naming it', async () => {
      const obs_unit_id = 'paged-by-default';
      const started = new Set<string>();
      for (let i = 0; i < 101; i += 1) {
        const unit = await h.post('/executed_obs_units/start', { obs_unit_id, instrument: 'x' });
        assert.equal(unit.status, 201, unit.text);
        started.add(unit.body.id);
      }
      const list = (query: string) =>
        h.get(`/executed_obs_units?obs_unit_id=${obs_unit_id}${query}`);
      const first = await list('');
      assert.equal(first.status, 200, first.text);
      assert.equal(first.body.items.length, 100);
      assert.equal(typeof first.body.next_cursor, 'string');
      const rest = await list(`&cursor=${encodeURIComponent(first.body.next_cursor)}`);
      assert.equal(rest.status, 200, rest.text);
      const paged = [...first.body.items, ...rest.body.items].map((u: { id: string }) => u.id);
      assert.deepEqual(new Set(paged), started);
      assert.equal(paged.length, started.size, 'no unit on both pages');
      const whole = await list('&limit=1000');
      assert.equal(whole.body.items.length, 101);
      const over = await list('&limit=1001');
      assert.equal(over.status, 400, over.text);
      assert.equal(over.body.error.code, 'validation_failed');
      assert.deepEqual(
        over.body.error.details.map((d: { path: string }) => d.path),
        ['limit'],
      );
    });

    void it('refuses a list filter it does not take or one given twice, naming it, rather than answer as if filtered', async () => {
      const unit = (
        await h.post('/executed_obs_units/start', { ...start, obs_unit_id: 'filter-refusals' })
      ).body.id;
      await h.post(`/executed_obs_units/${unit}/finish`, { status: 'failed' });
      const refusals: [string, string, string][] = [
        // A misspelt filter was ignored, and the whole list came back.
        ['/executed_obs_units?obs_unit=filter-refusals', 'obs_unit', 'unknown field'],
        [`/raw_data_files?executed_obs_unit=${unit}`, 'executed_obs_unit', 'unknown field'],
        // Of a filter given twice, the first alone was read.
        ['/executed_obs_units?status=running&status=failed', 'status', 'given more than once'],
        ['/executed_obs_units?limit=1&limit=2', 'limit', 'given more than once'],
        ['/admin/pending?partition=0&partition=1', 'partition', 'given more than once'],
      ];
      for (const [path, field, message] of refusals) {
        const answer = await h.get(path, { authorization: `Bearer ${h.config.adminToken}` });
        assert.equal(answer.status, 400, `${path}: ${answer.text}`);
        assert.equal(answer.body.error.code, 'validation_failed', path);
        assert.deepEqual(
          answer.body.error.details.map((d: { path: string; message: string }) => [
            d.path,
            d.message.startsWith(message),
          ]),
          [[field, true]],
          `${path}: ${answer.text}`,
        );
      }
      // An empty value is still one not given, beside the one given.
      const listed = await h.get(
        '/executed_obs_units?obs_unit_id=filter-refusals&status=&status=failed',
      );
      assert.equal(listed.status, 200, listed.text);
      assert.deepEqual(
        listed.body.items.map((u: { id: string }) => u.id),
        [unit],
      );
    });

    void it('refuses an unknown enum value and points at files.N.field in a bulk', async () => {
      await appendsNothing(
        () => h.post(`/executed_obs_units/${unitId}/finish`, { status: 'done' }),
        400,
        'validation_failed',
      );
      const error = await appendsNothing(
        () =>
          h.post('/raw_data_files', {
            executed_obs_unit_id: unitId,
            files: [fileRow('/a'), fileRow('/b', { size_bytes: -1, checksum_algorithm: 'md5' })],
          }),
        400,
        'validation_failed',
      );
      const paths = error.details.map((d: { path: string }) => d.path);
      assert.ok(paths.includes('files.1.size_bytes'), paths.join());
      assert.ok(paths.includes('files.1.checksum_algorithm'), paths.join());
      // A size past 2^53 − 1 is said once (it was said twice, as an int and as a number). Sent
      // as text: JSON.stringify would spell 1e19 in digits, which the door refuses before.
      const tooBig = await appendsNothing(
        () =>
          h.request(
            'POST',
            '/raw_data_files',
            JSON.stringify({ executed_obs_unit_id: unitId, files: [fileRow('/c')] }).replace(
              /"size_bytes":\d+/,
              '"size_bytes":1e19',
            ),
          ),
        400,
        'validation_failed',
      );
      assert.deepEqual(
        tooBig.details.map((d: { path: string }) => d.path),
        ['files.0.size_bytes'],
        JSON.stringify(tooBig.details),
      );
    });

    void it('takes a checksum as tools print it and refuses one no such algorithm makes', async () => {
      const file = (checksum: string, checksum_algorithm = 'xxh64') => ({
        path: `/c/${randomUUID()}`,
        size_bytes: 1,
        checksum,
        checksum_algorithm,
      });
      // An xxh64 printed as a number loses its leading zeros; upper case is stored as lower.
      const accepted = await h.post('/raw_data_files', {
        executed_obs_unit_id: unitId,
        files: [file('deadbeef'), file('E3B0C44298FC1C14', 'xxh64')],
      });
      assert.equal(accepted.status, 201, accepted.text);
      const [short, upper] = accepted.body.ids as string[];
      assert.equal((await h.get(`/raw_data_files/${short}`)).body.checksum, 'deadbeef');
      assert.equal((await h.get(`/raw_data_files/${upper}`)).body.checksum, 'e3b0c44298fc1c14');
      const error = await appendsNothing(
        () =>
          h.post('/raw_data_files', {
            executed_obs_unit_id: unitId,
            files: [
              file('ab'.repeat(32)),
              file('not-hex', 'sha256'),
              file('ab'.repeat(33), 'sha256'),
            ],
          }),
        400,
        'validation_failed',
      );
      const paths = error.details.map((d: { path: string }) => d.path);
      assert.deepEqual(paths, ['files.0.checksum', 'files.1.checksum', 'files.2.checksum']);
      assert.match(error.details[0].message, /xxh64 digest has at most 16 hex digits/);
    });

    void it('refuses what PostgreSQL could not store: NUL, huge integers, deep nesting, oversize metadata', async () => {
      const nested: Record<string, unknown> = {};
      let cursor = nested;
      for (let i = 0; i < 40; i += 1) {
        cursor.n = {};
        cursor = cursor.n as Record<string, unknown>;
      }
      const cases: [string, unknown][] = [
        ['NUL in a value', { ...start, notes: 'a\u0000b' }],
        ['NUL in a key', { ...start, metadata: { 'a\u0000': 1 } }],
        [
          'integer past 2^53',
          '{"obs_unit_id":"x","instrument":"y","metadata":{"n":9007199254740993}}',
        ],
        // JSON.parse takes an escaped half of a surrogate pair; no UTF-8 text, jsonb included, can.
        [
          'unpaired surrogate in a value',
          '{"obs_unit_id":"x","instrument":"y","notes":"a\\ud800"}',
        ],
        [
          'unpaired surrogate in a key',
          '{"obs_unit_id":"x","instrument":"y","metadata":{"\\udc00":1}}',
        ],
        ['number past a double', '{"obs_unit_id":"x","instrument":"y","metadata":{"n":1e999}}'],
        [
          'a __proto__ key validation would drop',
          '{"obs_unit_id":"x","instrument":"y","metadata":{"__proto__":{"a":1}}}',
        ],
        ['year 0', { ...start, start_time: '0000-06-01T00:00:00Z' }],
        ['year 0 once in UTC', { ...start, start_time: '0001-01-01T00:30:00+01:00' }],
        ['past year 9999 once in UTC', { ...start, start_time: '9999-12-31T23:00:00-02:00' }],
        ['nesting deeper than 32', { ...start, metadata: nested }],
        ['metadata over 64 KB', { ...start, metadata: { blob: 'x'.repeat(70 * 1024) } }],
      ];
      for (const [name, body] of cases) {
        const error = await appendsNothing(
          () => h.post('/executed_obs_units/start', body),
          400,
          'validation_failed',
        );
        assert.ok(error.details.length > 0, name);
      }
    });

    void it('refuses a query parameter PostgreSQL could not take with 400, not as the replica failing', async () => {
      const answer = await h.get('/executed_obs_units?obs_unit_id=a%00b');
      assert.equal(answer.status, 400, answer.text);
      assert.equal(answer.body.error.code, 'validation_failed');
      assert.deepEqual(
        answer.body.error.details.map((d: { path: string }) => d.path),
        ['obs_unit_id'],
      );
    });

    void it('reads an empty query parameter as one not given, as the contract writes them', async () => {
      const obsUnitId = `empty-query-${randomUUID()}`;
      const started = await h.post('/executed_obs_units/start', {
        obs_unit_id: obsUnitId,
        instrument: 'x',
      });
      assert.equal(started.status, 201, started.text);
      const listed = await h.get(
        `/executed_obs_units?obs_unit_id=${obsUnitId}&status=&limit=&cursor=`,
      );
      assert.equal(listed.status, 200, listed.text);
      assert.deepEqual(
        listed.body.items.map((unit: { id: string }) => unit.id),
        [started.body.id],
      );
      const pending = await h.request(
        'GET',
        '/admin/pending?partition=&min_idle_ms=&consumer=&limit=',
        undefined,
        { authorization: `Bearer ${h.config.adminToken}` },
      );
      assert.equal(pending.status, 200, pending.text);
      assert.deepEqual(
        pending.body.partitions.map((p: { partition: number }) => p.partition),
        Array.from({ length: h.config.partitions }, (_, p) => p),
        'partition= is every partition, not partition 0',
      );
    });

    void it('refuses a count in a query string not written in digits, naming the parameter', async () => {
      const admin = { authorization: `Bearer ${h.config.adminToken}` };
      for (const [path, parameter] of [
        ['/executed_obs_units?limit=1e2', 'limit'],
        ['/executed_obs_units?limit=0x10', 'limit'],
        ['/executed_obs_units?limit=0', 'limit'],
        ['/admin/pending?partition=%20', 'partition'],
        ['/admin/pending?partition=0x1', 'partition'],
        ['/admin/pending?min_idle_ms=1e3', 'min_idle_ms'],
        // Digits, but past what a number holds exactly (and what Redis takes as an idle time).
        ['/admin/pending?min_idle_ms=99999999999999999999', 'min_idle_ms'],
        ['/admin/dead-letters?limit=-1', 'limit'],
      ] as const) {
        const answer = await h.request('GET', path, undefined, admin);
        assert.equal(answer.status, 400, `${path}: ${answer.text}`);
        assert.equal(answer.body.error.code, 'validation_failed', path);
        assert.deepEqual(
          answer.body.error.details.map((d: { path: string }) => d.path),
          [parameter],
          path,
        );
      }
      const listed = await h.request('GET', '/admin/pending?partition=1&limit=5', undefined, admin);
      assert.equal(listed.status, 200, listed.text);
      assert.deepEqual(
        listed.body.partitions.map((p: { partition: number }) => p.partition),
        [1],
      );
    });

    void it('refuses invalid UTF-8 with 400', async () => {
      const bytes = Buffer.concat([
        Buffer.from('{"obs_unit_id":"'),
        Buffer.from([0xc3, 0x28]),
        Buffer.from('","instrument":"x"}'),
      ]);
      await appendsNothing(
        () =>
          rawPost(h, '/executed_obs_units/start', bytes, { 'content-type': 'application/json' }),
        400,
        'invalid_utf8',
      );
    });

    void it('refuses a body over the limit with 413, with and without Content-Length', async () => {
      const big = JSON.stringify({ ...start, notes: 'x'.repeat(1024 * 1024 + 10) });
      await appendsNothing(
        () => h.post('/executed_obs_units/start', big),
        413,
        'payload_too_large',
      );
      await appendsNothing(
        () =>
          rawPost(
            h,
            '/executed_obs_units/start',
            Buffer.from(big),
            { 'content-type': 'application/json' },
            true,
          ),
        413,
        'payload_too_large',
      );
    });

    void it('refuses a missing or non-JSON content type on a body with 415, and no body with 400', async () => {
      await appendsNothing(
        () =>
          h.post('/executed_obs_units/start', JSON.stringify(start), {
            'content-type': 'text/plain',
          }),
        415,
        'unsupported_media_type',
      );
      await appendsNothing(
        () => rawPost(h, '/executed_obs_units/start', Buffer.from(JSON.stringify(start)), {}),
        415,
        'unsupported_media_type',
      );
      // No body is no body of another type: a 400 saying one is required, whatever the headers.
      for (const headers of [{}, { 'content-type': 'text/plain' }] as Record<string, string>[]) {
        await appendsNothing(
          () => rawPost(h, '/executed_obs_units/start', Buffer.alloc(0), headers),
          400,
          'malformed_json',
        );
      }
    });

    void it('refuses a charset other than UTF-8 and patch documents with 415, rather than read them as something else', async () => {
      // "Ã©" in Latin-1 is the two bytes of "é" in UTF-8: read as UTF-8 it would be stored as é.
      const latin1 = Buffer.concat([
        Buffer.from('{"obs_unit_id":"caf'),
        Buffer.from([0xc3, 0xa9]),
        Buffer.from('","instrument":"nirspec"}'),
      ]);
      const refused = await appendsNothing(
        () =>
          rawPost(h, '/executed_obs_units/start', latin1, {
            'content-type': 'application/json; charset=ISO-8859-1',
          }),
        415,
        'unsupported_media_type',
      );
      assert.match(refused.message, /UTF-8.*ISO-8859-1/);
      // The same bytes declared as UTF-8 (any spelling, quoted or not) are é, as sent.
      for (const contentType of [
        'application/json; charset=UTF-8',
        'application/json;charset="utf8"',
      ]) {
        const accepted = await rawPost(h, '/executed_obs_units/start', latin1, {
          'content-type': contentType,
        });
        assert.equal(accepted.status, 201, `${contentType}: ${JSON.stringify(accepted.body)}`);
        const read = await h.get(`/executed_obs_units/${accepted.body.id}`);
        assert.equal(read.body.obs_unit_id, 'café');
      }
      // A merge patch removes the metadata keys it sets to null; read as JSON, it would replace the
      // metadata with {a: null} and lose b.
      const unit = await h.post('/executed_obs_units/start', {
        ...start,
        metadata: { a: 1, b: 2 },
      });
      assert.equal(unit.status, 201);
      for (const contentType of ['application/merge-patch+json', 'application/json-patch+json']) {
        const patch = await appendsNothing(
          () =>
            h.request(
              'PATCH',
              `/executed_obs_units/${unit.body.id}`,
              { metadata: { a: null } },
              {
                'content-type': contentType,
              },
            ),
          415,
          'unsupported_media_type',
        );
        assert.match(patch.message, /application\/json, not/);
      }
    });

    void it('checks a body sent to an admin action that does not read it: 415 for text, 413 over the limit', async () => {
      const admin = { authorization: `Bearer ${h.config.adminToken}` };
      // Counted by mode: the service's own schedule may refresh meanwhile, never as 'manual'.
      const manualRefreshes = async () =>
        (
          await h.mainRows<{ n: number }>(
            "SELECT count(*)::int AS n FROM integrity_refreshes WHERE mode = 'manual'",
          )
        )[0]?.n;
      const before = await manualRefreshes();
      const unknownDead = '/admin/dead-letters/01900000-0000-7000-8000-000000000000';
      for (const [method, path] of [
        ['POST', '/admin/integrity/refresh'],
        ['POST', `${unknownDead}/retry`],
        ['DELETE', `${unknownDead}?reason=the%20reason%20is%20here`],
      ] as const) {
        const text = await h.request(method, path, 'refresh please', {
          ...admin,
          'content-type': 'text/plain',
        });
        assert.equal(text.status, 415, `${path}: ${text.text}`);
        assert.equal(text.body.error.code, 'unsupported_media_type');
        const huge = await h.request(
          method,
          path,
          { pad: 'x'.repeat(h.config.maxBodyBytes) },
          admin,
        );
        assert.equal(huge.status, 413, `${path}: ${huge.text}`);
        assert.equal(huge.body.error.code, 'payload_too_large');
      }
      assert.equal(await manualRefreshes(), before, 'no refused request refreshed the views');
    });

    void it('answers 404 for unknown ids, ids that are not UUIDs and a 10 KB path', async () => {
      const unknown = '01900000-0000-7000-8000-000000000000';
      await appendsNothing(
        () => h.post(`/executed_obs_units/${unknown}/finish`, { status: 'success' }),
        404,
        'not_found',
      );
      await appendsNothing(
        () => h.post('/executed_obs_units/not-a-uuid/finish', { status: 'success' }),
        404,
        'not_found',
      );
      await appendsNothing(
        () => h.get(`/executed_obs_units/${'x'.repeat(10 * 1024)}`),
        404,
        'not_found',
      );
      await appendsNothing(() => h.get(`/raw_data_files/${unknown}`), 404, 'not_found');
      await appendsNothing(
        () =>
          h.post('/raw_data_files', {
            executed_obs_unit_id: unknown,
            files: [fileRow('/a')],
          }),
        404,
        'not_found',
      );
      await appendsNothing(
        () => h.post('/raw_data_packages', { name: 'p', file_ids: [unknown] }),
        404,
        'not_found',
      );
    });

    void it('stores unicode and SQL-looking strings verbatim', async () => {
      const tricky = {
        obs_unit_id: "'; DROP TABLE events; --",
        instrument: 'Ångström 望遠鏡 🔭',
        notes: 'Robert"); DELETE FROM aggregates; --',
        metadata: { 'clé ✓': ['∑', { "x'": '\\' }] },
      };
      const created = await h.post('/executed_obs_units/start', tricky);
      assert.equal(created.status, 201);
      const read = await h.get(`/executed_obs_units/${created.body.id}`);
      assert.equal(read.body.obs_unit_id, tricky.obs_unit_id);
      assert.equal(read.body.instrument, tricky.instrument);
      assert.deepEqual(read.body.metadata, tricky.metadata);
    });

    void it('counts lengths in characters, not UTF-16 units: 128 telescopes fit, 129 do not', async () => {
      const fits = { obs_unit_id: '🔭'.repeat(128), instrument: 'x' };
      const created = await h.post('/executed_obs_units/start', fits);
      assert.equal(created.status, 201, JSON.stringify(created.body));
      const read = await h.get(`/executed_obs_units/${created.body.id}`);
      assert.equal(read.body.obs_unit_id, fits.obs_unit_id);
      const error = await appendsNothing(
        () => h.post('/executed_obs_units/start', { ...fits, obs_unit_id: '🔭'.repeat(129) }),
        400,
        'validation_failed',
      );
      assert.deepEqual(
        error.details.map((d: { path: string }) => d.path),
        ['obs_unit_id'],
      );
    });

    void it('counts notes in characters too: 10,000 telescopes fit, 10,001 do not', async () => {
      const created = await h.post('/executed_obs_units/start', {
        ...start,
        notes: '🔭'.repeat(10_000),
      });
      assert.equal(created.status, 201, JSON.stringify(created.body));
      const finish = (notes: string) =>
        h.post(`/executed_obs_units/${created.body.id}/finish`, { status: 'success', notes });
      const error = await appendsNothing(
        () => finish('🔭'.repeat(10_001)),
        400,
        'validation_failed',
      );
      assert.deepEqual(
        error.details.map((d: { path: string }) => d.path),
        ['notes'],
      );
      assert.equal((await finish('')).status, 202, 'empty notes stay allowed');
    });

    void it('stores doubles past 2^53 as written, where an integer written past it is refused', async () => {
      // Written as the text a client sends: JSON.stringify would spell 3.0857e16 as digits.
      const body = (extra: string) =>
        `{"obs_unit_id":"ou-doubles","instrument":"x","metadata":{"parsec_m":3.0857e16,"avogadro":6.02214076E23,"huge":-1.5e300${extra}}}`;
      const created = await h.request('POST', '/executed_obs_units/start', body(''));
      assert.equal(created.status, 201, created.text);
      const read = await h.get(`/executed_obs_units/${created.body.id}`);
      assert.deepEqual(read.body.metadata, {
        parsec_m: 3.0857e16,
        avogadro: 6.02214076e23,
        huge: -1.5e300,
      });
      const error = await appendsNothing(
        () =>
          h.request(
            'POST',
            '/executed_obs_units/start',
            body(',"counts":[1, 9007199254740992],"big":1e400'),
          ),
        400,
        'validation_failed',
      );
      // 2^53 itself is exact in a double, but past MAX_SAFE_INTEGER, as the contract words it.
      assert.deepEqual(error.details, [
        { path: 'metadata.counts.1', message: 'integer beyond Number.MAX_SAFE_INTEGER' },
        { path: 'metadata.big', message: 'number beyond the range of a double' },
      ]);
    });

    void it('refuses a package whose files belong to several units with 400 files_span_units', async () => {
      const file = {
        path: '/x',
        size_bytes: 1,
        checksum: 'cd'.repeat(8),
        checksum_algorithm: 'xxh64',
      };
      const units = await Promise.all([0, 1].map(() => h.post('/executed_obs_units/start', start)));
      const files = await Promise.all(
        units.map((u) =>
          h.post('/raw_data_files', { executed_obs_unit_id: u.body.id, files: [file] }),
        ),
      );
      const fileIds = files.map((f) => f.body.ids[0]);
      await appendsNothing(
        () => h.post('/raw_data_packages', { name: 'mixed', file_ids: fileIds }),
        400,
        'files_span_units',
      );
      const ok = await h.post('/raw_data_packages', { name: 'one', file_ids: [fileIds[0]] });
      assert.equal(ok.status, 201);
      const read = await h.get(`/raw_data_packages/${ok.body.id}`);
      assert.equal(read.body.executed_obs_unit_id, units[0]?.body.id);
    });

    void it('never answers 500 to a wrong method or an unknown route', async () => {
      for (const [method, path] of [
        ['DELETE', '/executed_obs_units/start'],
        ['PUT', `/executed_obs_units/${unitId}`],
        ['GET', '/nope'],
      ] as const) {
        const result = await h.request(method, path);
        assert.ok(
          result.status >= 400 && result.status < 500,
          `${method} ${path}: ${result.status}`,
        );
      }
    });
  });
});

/** A POST with exact bytes and headers, optionally chunked (no Content-Length). */
const rawPost = (
  h: Harness,
  path: string,
  body: Buffer,
  headers: Record<string, string>,
  chunked = false,
): Promise<Pick<HttpResult, 'status' | 'body'>> =>
  new Promise((resolve, reject) => {
    const url = new URL(path, h.url);
    const req = httpRequest(
      {
        method: 'POST',
        host: url.hostname,
        port: url.port,
        path: url.pathname,
        headers: chunked ? headers : { ...headers, 'content-length': body.length },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () =>
          resolve({
            status: res.statusCode ?? 0,
            body: JSON.parse(Buffer.concat(chunks).toString() || 'null'),
          }),
        );
      },
    );
    req.on('error', reject);
    if (chunked) {
      for (let i = 0; i < body.length; i += 64 * 1024) {
        req.write(body.subarray(i, i + 64 * 1024));
      }
    } else {
      req.write(body);
    }
    req.end();
  });

void describe('free JSON at its exact limits', () => {
  let h: Harness;
  before(async () => {
    h = await Harness.start();
  });
  after(() => h?.close());

  /** An object nested `levels` deep (an object holding an object is 2), with a value at the bottom. */
  const nestedTo = (levels: number): Record<string, unknown> => {
    let value: Record<string, unknown> = { seeing: 0.6 };
    for (let level = 1; level < levels; level += 1) {
      value = { n: value };
    }
    return value;
  };
  /** An object whose JSON takes exactly `bytes` bytes of UTF-8, made of `char` (1 or 2 bytes). */
  const sizedTo = (bytes: number, char: 'x' | 'é'): Record<string, unknown> => {
    const overhead = Buffer.byteLength(JSON.stringify({ blob: '', pad: '' }));
    const perChar = Buffer.byteLength(char);
    const blob = char.repeat(Math.floor((bytes - overhead) / perChar));
    const value = { blob, pad: '' };
    value.pad = 'x'.repeat(bytes - Buffer.byteLength(JSON.stringify(value)));
    assert.equal(Buffer.byteLength(JSON.stringify(value)), bytes);
    return value;
  };

  const refusedAt = async (path: string, body: unknown, field: string) => {
    const answer = await h.post(path, body);
    assert.equal(answer.status, 400, answer.text);
    assert.equal(answer.body.error.code, 'validation_failed');
    assert.deepEqual(
      answer.body.error.details.map((d: { path: string }) => d.path),
      [field],
    );
  };

  /** Accepted, projected and read back from the replica exactly as sent. */
  const storedAsSent = async (path: string, body: Record<string, unknown>, field: string) => {
    const answer = await h.post(path, body);
    assert.equal(answer.status, 201, answer.text);
    const readPath = `${path.replace('/start', '')}/${answer.body.id}`;
    let read: HttpResult | undefined;
    await waitFor(async () => {
      read = await h.get(readPath);
      return read.body?.consistency?.source === 'replica';
    }, `${readPath} to be served by the replica`);
    assert.deepEqual(read?.body[field], body[field]);
  };

  void it('stores metadata nested exactly 32 levels deep and refuses 33', async () => {
    assert.equal(depthOf(nestedTo(MAX_JSON_DEPTH)), 32);
    await storedAsSent(
      '/executed_obs_units/start',
      { ...start, metadata: nestedTo(MAX_JSON_DEPTH) },
      'metadata',
    );
    await refusedAt(
      '/executed_obs_units/start',
      { ...start, metadata: nestedTo(MAX_JSON_DEPTH + 1) },
      'metadata',
    );
  });

  void it('stores metadata and a configuration of exactly 64 KB of UTF-8 and refuses one byte more', async () => {
    await storedAsSent(
      '/executed_obs_units/start',
      { ...start, metadata: sizedTo(MAX_FREE_JSON_BYTES, 'x') },
      'metadata',
    );
    await storedAsSent(
      '/instrument_configurations',
      { instrument: 'nirspec', configuration: sizedTo(MAX_FREE_JSON_BYTES, 'é') },
      'configuration',
    );
    await refusedAt(
      '/executed_obs_units/start',
      { ...start, metadata: sizedTo(MAX_FREE_JSON_BYTES + 1, 'x') },
      'metadata',
    );
    // Counted in bytes, not characters: fewer than 64 Ki characters, but more bytes.
    const accented = sizedTo(MAX_FREE_JSON_BYTES + 1, 'é');
    assert.ok(JSON.stringify(accented).length < MAX_FREE_JSON_BYTES);
    await refusedAt(
      '/instrument_configurations',
      { instrument: 'nirspec', configuration: accented },
      'configuration',
    );
  });
});

void describe('Idempotency-Key across a change of the partition count', () => {
  let h: Harness;
  before(async () => {
    h = await Harness.start({ role: 'none' });
  });
  after(() => h?.close());

  void it('answers a retry after the change with its first answer, appending nothing', async () => {
    const first = await h.startService('all');
    const path = '/executed_obs_units/start';
    // A key whose partition moves with the change: where a retry looks is not where it wrote.
    let n = 0;
    while (partitionForText(`POST ${path} resize-${n}`, 8) < 4) {
      n += 1;
    }
    const keyed = (key: string) => ({ 'idempotency-key': key });
    const body = { obs_unit_id: 'across-resize', instrument: 'x' };
    const started = await h.request('POST', path, body, keyed(`resize-${n}`));
    assert.equal(started.status, 201, started.text);
    const finishPath = `/executed_obs_units/${started.body.id}/finish`;
    const finished = await h.request('POST', finishPath, { status: 'success' }, keyed('resize-f'));
    assert.equal(finished.status, 202, finished.text);
    await waitForAllAcknowledged(h);
    await h.stopService(first);
    // Nothing pending and no process left with the old count: the change is taken.
    const resized = await h.startService('all', { partitions: 8 });
    const entries = async () => {
      let total = 0;
      for (const keys of resized.eventLog.allKeys()) {
        total += await h.redis.xlen(keys.stream);
      }
      return total;
    };
    const held = await entries();
    const again = await h.request('POST', path, body, keyed(`resize-${n}`));
    assert.equal(again.status, 201, again.text);
    assert.deepEqual(again.body, started.body);
    assert.equal(again.headers.get('idempotent-replayed'), 'true');
    const finishedAgain = await h.request(
      'POST',
      finishPath,
      { status: 'success' },
      keyed('resize-f'),
    );
    assert.equal(finishedAgain.status, 202, finishedAgain.text);
    assert.deepEqual(finishedAgain.body, finished.body);
    assert.equal(await entries(), held, 'nothing appended');
    // Another body under a carried key is still refused.
    const other = await h.request('POST', path, { ...body, notes: 'other' }, keyed(`resize-${n}`));
    assert.equal(other.status, 409, other.text);
    assert.equal(other.body.error.code, 'idempotency_key_reused');
  });
});

void describe("a unit's status across a change of the partition count and back", () => {
  let h: Harness;
  before(async () => {
    h = await Harness.start({ role: 'none' });
  });
  after(() => h?.close());

  void it('refuses a second finish after the unit was finished under the other count', async () => {
    const original = h.config.partitions;
    let service = await h.startService('all');
    // A unit whose partition moves with the change: its status is kept beside its stream.
    let unit: { id: string } | undefined;
    for (let n = 0; unit === undefined; n += 1) {
      const started = await h.post('/executed_obs_units/start', {
        obs_unit_id: `round-trip-${n}`,
        instrument: 'x',
      });
      assert.equal(started.status, 201, started.text);
      if (partitionOf(started.body.id, 8) !== partitionOf(started.body.id, original)) {
        unit = started.body as { id: string };
      }
    }
    const finishPath = `/executed_obs_units/${unit.id}/finish`;
    const resize = async (partitions: number) => {
      await h.stopService(service);
      service = await h.startService('all', { partitions });
    };

    await waitForAllAcknowledged(h);
    await resize(8);
    const finished = await h.post(finishPath, { status: 'success' });
    assert.equal(finished.status, 202, finished.text);
    // Acknowledged, as a change needs: the harness's own look covers only its count's streams.
    await waitFor(
      async () => (await h.get(`/events/${finished.body.event_id}`)).body?.state === 'confirmed',
      'the finish to be confirmed',
    );
    await resize(original);
    const again = await h.post(finishPath, { status: 'failed' });
    assert.equal(again.status, 409, again.text);
    assert.equal(again.body.error.code, 'already_finished');
    const read = await h.get(`/executed_obs_units/${unit.id}`);
    assert.equal(read.body.status, 'success');
  });
});
