import assert from 'node:assert/strict';
import { connect } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { WebSocket } from 'ws';
import { compareEntryIds } from '../src/log/entry-id.ts';
import { liveListenersKey, liveStreamKey } from '../src/log/keys.ts';
import {
  Harness,
  residentMb,
  type SpawnedService,
  scrapeMetric,
  waitFor,
} from './harness/harness.ts';
import { SseClient, statesOf } from './harness/live-client.ts';

const startBody = (n: number | string) => ({ obs_unit_id: `live-${n}`, instrument: 'nircam' });
const ALL_STATES = ['accepted', 'applied', 'confirmed'];

void describe('live event feed', () => {
  let h: Harness;
  let a: SpawnedService;
  let b: SpawnedService;
  before(async () => {
    // Two OS processes of one site: A runs everything, B is a second API process.
    h = await Harness.start({ role: 'none' });
    a = await h.spawnServe('all');
    b = await h.spawnServe('api');
    await Promise.all([a.ready(), b.ready()]);
  });
  after(() => h?.close());

  const stateOf = async (event_id: string) =>
    ((await (await fetch(`${a.url}/events/${event_id}`)).json()) as { state?: string }).state;
  const writeThroughB = async (n: number | string) => {
    const response = await fetch(`${b.url}/executed_obs_units/start`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(startBody(n)),
    });
    assert.equal(response.status, 201);
    return (await response.json()) as { id: string; event_id: string };
  };

  void it('shows a client on process A the accepted, applied and confirmed states of a write through process B, in order', async () => {
    // A's projector and acker apply this write while nobody listens and keep that answer for a
    // moment: the site's first client must still see every state of the next write.
    await writeThroughB('before-anyone-listens');
    const client = await SseClient.open(`${a.url}/events/live`);
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
    const first = await SseClient.open(`${a.url}${filter}`);
    const before = await writeThroughB('before-disconnect');
    await waitFor(() => statesOf(first.messages(), before.event_id).length === 3, 'first event');
    const acknowledged = first.lastId;
    assert.ok(acknowledged);
    await first.close();

    const missed = [await writeThroughB('missed-1'), await writeThroughB('missed-2')];
    for (const { event_id } of missed) {
      await waitFor(
        async () => (await stateOf(event_id)) === 'confirmed',
        `event ${event_id} confirmed while the client was away`,
      );
    }
    const resumed = await SseClient.open(`${a.url}${filter}`, { 'last-event-id': acknowledged });
    try {
      const after = await writeThroughB('after-reconnect');
      await waitFor(
        () => statesOf(resumed.messages(), after.event_id).length === 3,
        'the event written after the reconnect',
      );
      const messages = resumed.messages();
      assert.deepEqual(statesOf(messages, before.event_id), []);
      // Each state once, in order, also for the events written while the client was away.
      for (const { event_id } of [...missed, after]) {
        assert.deepEqual(statesOf(messages, event_id), ALL_STATES);
      }
      const ids = messages.map((m) => m.id);
      assert.equal(new Set(ids).size, ids.length, 'no id twice');
    } finally {
      await resumed.close();
    }
  });

  void it('tells a live client that messages went unpublished when the listener mark lapsed under it', async () => {
    const client = await SseClient.open(`${a.url}/events/live`);
    try {
      const before = await writeThroughB('before-lapse');
      await waitFor(
        () => statesOf(client.messages(), before.event_id).length === 3,
        'the first event',
      );
      // Gone as after a Redis outage longer than its TTL, or a Redis back without its data.
      await h.redis.del(liveListenersKey(h.config.namespace));
      await waitFor(() => client.frames.some((f) => f.event === 'gap'), 'a gap notice');
      const after = await writeThroughB('after-lapse');
      await waitFor(
        () => statesOf(client.messages(), after.event_id).length === 3,
        'the event written once the mark was set again',
      );
    } finally {
      await client.close();
    }
  });

  void it("shows the feed reader's failure in /health while it lasts", async () => {
    const health = async () =>
      (await (await fetch(`${b.url}/health`)).json()) as {
        status: string;
        live_feed?: { error: string };
      };
    const key = liveStreamKey(h.config.namespace);
    // A key of the wrong type where the feed's stream should be: every read of it fails.
    const kept = (await h.redis.exists(key)) === 1;
    if (kept) {
      await h.redis.rename(key, `${key}:kept`);
    }
    await h.redis.set(key, 'not a stream');
    try {
      await waitFor(
        async () => /WRONGTYPE/.test((await health()).live_feed?.error ?? ''),
        "the reader's failure in /health",
      );
      assert.equal((await health()).status, 'degraded');
    } finally {
      await h.redis.del(key);
      if (kept) {
        await h.redis.rename(`${key}:kept`, key);
      }
    }
    await waitFor(async () => (await health()).live_feed === undefined, 'the reader back');
  });

  void it('tells a client resuming across a spell with no listener anywhere that messages may be missing there', async () => {
    const first = await SseClient.open(`${a.url}/events/live`);
    const before = await writeThroughB('before-quiet');
    await waitFor(() => statesOf(first.messages(), before.event_id).length === 3, 'first event');
    const resumeFrom = first.lastId;
    assert.ok(resumeFrom);
    await first.close();
    // The listener mark lapses, as it does 10 minutes after the last client anywhere left: once
    // the processes have asked again, what happens is published nowhere. Not while A still
    // counts the client: it would mark the site again.
    await waitFor(
      async () => (await scrapeMetric(a.url, 'outpost_live_clients')) === 0,
      'A to let the client go',
    );
    await h.redis.del(liveListenersKey(h.config.namespace));
    const liveStream = liveStreamKey(h.config.namespace);
    const published = async (eventId: string) =>
      ((await h.redis.xrevrange(liveStream, '+', '-', 'COUNT', 200)) as [string, string[]][]).some(
        ([, fields]) => fields.join(' ').includes(eventId),
      );
    let unpublished: string | undefined;
    await waitFor(async () => {
      const { event_id } = await writeThroughB(`quiet-${Date.now()}`);
      await waitFor(async () => (await stateOf(event_id)) === 'confirmed', 'confirmed');
      unpublished = (await published(event_id)) ? undefined : event_id;
      return unpublished !== undefined;
    }, 'a write confirmed with none of its states published');

    const resumed = await SseClient.open(`${a.url}/events/live`, { 'last-event-id': resumeFrom });
    try {
      const after = await writeThroughB('after-quiet');
      await waitFor(
        () => statesOf(resumed.messages(), after.event_id).length === 3,
        'the event written after the reconnect',
      );
      const gaps = resumed.frames.filter((f) => f.event === 'gap');
      assert.equal(gaps.length, 1, JSON.stringify(resumed.frames.map((f) => f.event ?? f.id)));
      const gap = JSON.parse(gaps[0]?.data ?? '{}') as { since: string; oldest: string };
      const at = resumed.frames.findIndex((f) => f.event === 'gap');
      const ids = resumed.frames.flatMap((f) => (f.id === undefined ? [] : [f.id]));
      const sentBefore = resumed.frames.slice(0, at).flatMap((f) => (f.id ? [f.id] : []));
      assert.equal(gap.since, sentBefore.at(-1) ?? resumeFrom, 'from the last message sent');
      assert.ok(
        ids.every((id) => compareEntryIds(id, gap.oldest) * (sentBefore.includes(id) ? -1 : 1) > 0),
        `the gap falls between the messages around it: ${JSON.stringify({ gap, ids })}`,
      );
      assert.deepEqual(statesOf(resumed.messages(), unpublished ?? ''), []);
    } finally {
      await resumed.close();
    }
  });

  void it('filters by aggregate id and state', async () => {
    const client = await SseClient.open(`${a.url}/events/live?state=confirmed`);
    let byId: SseClient | undefined;
    try {
      const { id, event_id } = await writeThroughB('filtered');
      byId = await SseClient.open(`${a.url}/events/live?aggregate_id=${id}`);
      await waitFor(() => statesOf(client.messages(), event_id).length === 1, 'confirmed only');
      assert.ok(client.messages().every((m) => m.message.state === 'confirmed'));
      // A change of the unit, and a write of another: only the unit's reaches the filtered client.
      const patch = await fetch(`${b.url}/executed_obs_units/${id}`, {
        method: 'PATCH',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ notes: 'filtered' }),
      });
      assert.equal(patch.status, 202);
      const { event_id: patched } = (await patch.json()) as { event_id: string };
      const other = await writeThroughB('not filtered');
      await waitFor(
        () => statesOf(client.messages(), other.event_id).length === 1,
        "the other unit's write confirmed",
      );
      const filtered = byId;
      await waitFor(
        () => statesOf(filtered.messages(), patched).includes('confirmed'),
        "the unit's change on the filtered feed",
      );
      assert.ok(
        byId.messages().every((m) => m.message.aggregate_id === id),
        JSON.stringify(byId.messages().map((m) => m.message.aggregate_id)),
      );
      for (const query of [
        'state=bogus',
        'aggregate=executed_obs_unit',
        'state=applied&state=dead',
      ]) {
        const bad = await fetch(`${a.url}/events/live?${query}`);
        assert.equal(bad.status, 400, query);
      }
    } finally {
      await byId?.close();
      await client.close();
    }
  });

  void it('serves the same feed over WebSocket, resuming with since', async () => {
    const plain = await fetch(`${b.url}/events/live/ws`);
    assert.equal(plain.status, 426);
    const received: { id: string; message: { event_id: string; state: string } }[] = [];
    const open = (query: string) => {
      const ws = new WebSocket(`ws://127.0.0.1:${b.port}/events/live/ws${query}`);
      ws.on('message', (data) => received.push(JSON.parse(String(data))));
      return new Promise<WebSocket>((resolve, reject) => {
        ws.once('open', () => resolve(ws));
        ws.once('unexpected-response', (_request, response) =>
          reject(new Error(`answered ${response.statusCode} instead of opening`)),
        );
        ws.once('error', reject);
      });
    };
    await assert.rejects(open('?state=bogus'), /answered 400/);
    // Parameters left empty are ones not given, as everywhere else in the API (this was a 500).
    const ws = await open('?state=&since=&aggregate_id=&aggregate_type=');
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
    const again = await open(`?since=${accepted?.id}`);
    await waitFor(
      () => received.filter((r) => r.message.event_id === event_id).length === 2,
      'the two later states replayed',
    );
    again.close();
  });

  void it('announces a dead-lettered event as accepted again when a retry gives it back', async () => {
    await h.main.query(
      "ALTER TABLE executed_obs_units ADD CONSTRAINT no_poison CHECK (obs_unit_id <> 'live-poison') NOT VALID",
    );
    const client = await SseClient.open(`${a.url}/events/live`);
    try {
      const { event_id } = await writeThroughB('poison');
      await waitFor(() => statesOf(client.messages(), event_id).includes('dead'), 'dead letter');
      await h.main.query('ALTER TABLE executed_obs_units DROP CONSTRAINT no_poison');
      const retried = await fetch(`${b.url}/admin/dead-letters/${event_id}/retry`, {
        method: 'POST',
        headers: { authorization: `Bearer ${h.config.adminToken}` },
      });
      assert.equal(retried.status, 200);
      await waitFor(
        () => statesOf(client.messages(), event_id).length === 5,
        'the retried event accepted, applied and confirmed',
      );
      assert.deepEqual(statesOf(client.messages(), event_id), ['accepted', 'dead', ...ALL_STATES]);
      const dead = client
        .messages()
        .find((m) => m.message.event_id === event_id && m.message.state === 'dead');
      assert.equal(
        dead?.message.type,
        'ExecutedObsUnitStarted',
        'a dead message names its event type',
      );
    } finally {
      await client.close();
    }
  });

  void it('drops a client that never reads, and the memory of the process stays bounded', async (t) => {
    const bound = 16 * 1024;
    const c = await h.spawnServe('api', { OUTPOST_LIVE_CLIENT_BUFFER_BYTES: String(bound) });
    await c.ready();
    const pid = c.child.pid as number;
    const dropped = async () =>
      (await scrapeMetric(c.url, 'outpost_live_clients_dropped_total')) >= 1;
    // A raw socket that sends the request and then never reads a byte.
    const socket = connect(c.port, '127.0.0.1');
    await new Promise<void>((resolve) => socket.once('connect', () => resolve()));
    socket.write('GET /events/live HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n');
    socket.pause();
    await waitFor(
      async () => (await scrapeMetric(c.url, 'outpost_live_clients')) === 1,
      'the silent client connected',
    );
    const rssBefore = residentMb(pid);
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
      const result = await fetch(`${b.url}/raw_data_files`, {
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
      async () => (await scrapeMetric(c.url, 'outpost_live_clients')) === 0,
      'the dropped client disconnected',
    );
    // The RSS of the serving process itself, read from /proc: a queue that kept every message
    // for the silent client would hold all of them (several MB per thousand state changes).
    const growthMb = residentMb(pid) - rssBefore;
    t.diagnostic(
      `${pushed} events pushed; API process RSS ${rssBefore.toFixed(1)} MB, grew ${growthMb.toFixed(1)} MB`,
    );
    assert.ok(growthMb < 48, `RSS of the API process grew by ${growthMb.toFixed(1)} MB`);
    socket.destroy();
  });

  void describe('requests at the door that hold nothing open', () => {
    let c: SpawnedService;
    before(async () => {
      // A process of its own: its gauge counts only these tests' clients.
      c = await h.spawnServe('api');
      await c.ready();
    });
    const sessions = () => scrapeMetric(c.url, 'outpost_live_clients');

    void it('answers HEAD of the feed, and a WebSocket handshake sent to it, without a session that would outlive them', async () => {
      const head = await fetch(`${c.url}/events/live`, { method: 'HEAD' });
      assert.equal(head.status, 200);
      assert.match(head.headers.get('content-type') ?? '', /^text\/event-stream/);
      const handshake = new WebSocket(`ws://127.0.0.1:${c.port}/events/live`);
      const refused = await new Promise<number | string>((resolve) => {
        handshake.once('unexpected-response', (_request, response) =>
          resolve(response.statusCode ?? 0),
        );
        handshake.once('open', () => resolve('opened'));
        handshake.once('error', (err) => resolve(err.message));
      });
      handshake.terminate();
      assert.equal(refused, 400);
      // A client that reads, beside it: once its session counts, the HEAD's would count too.
      const client = await SseClient.open(`${c.url}/events/live`);
      try {
        await waitFor(async () => (await sessions()) >= 1, 'the reading client to connect');
        assert.equal(await sessions(), 1, 'only the reading client has a session');
      } finally {
        await client.close();
      }
      await waitFor(async () => (await sessions()) === 0, 'no session left');
    });

    void it('closes a WebSocket whose client sends more than the feed would ever read', async () => {
      const ws = new WebSocket(`ws://127.0.0.1:${c.port}/events/live/ws`);
      await new Promise((resolve, reject) => {
        ws.once('open', resolve);
        ws.once('error', reject);
      });
      let closedWith: number | undefined;
      ws.once('close', (code) => {
        closedWith = code;
      });
      try {
        ws.send('x'.repeat(64 * 1024));
        await waitFor(() => closedWith !== undefined, 'the server to close the socket');
      } finally {
        ws.terminate();
      }
      assert.equal(closedWith, 1009, 'message too big');
      await waitFor(async () => (await sessions()) === 0, 'its session ended');
    });

    void it('answers an upgrade to anything but websocket, instead of holding its socket', async () => {
      const socket = connect(c.port, '127.0.0.1');
      let answer = '';
      socket.on('data', (chunk) => {
        answer += String(chunk);
      });
      const ended = new Promise<void>((resolve) => socket.once('close', () => resolve()));
      socket.write(
        'GET /health HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n',
      );
      try {
        await waitFor(() => answer.includes('\r\n\r\n'), 'an answer to the h2c upgrade');
        assert.match(answer, /^HTTP\/1\.1 400 /);
        assert.match(answer, /"code":"validation_failed"/);
        await ended;
      } finally {
        socket.destroy();
      }
    });
  });
});
