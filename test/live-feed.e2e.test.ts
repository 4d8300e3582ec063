import assert from 'node:assert/strict';
import { connect } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { WebSocket } from 'ws';
import type { Service } from '../src/service.ts';
import { Harness, waitFor } from './harness/harness.ts';
import { SseClient, statesOf } from './harness/live-client.ts';

const startBody = (n: number | string) => ({ obs_unit_id: `live-${n}`, instrument: 'nircam' });
const ALL_STATES = ['accepted', 'applied', 'confirmed'];

void describe('live event feed', () => {
  let h: Harness;
  let b: Service;
  before(async () => {
    // A runs everything; B is a second API process of the same site.
    h = await Harness.start();
    b = await h.startService('api', { port: 0 });
  });
  after(() => h.close());

  const urlOf = (service: Service, path: string) => `http://127.0.0.1:${service.port}${path}`;
  const writeThroughB = async (n: number | string) => {
    const response = await fetch(urlOf(b, '/executed_obs_units/start'), {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(startBody(n)),
    });
    assert.equal(response.status, 201);
    return (await response.json()) as { id: string; event_id: string };
  };

  void it('shows a client on process A the accepted, applied and confirmed states of a write through process B, in order', async () => {
    const client = await SseClient.open(`${h.url}/events/live`);
    try {
      assert.equal(client.status, 200);
      const { event_id } = await writeThroughB('two-processes');
      await waitFor(
        () => statesOf(client.messages(), event_id).length === 3,
        'three states on process A',
      );
      assert.deepEqual(statesOf(client.messages(), event_id), ALL_STATES);
      const confirmed = client.messages().find((m) => m.message.state === 'confirmed');
      assert.equal(confirmed?.message.type, 'ExecutedObsUnitStarted');
      assert.equal(confirmed?.message.aggregate_type, 'executed_obs_unit');
      assert.match(confirmed?.message.entry_id ?? '', /^\d+-\d+$/);
    } finally {
      await client.close();
    }
  });

  void it('resumes after a disconnect from Last-Event-ID, missing nothing and repeating nothing', async () => {
    const filter = '/events/live?aggregate_type=executed_obs_unit';
    const first = await SseClient.open(`${h.url}${filter}`);
    const before = await writeThroughB('before-disconnect');
    await waitFor(() => statesOf(first.messages(), before.event_id).length === 3, 'first event');
    const acknowledged = first.lastId;
    assert.ok(acknowledged);
    await first.close();

    const missed = [await writeThroughB('missed-1'), await writeThroughB('missed-2')];
    for (const { event_id } of missed) {
      await waitFor(
        async () => (await h.get(`/events/${event_id}`)).body?.state === 'confirmed',
        `event ${event_id} confirmed while the client was away`,
      );
    }
    const resumed = await SseClient.open(`${h.url}${filter}`, { 'last-event-id': acknowledged });
    try {
      const after = await writeThroughB('after-reconnect');
      await waitFor(
        () => statesOf(resumed.messages(), after.event_id).length === 3,
        'the event written after the reconnect',
      );
      const messages = resumed.messages();
      assert.deepEqual(statesOf(messages, before.event_id), []);
      for (const { event_id } of [...missed, after]) {
        assert.deepEqual(statesOf(messages, event_id), ALL_STATES);
      }
      const ids = messages.map((m) => m.id);
      assert.equal(new Set(ids).size, ids.length, 'no id twice');
    } finally {
      await resumed.close();
    }
  });

  void it('filters by aggregate id and state', async () => {
    const client = await SseClient.open(`${h.url}/events/live?state=confirmed`);
    try {
      const { id, event_id } = await writeThroughB('filtered');
      const byId = await SseClient.open(`${h.url}/events/live?aggregate_id=${id}`);
      await waitFor(() => statesOf(client.messages(), event_id).length === 1, 'confirmed only');
      assert.ok(client.messages().every((m) => m.message.state === 'confirmed'));
      await byId.close();
      const bad = await fetch(`${h.url}/events/live?state=bogus`);
      assert.equal(bad.status, 400);
    } finally {
      await client.close();
    }
  });

  void it('serves the same feed over WebSocket, resuming with since', async () => {
    const plain = await fetch(urlOf(b, '/events/live/ws'));
    assert.equal(plain.status, 426);
    const received: { id: string; message: { event_id: string; state: string } }[] = [];
    const open = (since?: string) => {
      const query = since ? `?since=${since}` : '';
      const ws = new WebSocket(`ws://127.0.0.1:${b.port}/events/live/ws${query}`);
      ws.on('message', (data) => received.push(JSON.parse(String(data))));
      return new Promise<WebSocket>((resolve, reject) => {
        ws.once('open', () => resolve(ws));
        ws.once('error', reject);
      });
    };
    const ws = await open();
    const { event_id } = await writeThroughB('websocket');
    await waitFor(
      () => received.filter((r) => r.message.event_id === event_id).length === 3,
      'three states over WebSocket',
    );
    assert.deepEqual(
      received.filter((r) => r.message.event_id === event_id).map((r) => r.message.state),
      ALL_STATES,
    );
    const accepted = received.find((r) => r.message.event_id === event_id);
    ws.close();
    received.length = 0;
    const again = await open(accepted?.id);
    await waitFor(
      () => received.filter((r) => r.message.event_id === event_id).length === 2,
      'the two later states replayed',
    );
    again.close();
  });

  void it('drops a client that never reads, and the memory of the process stays bounded', async () => {
    const bound = 16 * 1024;
    const c = await h.startService('api', { port: 0, liveClientBufferBytes: bound });
    const dropped = async () =>
      ((await c.metrics.registry.getSingleMetric('outpost_live_clients_dropped_total')?.get())
        ?.values[0]?.value ?? 0) >= 1;
    // A raw socket that sends the request and then never reads a byte.
    const socket = connect(c.port, '127.0.0.1');
    await new Promise<void>((resolve) => socket.once('connect', () => resolve()));
    socket.write('GET /events/live HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n');
    socket.pause();
    const rssBefore = process.memoryUsage().rss;
    let pushed = 0;
    // Kernel socket buffers take the first few hundred kilobytes; keep pushing until the
    // process's own queue for the client passes the bound.
    while (pushed < 10_000 && !(await dropped())) {
      const unit = await writeThroughB(`slow-${pushed}`);
      const files = Array.from({ length: 999 }, (_, i) => ({
        path: `/data/slow-${pushed}-${i}.fits`,
        size_bytes: 1,
        checksum: '0123456789abcdef',
        checksum_algorithm: 'xxh64',
      }));
      const result = await fetch(urlOf(b, '/raw_data_files'), {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ executed_obs_unit_id: unit.id, files }),
      });
      assert.equal(result.status, 201);
      pushed += 1000;
    }
    await waitFor(dropped, 'the slow client dropped');
    assert.ok(pushed >= 1000);
    await waitFor(
      async () =>
        ((await c.metrics.registry.getSingleMetric('outpost_live_clients')?.get())?.values[0]
          ?.value ?? 0) === 0,
      'the dropped client disconnected',
    );
    const growthMb = (process.memoryUsage().rss - rssBefore) / 1024 / 1024;
    assert.ok(growthMb < 100, `RSS grew by ${growthMb.toFixed(1)} MB`);
    socket.destroy();
    await h.stopService(c);
  });
});
