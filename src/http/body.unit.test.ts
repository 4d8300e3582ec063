import assert from 'node:assert/strict';
import { connect } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { serve } from '@hono/node-server';
import { Hono } from 'hono';
import { z } from 'zod';
import { depthOf, readJson, storableProblems } from './body.ts';
import { ApiError } from './errors.ts';

void describe('storableProblems', () => {
  void it('accepts ordinary JSON, unicode included', () => {
    assert.deepEqual(
      storableProblems({ a: [1, 2.5, 'Ångström 🔭', null, true], b: { c: -9007199254740991 } }),
      [],
    );
  });

  void it('names the path of NUL characters in values and keys', () => {
    assert.deepEqual(storableProblems({ a: ['ok', 'x\u0000'] }), [
      { path: 'a.1', message: 'contains a NUL character' },
    ]);
    assert.equal(storableProblems({ m: { 'k\u0000': 1 } })[0]?.path, 'm');
  });

  void it('names the path of unpaired surrogates, which JSON.parse accepts and jsonb refuses', () => {
    const parsed = JSON.parse(
      '{"high": "a\\ud800", "low": "\\udc00b", "reversed": "\\udc00\\ud800", "pair": "\\ud83d\\udd2d", "m": {"\\ud800": 1}}',
    );
    assert.equal(parsed.pair, '🔭');
    assert.deepEqual(storableProblems(parsed), [
      { path: 'high', message: 'contains an unpaired UTF-16 surrogate (not valid Unicode)' },
      { path: 'low', message: 'contains an unpaired UTF-16 surrogate (not valid Unicode)' },
      { path: 'reversed', message: 'contains an unpaired UTF-16 surrogate (not valid Unicode)' },
      { path: 'm', message: 'has a key with an unpaired UTF-16 surrogate (not valid Unicode)' },
    ]);
  });

  void it('flags integers JSON.parse has rounded', () => {
    const parsed = JSON.parse('{"n": 9007199254740993, "f": 1.5e300}');
    assert.deepEqual(
      storableProblems(parsed).map((p) => p.path),
      ['n', 'f'],
    );
  });

  void it('flags a __proto__ key, which copying by assignment would drop', () => {
    const parsed = JSON.parse('{"m": {"__proto__": {"x": 1}, "ok": 1}}');
    assert.deepEqual(storableProblems(parsed), [
      { path: 'm', message: 'has a key named __proto__, which would be lost' },
    ]);
  });

  void it('flags numbers JSON.parse made infinite, which would be stored as null', () => {
    const parsed = JSON.parse('{"m": {"up": 1e999, "down": -1e999, "fine": 1.5e-300}}');
    assert.deepEqual(storableProblems(parsed), [
      { path: 'm.up', message: 'number beyond the range of a double' },
      { path: 'm.down', message: 'number beyond the range of a double' },
    ]);
  });

  void it('measures nesting depth', () => {
    assert.equal(depthOf({}), 1);
    assert.equal(depthOf({ a: { b: [1] } }), 3);
    assert.equal(depthOf('x'), 0);
  });
});

void describe('readJson over HTTP', () => {
  /** Each request's outcome, as the handler saw it: the client may be gone before any answer. */
  const outcomes: ((outcome: unknown) => void)[] = [];
  const nextOutcome = () => new Promise<unknown>((resolve) => outcomes.push(resolve));
  const app = new Hono().post('/', async (c) => {
    const report = outcomes.shift();
    try {
      const { value } = await readJson(c, z.object({ note: z.string() }), 1024);
      report?.(value);
      return c.json(value, 201);
    } catch (err) {
      report?.(err);
      throw err;
    }
  });
  let server: ReturnType<typeof serve>;
  let port: number;
  before(async () => {
    await new Promise<void>((resolve) => {
      server = serve({ fetch: app.fetch, port: 0 }, (info) => {
        port = info.port;
        resolve();
      });
    });
  });
  after(() => server.close());

  /** Sends `head` and each of `parts` in its own write, a turn apart; ends with `finish`. */
  const send = async (head: string, parts: (string | Buffer)[], finish: 'wait' | 'hang up') => {
    const socket = connect(port, '127.0.0.1');
    await new Promise((resolve) => socket.once('connect', resolve));
    socket.write(head);
    for (const part of parts) {
      await new Promise((resolve) => setImmediate(resolve));
      socket.write(part);
    }
    if (finish === 'hang up') {
      await new Promise((resolve) => setImmediate(resolve));
      socket.destroy();
      return '';
    }
    let response = '';
    socket.on('data', (chunk: Buffer) => {
      response += chunk.toString();
    });
    await new Promise((resolve) => socket.once('end', resolve).once('close', resolve));
    return response;
  };
  const head = (length: number) =>
    `POST / HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: ${length}\r\n\r\n`;

  void it('reads a body that arrives in several packets, a multi-byte character split between them', async () => {
    const body = Buffer.from('{"note":"Ångström"}');
    const split = body.indexOf(0xc5) + 1;
    const outcome = nextOutcome();
    const response = await send(
      head(body.length),
      [body.subarray(0, split), body.subarray(split)],
      'wait',
    );
    assert.deepEqual(await outcome, { note: 'Ångström' });
    assert.match(response, /^HTTP\/1\.1 201/);
  });

  // The timeout turns a request left waiting forever (a leak per hang-up) into a failure.
  void it('refuses as malformed JSON a body whose client hangs up before its Content-Length', {
    timeout: 5_000,
  }, async () => {
    const outcome = nextOutcome();
    await send(head(100), ['{"note":'], 'hang up');
    const err = await outcome;
    assert.ok(err instanceof ApiError, String(err));
    assert.equal(err.code, 'malformed_json');
    assert.match(err.message, /ended before its Content-Length/);
  });
});
