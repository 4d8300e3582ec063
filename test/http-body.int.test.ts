import assert from 'node:assert/strict';
import { connect } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { type HttpBindings, serve } from '@hono/node-server';
import { type Context, Hono } from 'hono';
import { z } from 'zod';
import { readJson } from '../src/http/body.ts';
import { ApiError } from '../src/http/errors.ts';

void describe('readJson over HTTP', () => {
  /** Each request's outcome, as the handler saw it: the client may be gone before any answer. */
  const outcomes: ((outcome: unknown) => void)[] = [];
  const nextOutcome = () => new Promise<unknown>((resolve) => outcomes.push(resolve));
  const answer = async (c: Context) => {
    const report = outcomes.shift();
    try {
      const { value } = await readJson(c, z.object({ note: z.string() }), 1024);
      report?.(value);
      return c.json(value, 201);
    } catch (err) {
      report?.(err);
      throw err;
    }
  };
  const app = new Hono<{ Bindings: HttpBindings }>()
    .post('/', answer)
    // Reads only once the request is torn down: a handler that awaited something first.
    .post('/late', async (c) => {
      await new Promise((resolve) => c.env.incoming.once('close', resolve));
      return answer(c);
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
  const head = (length: number, path = '/') =>
    `POST ${path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: ${length}\r\n\r\n`;

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

  void it('refuses as malformed JSON a chunked body whose client hangs up before its last chunk', {
    timeout: 5_000,
  }, async () => {
    const outcome = nextOutcome();
    const chunked =
      'POST / HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n';
    await send(chunked, ['8\r\n{"note":\r\n'], 'hang up');
    const err = await outcome;
    assert.ok(err instanceof ApiError, String(err));
    assert.equal(err.code, 'malformed_json');
    assert.match(err.message, /ended before its last chunk/);
  });

  void it('refuses as malformed JSON a body whose client hung up before the handler began to read', {
    timeout: 5_000,
  }, async () => {
    const outcome = nextOutcome();
    await send(head(100, '/late'), ['{"note":'], 'hang up');
    const err = await outcome;
    assert.ok(err instanceof ApiError, String(err));
    assert.equal(err.code, 'malformed_json');
  });
});
