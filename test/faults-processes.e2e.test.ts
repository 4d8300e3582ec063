import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { randomInt } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { request as httpRequest } from 'node:http';
import { createConnection } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { Redis as IORedis } from 'ioredis';
import { partitionOf } from '../src/domain/ids.ts';
import { entryRecord } from '../src/log/codec.ts';
import { CONSUMER_GROUP, processRosterKey, siteNameKey } from '../src/log/keys.ts';
import { killRedis, stackUp } from '../src/stack/stack.ts';
import {
  audit,
  eventLogOf,
  streamEntries,
  streamEventIds,
  waitForAllAcknowledged,
  waitForApplied,
} from './harness/audit.ts';
import { runCli, runCliWith } from './harness/cli.ts';
import {
  Harness,
  holdFault,
  killOnExit,
  type SpawnedService,
  scrapeMetric,
  testStack,
  waitFor,
} from './harness/harness.ts';
import { type SteadyLoad, steadyLoad } from './harness/load.ts';
import { BlackholeProxy } from './harness/proxy.ts';
import { freePort } from './harness/services.ts';

const exited = (child: ChildProcess) =>
  child.exitCode !== null || child.signalCode !== null
    ? Promise.resolve()
    : new Promise<void>((resolve) => child.once('exit', () => resolve()));

const appliedBy = (process: SpawnedService) =>
  scrapeMetric(process.url, 'outpost_events_applied_total');

/** Who holds each partition's lease, in partition order. */
const leaseOwners = async (h: Harness) =>
  (
    await h.mainRows<{ owner: string | null }>(
      'SELECT owner FROM partition_leases ORDER BY partition',
    )
  ).map((r) => r.owner);

/**
 * Once every event is acknowledged: the unit patched `firstNotes`, then 'second', then finished
 * holds the second notes, and its events were applied in the order accepted.
 */
const patchedInOrder = async (h: Harness, id: string, firstNotes: string) => {
  await waitForAllAcknowledged(h, 30_000);
  const unit = (await h.get(`/executed_obs_units/${id}`)).body as {
    notes: string | null;
    status: string;
  };
  assert.deepEqual(
    { notes: unit.notes, status: unit.status },
    { notes: 'second', status: 'success' },
  );
  const events = await h.mainRows<{ notes: string | null }>(
    "SELECT data->>'notes' AS notes FROM events WHERE aggregate_id = $1 ORDER BY seq",
    [id],
  );
  assert.deepEqual(
    events.map((e) => e.notes),
    [null, firstNotes, 'second', null],
    'applied in the order accepted',
  );
};

/**
 * Makes Redis's next background save fail, as a full disk would: with a save point set (Redis's
 * default, which compose.yaml turns off) Redis then refuses every write (MISCONF) until a save
 * succeeds. The save is slowed to a second a key so that it can be killed before it finishes.
 */
const failBackgroundSave = async (h: Harness) => {
  await h.redis.config('SET', 'rdb-key-save-delay', '1000000');
  // A save point Redis never reaches on its own (it would start saves of its own, and retry a
  // failed one every 5 s), yet one that makes a failed save stop writes.
  await h.redis.config('SET', 'save', '100000000 1');
  await h.redis.bgsave();
  const redisPid = /^process_id:(\d+)/m.exec(await h.redis.info('server'))?.[1];
  assert.ok(redisPid);
  let saver: number | undefined;
  await waitFor(() => {
    const children = readFileSync(`/proc/${redisPid}/task/${redisPid}/children`, 'utf8').trim();
    saver = children === '' ? undefined : Number(children.split(' ')[0]);
    return saver !== undefined;
  }, 'the background save to start');
  process.kill(saver as number, 'SIGKILL');
  await waitFor(
    async () => /^rdb_last_bgsave_status:err/m.test(await h.redis.info('persistence')),
    'Redis to see its background save fail',
  );
};

/** Entries delivered to `consumer` and not acknowledged: [stream, entry id]. */
const deliveredTo = async (h: Harness, consumer: string): Promise<[string, string][]> => {
  const log = eventLogOf(h);
  const found: [string, string][] = [];
  for (const keys of log.allKeys()) {
    const entries = (await h.redis.xpending(
      keys.stream,
      CONSUMER_GROUP,
      '-',
      '+',
      10_000,
      consumer,
    )) as [string, string, number, number][];
    found.push(...entries.map(([id]): [string, string] => [keys.stream, id]));
  }
  return found;
};

/**
 * Freezes a projector (SIGSTOP) once it holds delivered entries, letting it run again while it
 * holds none: frozen, it can neither apply nor acknowledge, so what it holds then is what it
 * would die with. Answers those entries.
 */
const frozenHolding = async (
  h: Harness,
  projector: SpawnedService,
  consumer: string,
): Promise<[string, string][]> => {
  let held: [string, string][] = [];
  await waitFor(async () => {
    projector.child.kill('SIGSTOP');
    held = await deliveredTo(h, consumer);
    if (held.length === 0) {
      projector.child.kill('SIGCONT');
    }
    return held.length > 0;
  }, 'the projector to hold delivered entries');
  return held;
};

/** New entries of `stream` read by a consumer named `former-owner`: their ids. */
const readAsFormerOwner = async (h: Harness, stream: string): Promise<string[]> => {
  const read = (await h.redis.xreadgroup(
    'GROUP',
    CONSUMER_GROUP,
    'former-owner',
    'STREAMS',
    stream,
    '>',
  )) as [string, [string, string[]][]][] | null;
  return (read?.[0]?.[1] ?? []).map(([id]) => id);
};

/**
 * A projector named `consumer`, and a unit it applied: the consumer of the unit's partition runs
 * (a partition leased later would take a former owner's entries over whole, not claim them).
 */
const runningAUnit = async (h: Harness, consumer: string, obsUnitId: string) => {
  const projector = await h.spawnServe('projector', { OUTPOST_CONSUMER: consumer });
  await projector.ready();
  const start = await h.post('/executed_obs_units/start', {
    obs_unit_id: obsUnitId,
    instrument: 'nircam',
  });
  assert.equal(start.status, 201, start.text);
  const { id, event_id: startEvent } = start.body as { id: string; event_id: string };
  await waitFor(
    async () => (await h.get(`/events/${startEvent}`)).body?.state === 'confirmed',
    'the start to be applied',
  );
  return { projector, id };
};

/** Waits until no client is blocked in XREADGROUP: a stopped projector's last read has ended. */
const noReadBlocked = (h: Harness): Promise<void> =>
  waitFor(
    async () =>
      !String(await h.redis.call('CLIENT', 'LIST'))
        .split('\n')
        .some((client) => /flags=\S*b/.test(client) && /cmd=xreadgroup/.test(client)),
    "the stopped projector's last blocking read to end",
  );

type Health = {
  status: string;
  background_processor: { status: string; last_error: string | null };
};

/** Polls a process's /health until `until` holds; a timeout says what it said last. */
const healthUntil = async (
  url: string,
  until: (health: Health) => boolean,
  what: string,
  timeoutMs: number,
): Promise<void> => {
  let seen: unknown;
  await waitFor(
    async () => {
      seen = await (await fetch(`${url}/health`)).json();
      return until(seen as Health);
    },
    what,
    timeoutMs,
  ).catch((err: Error) => {
    throw new Error(`${err.message}; /health said ${JSON.stringify(seen)}`);
  });
};

void describe('process faults under load', () => {
  void describe('projector killed -9 five times', () => {
    let h: Harness;
    after(() => h?.close());

    void it('loses no event and applies none twice', async () => {
      h = await Harness.start({ role: 'api' });
      const load = h.steadyLoad(80, 'kill9');
      let projector = await h.spawnServe('projector');
      for (let kill = 0; kill < 5; kill += 1) {
        const appliedBefore = Number(
          (await h.mainRows<{ n: number }>('SELECT count(*)::int AS n FROM events'))[0]?.n,
        );
        await waitFor(
          async () =>
            Number(
              (await h.mainRows<{ n: number }>('SELECT count(*)::int AS n FROM events'))[0]?.n,
            ) > appliedBefore,
          `the projector to apply something before kill ${kill + 1}`,
          30_000,
        );
        // A random point in its work: mid-batch, between COMMIT and the LSN record, or idle.
        await holdFault(randomInt(0, 400));
        projector.child.kill('SIGKILL');
        await exited(projector.child);
        projector = await h.spawnServe('projector');
      }
      const { accepted, failures } = await load.stop();
      assert.deepEqual(failures, []);
      await audit(h, accepted);

      // A projector started with a port already taken (next to an API with the same
      // environment) runs on without its operations endpoints instead of failing.
      const twin = await h.spawnServe('projector', {
        OUTPOST_PORT: String(projector.port),
        OUTPOST_CONSUMER: 'twin',
      });
      await waitFor(() => /OUTPOST_PORT is taken/.test(twin.output()), 'the port clash noticed');
      await waitFor(
        async () =>
          (await h.mainRows("SELECT 1 FROM partition_leases WHERE owner = 'twin'")).length > 0,
        'the twin to take a share of the partitions',
        30_000,
      );
      assert.equal(twin.child.exitCode, null, 'still running');
      assert.ok(
        (await h.redis.zrange(processRosterKey(h.config.namespace), '0', '-1')).some((member) =>
          member.includes('twin on'),
        ),
        'listed under its partition count: a change of the count waits for it',
      );
      for (const process of [projector, twin]) {
        process.child.kill('SIGTERM');
        await exited(process.child);
      }
    });
  });

  void describe('projector killed -9 and restarted at once under the same name', () => {
    let h: Harness;
    after(() => h?.close());

    void it("says in /health that its partitions wait for the killed run's leases, then applies", async () => {
      h = await Harness.start({ role: 'api' });
      // A lease TTL long enough to look at the wait (the harness's is 2 s).
      const env = { OUTPOST_CLAIM_IDLE_MS: '20000' };
      const killed = await h.spawnServe('projector', env);
      await killed.ready();
      const leased = async () =>
        (
          await h.mainRows(
            "SELECT partition FROM partition_leases WHERE owner IS NOT NULL AND expires_at > now() AND site <> ''",
          )
        ).length;
      await waitFor(async () => (await leased()) === h.config.partitions, 'every partition leased');
      killed.child.kill('SIGKILL');
      await exited(killed.child);
      const written = await h.post('/executed_obs_units/start', {
        obs_unit_id: 'behind-a-killed-run',
        instrument: 'x',
      });
      assert.equal(written.status, 201, written.text);

      const restarted = await h.spawnServe('projector', env);
      await restarted.ready();
      await healthUntil(
        restarted.url,
        ({ status, background_processor }) =>
          status === 'degraded' &&
          /^partitions? [\d, ]+ leased to .+, this process's own name, but not held by it: a previous run stopped without giving (them|it) back \(killed\?\)/.test(
            background_processor.last_error ?? '',
          ),
        "/health to say the killed run's leases hold the partitions",
        15_000,
      );
      // Logged before /health can say it, but read from the child's pipe in this process's own
      // time: an answer from /health can come first (one full run missed it).
      await waitFor(
        () => /leased to .+, this process's own name/.test(restarted.output()),
        "the killed run's leases named in the log",
        5_000,
      );
      await waitFor(
        async () => (await h.get(`/events/${written.body.event_id}`)).body.state === 'confirmed',
        'the write to be applied once the leases lapsed',
        60_000,
      );
      await healthUntil(
        restarted.url,
        ({ status, background_processor }) =>
          status === 'healthy' && background_processor.last_error === null,
        '/health to be healthy once the partitions are held',
        30_000,
      );
      restarted.child.kill('SIGTERM');
      await exited(restarted.child);
    });
  });

  void describe('projector killed -9 and never restarted', () => {
    let h: Harness;
    after(() => h?.close());

    void it('leaves its delivered entries to another consumer, which claims and applies them', async () => {
      h = await Harness.start({ role: 'api' });
      const pendingOf = (consumer: string) => deliveredTo(h, consumer);
      const load = h.steadyLoad(80, 'orphaned');
      const gone = await h.spawnServe('projector', { OUTPOST_CONSUMER: 'gone' });
      const orphaned = await frozenHolding(h, gone, 'gone');
      gone.child.kill('SIGKILL');
      await exited(gone.child);
      const heir = await h.spawnServe('projector', { OUTPOST_CONSUMER: 'heir' });
      await waitFor(
        async () => (await pendingOf('gone')).length === 0,
        "the heir to claim the dead consumer's entries",
        30_000,
      );
      const { accepted, failures } = await load.stop();
      assert.deepEqual(failures, []);
      await audit(h, accepted);
      // The entries the dead consumer held were applied: by the heir, which claimed them.
      const orphanEvents: string[] = [];
      for (const [stream, entryId] of orphaned) {
        const [entry] = (await h.redis.xrange(stream, entryId, entryId)) as [string, string[]][];
        assert.ok(entry, `${entryId} is still in ${stream}`);
        orphanEvents.push(entryRecord(entry[1]).event_id as string);
      }
      const applied = await h.mainRows('SELECT 1 FROM events WHERE event_id = ANY($1::uuid[])', [
        orphanEvents,
      ]);
      assert.equal(applied.length, orphaned.length);
      heir.child.kill('SIGTERM');
      await exited(heir.child);
    });
  });

  void describe('a pending entry deleted from the stream by hand before its owner died', () => {
    let h: Harness;
    after(() => h?.close());

    void it('is named by the heir that claims the partition, not dropped without a word', async () => {
      h = await Harness.start({ role: 'api' });
      const load = h.steadyLoad(80, 'deleted');
      const gone = await h.spawnServe('projector', { OUTPOST_CONSUMER: 'gone' });
      const held = await frozenHolding(h, gone, 'gone');
      await load.stop();
      const [stream, entryId] = held[0] as [string, string];
      // What an operator freeing memory with XDEL (or XTRIM MAXLEN) does to a pending entry.
      assert.equal(await h.redis.xdel(stream, entryId), 1);
      gone.child.kill('SIGKILL');
      await exited(gone.child);
      const heir = await h.spawnServe('projector', { OUTPOST_CONSUMER: 'heir' });
      await waitFor(
        async () => (await deliveredTo(h, 'gone')).length === 0,
        "the heir to claim the dead consumer's entries",
        30_000,
      );
      await waitFor(
        () => /deleted from the stream outside Outpost/.test(heir.output()),
        'the heir to say what it found deleted',
      );
      const said = heir
        .output()
        .split('\n')
        .find((line) => line.includes('deleted from the stream outside Outpost'));
      assert.ok(said?.includes(entryId), said);
      heir.child.kill('SIGTERM');
      await exited(heir.child);
    });
  });

  void describe('an API stopped while a write is on its way in', () => {
    let h: Harness;
    after(() => h?.close());

    void it('answers the write before it closes the connection', async () => {
      h = await Harness.start({ role: 'none' });
      const api = await h.startService('api');
      const body = JSON.stringify({ obs_unit_id: 'stopped-mid-request', instrument: 'x' });
      const request = httpRequest({
        host: '127.0.0.1',
        port: api.port,
        method: 'POST',
        path: '/executed_obs_units/start',
        headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) },
      });
      const answered = new Promise<{ status: number; text: string }>((resolve, reject) => {
        request.on('error', reject);
        request.on('response', (response) => {
          let text = '';
          response.setEncoding('utf8');
          response.on('data', (chunk: string) => {
            text += chunk;
          });
          response.on('end', () => resolve({ status: response.statusCode ?? 0, text }));
        });
      });
      // Half the body sent: the request is in progress when the stop comes.
      request.write(body.slice(0, 10));
      const stopping = h.stopService(api);
      await waitFor(
        () =>
          new Promise<boolean>((resolve) => {
            const probe = createConnection({ host: '127.0.0.1', port: api.port });
            probe.on('connect', () => {
              probe.destroy();
              resolve(false);
            });
            probe.on('error', () => resolve(true));
          }),
        'the API to stop taking connections',
      );
      request.end(body.slice(10));
      const answer = await answered;
      assert.equal(answer.status, 201, answer.text);
      await stopping;
      const { id } = JSON.parse(answer.text) as { id: string };
      const [entry] = await eventLogOf(h).readInflight(id, partitionOf(id, h.config.partitions));
      assert.ok(entry, 'the answered write is in the log');
    });
  });

  void describe('a start that fails once its projector has begun', () => {
    let h: Harness;
    after(() => h?.close());

    void it('stops what it started, so another projector takes the partitions at once', async () => {
      h = await Harness.start({ role: 'none' });
      const api = await h.startService('api');
      // The same port as the running API: the listen fails after the projector has started.
      await assert.rejects(
        h.startService('all', { port: api.port, consumer: 'port-taken' }),
        /EADDRINUSE/,
      );
      await h.startService('projector', { port: 0, consumer: 'heir' });
      await waitFor(async () => {
        const owners = await leaseOwners(h);
        return owners.length === h.config.partitions && owners.every((owner) => owner === 'heir');
      }, 'the other projector to hold every partition');
      const members = await h.mainRows(
        "SELECT 1 FROM projector_members WHERE consumer = 'port-taken'",
      );
      assert.equal(members.length, 0, 'the failed start left no member behind');
    });
  });

  void describe('API killed -9 three times with answers lost on the way', () => {
    let h: Harness;
    let load: SteadyLoad | undefined;
    const proxies: BlackholeProxy[] = [];
    after(async () => {
      load?.abandon();
      await Promise.all(proxies.map((proxy) => proxy.close()));
      await h?.close();
    });

    void it('lands each write once when its client retries with the same Idempotency-Key', async () => {
      h = await Harness.start({ role: 'projector' });
      const reachable = async (api: SpawnedService) => {
        await api.ready();
        const proxy = await BlackholeProxy.start(api.port);
        proxies.push(proxy);
        return proxy;
      };
      let api = await h.spawnServe('api');
      let proxy = await reachable(api);
      // The instrument retries a write whose answer never came (the connection reset, or refused
      // while no API runs) with the key it sent the first time.
      load = steadyLoad(
        async (path, body, headers) => {
          const response = await fetch(`http://127.0.0.1:${proxy.port}${path}`, {
            method: 'POST',
            headers: { 'content-type': 'application/json', ...headers },
            body: JSON.stringify(body),
          });
          return { status: response.status, body: await response.json() };
        },
        150,
        'api-kill9',
      );
      const running = load;
      const appendedUnanswered = new Set<string>();
      for (let kill = 0; kill < 3; kill += 1) {
        const acceptedBefore = running.accepted();
        await waitFor(
          () => running.accepted() >= acceptedBefore + 100,
          `writes to be answered before kill ${kill + 1}`,
          30_000,
        );
        // The API appends and answers; the answers never arrive, then the API dies.
        proxy.loseReplies();
        let unanswered: string[] = [];
        await waitFor(async () => {
          const answered = running.acceptedIds();
          unanswered = [...(await streamEventIds(h))].filter((id) => !answered.has(id));
          return unanswered.length >= 10;
        }, 'writes appended whose answers were lost');
        api.child.kill('SIGKILL');
        await exited(api.child);
        for (const id of unanswered) {
          appendedUnanswered.add(id);
        }
        api = await h.spawnServe('api');
        proxy = await reachable(api);
      }
      await waitFor(
        () => running.accepted() >= 400,
        'writes to flow after the last restart',
        30_000,
      );
      const { accepted, failures, sent } = await running.stop();
      assert.deepEqual(failures, []);
      assert.equal(accepted.size, sent, 'every write answered 201 in the end');
      for (const id of appendedUnanswered) {
        assert.ok(accepted.has(id), `${id}, appended but unanswered, answered on retry`);
      }
      const entries = await streamEntries(h);
      assert.equal(entries.length, accepted.size, 'no write appended twice, none lost');
      await audit(h, accepted);
      api.child.kill('SIGTERM');
      await exited(api.child);
    });
  });

  void describe('Redis killed -9 and restarted from its append-only file', () => {
    let h: Harness;
    after(async () => {
      // Unset when the test failed before starting its site, which then killed nothing.
      await h?.restartStackAndClose();
    });

    void it('still holds every event that was answered 201', async () => {
      h = await Harness.start();
      const load = h.steadyLoad(80, 'redis');
      await waitFor(() => load.accepted() >= 100, 'load to be flowing');
      const known = (
        await h.post('/executed_obs_units/start', { obs_unit_id: 'k', instrument: 'x' })
      ).body;
      const acceptedBeforeKill = load.accepted();
      await killRedis(h.stack.dir);
      const unavailable = await h.post('/executed_obs_units/start', {
        obs_unit_id: 'r',
        instrument: 'x',
      });
      assert.equal(unavailable.status, 503, 'writes are refused, not lost, while Redis is down');
      assert.ok(unavailable.headers.get('retry-after'));
      const health = await h.get('/health');
      assert.equal(health.status, 503);
      assert.equal(health.body.redis, 'disconnected');
      assert.ok(health.headers.get('retry-after'), '/health says when to look again');
      // The backlog gauges keep their values from before, and this says they are stale.
      const metrics = await h.get('/metrics');
      assert.equal(metrics.status, 200, 'Prometheus still scrapes the process');
      assert.match(metrics.text, /^outpost_dependency_up\{dependency="redis"\} 0$/m);
      // The operator's endpoints read Redis too: an outage is a 503 to wait out, never a 500.
      const admin = { authorization: `Bearer ${h.config.adminToken}` };
      const someId = '01900000-0000-7000-8000-000000000000';
      for (const [method, path] of [
        // Reads merge the replica with the log: with the log away, the replica is not to blame.
        ['GET', `/executed_obs_units/${known.id}`],
        ['GET', '/executed_obs_units?obs_unit_id=k'],
        ['GET', `/events/${known.event_id}`],
        ['GET', `/aggregates/${known.id}/events`],
        ['GET', '/buffer-stats'],
        ['GET', '/admin/pending'],
        ['GET', '/admin/dead-letters'],
        ['GET', `/admin/dead-letters/${someId}`],
        ['POST', `/admin/dead-letters/${someId}/retry`],
        ['DELETE', `/admin/dead-letters/${someId}?reason=outage`],
      ] as const) {
        const answer = await h.request(method, path, undefined, admin);
        assert.equal(answer.status, 503, `${method} ${path}: ${answer.text}`);
        assert.equal(answer.body.error.code, 'log_unavailable', `${method} ${path}`);
        assert.ok(answer.headers.get('retry-after'), `${method} ${path}`);
      }
      // And the CLI says so in one line, without ioredis's stack traces.
      const cli = await runCli(h, ['pending']);
      assert.equal(cli.code, 1);
      assert.match(cli.stderr, /^outpost: cannot reach Redis at 127\.0\.0\.1:\d+ \(.+\)/);
      assert.equal(cli.stderr.trim().split('\n').length, 1, cli.stderr);
      // A mistyped flag is named as such, not blamed on Redis: flags are read before connecting.
      for (const [args, reason] of [
        [['pending', '--idle', '60'], /--idle takes a duration with its unit/],
        [['pending', '--partition', '0x1'], /--partition takes a whole number, not "0x1"/],
        [['dead', 'list', '--limit', '0'], /--limit must be at least 1/],
        [['replay', '--from', '0', '--partition', '1e0'], /--partition takes a whole number/],
        [['replay', '--from', 'yesterday'], /yesterday/],
        [['pending', '--limit', '99999999999999999999'], /--limit must be at most/],
        [['pending', '--idle', '99999999999999999999d'], /--idle must be at most/],
        [['dead', 'show'], /give the dead letter id/],
        [['dead', 'discard', 'not-an-id', '--reason', 'r'], /give the dead letter id/],
      ] as const) {
        const mistyped = await runCli(h, [...args]);
        assert.equal(mistyped.code, 1, args.join(' '));
        assert.match(mistyped.stderr, reason, args.join(' '));
        assert.doesNotMatch(mistyped.stderr, /Redis/, args.join(' '));
      }
      await stackUp(h.stackOptions());
      await waitFor(
        () => load.accepted() >= acceptedBeforeKill + 100,
        'writes to flow again after the restart',
        30_000,
      );
      const { accepted, failures } = await load.stop();
      assert.deepEqual(failures, []);
      const inLog = await streamEventIds(h);
      const lost = [...accepted].filter((id) => !inLog.has(id));
      assert.deepEqual(lost, [], 'every 201 survived the crash');
      await audit(h, inLog);
    });
  });

  void describe('Redis killed -9 and restarted while nothing is written', () => {
    let h: Harness;
    after(async () => {
      await h?.restartStackAndClose();
    });

    void it('shows the projector running again within seconds of Redis answering, however long it was down, not failing until each partition next applies', async () => {
      h = await Harness.start();
      const projector = async () => (await h.get('/health')).body.background_processor;
      // Every partition started, its consumer reading: one still starting when Redis goes fails
      // its start instead, which the lease manager reports.
      await waitFor(async () => {
        for (let partition = 0; partition < h.config.partitions; partition += 1) {
          const consumers = (await h.redis.call(
            'XINFO',
            'CONSUMERS',
            eventLogOf(h).keys(partition).stream,
            CONSUMER_GROUP,
          )) as unknown[];
          if (consumers.length === 0) {
            return false;
          }
        }
        return (await projector()).status === 'running';
      }, 'every partition to be read by the projector');
      await killRedis(h.stack.dir);
      // Said as Redis's failure: ioredis's words ("Reached the max retries per request limit")
      // do not name it.
      let said: unknown;
      await waitFor(
        async () => {
          said = (await projector()).last_error;
          return /^reading partition \d+ from Redis failed: /.test(String(said));
        },
        "the projector's reads to fail, said as Redis's failure, while Redis is down",
        30_000,
      ).catch((err: Error) => {
        throw new Error(`${err.message}; last_error: ${JSON.stringify(said)}`);
      });
      // Down long enough for the retries of the readers, the acker and the live feed to back off
      // to their caps (10 s, 5 s, 5 s): the time the outage lasts is what is tested.
      await holdFault(40_000);
      await stackUp(h.stackOptions());
      const upAt = performance.now();
      // Nothing is written: no partition has a batch to make that would clear its error.
      await healthUntil(
        h.url,
        ({ status, background_processor }) =>
          status === 'healthy' &&
          background_processor.status === 'running' &&
          background_processor.last_error === null,
        'the projector to be shown running again after Redis came back',
        30_000,
      );
      // Each of them starts again once its connections are made again (every 2 s at most), not
      // when its backoff ends: up to 10 s later, for each partition apart.
      const seconds = (performance.now() - upAt) / 1000;
      assert.ok(seconds < 5, `shown running ${seconds.toFixed(1)} s after Redis answered again`);
    });
  });

  void describe('Redis frozen (SIGSTOP) and let go while nothing is written', () => {
    let h: Harness;
    let frozen: number | undefined;
    after(async () => {
      if (frozen !== undefined) {
        process.kill(frozen, 'SIGCONT');
      }
      await h?.close();
    });

    void it('logs a spell of failures once per reason with its error, not every retry, and its end', async () => {
      h = await Harness.start({ role: 'api' });
      const projector = await h.spawnServe('projector', { LOG_LEVEL: 'debug' });
      await projector.ready();
      type Line = { level: number; msg: string; partition?: number; failures?: number };
      const allLines = () =>
        projector
          .output()
          .split('\n')
          .filter((line) => line.startsWith('{'))
          .map((line) => JSON.parse(line) as Line);
      // What was said from the freeze on: a spell at start-up is not this one.
      let fromLine = 0;
      const lines = () => allLines().slice(fromLine);
      const said = () =>
        lines()
          .filter((l) => l.level >= 20)
          .map((l) => `${l.partition ?? '-'} ${l.msg}`)
          .slice(-40)
          .join('\n');
      // The acker retries alike for as long as Redis is away (the partitions' readers stop once
      // their leases lapse, which a lease round that cannot reach Redis lets happen).
      const ackFailures = () => lines().filter((l) => l.msg.startsWith('acknowledging failed: '));
      const readFailures = () =>
        lines().filter(
          (l) => l.level === 40 && /^reading partition \d+ from Redis failed: /.test(l.msg),
        );
      const pid = Number(/^process_id:(\d+)/m.exec(await h.redis.info('server'))?.[1]);
      assert.ok(pid > 0);
      fromLine = allLines().length;
      process.kill(pid, 'SIGSTOP');
      frozen = pid;
      // Not a partition's reader too: under load its lease may lapse, and its consumer stop,
      // before its read times out (seen in a clean-clone CI).
      await waitFor(
        () => ackFailures().length >= 3,
        'the acker to fail three times while Redis is frozen',
        60_000,
      ).catch((err: Error) => {
        throw new Error(`${err.message}; the projector said:\n${said()}`);
      });
      process.kill(pid, 'SIGCONT');
      frozen = undefined;
      const isEnd = (l: Line) => l.msg.startsWith('acknowledging works again after ');
      await waitFor(
        () => lines().some(isEnd),
        'the acker to log that it works again',
        30_000,
      ).catch((err: Error) => {
        throw new Error(`${err.message}; the projector said:\n${said()}`);
      });
      // The first end closes the freeze's spell and counts its failures; any after it are a
      // later spell's.
      const upToEnd = lines().slice(0, lines().findIndex(isEnd) + 1);
      const failed = upToEnd.filter((l) => l.msg.startsWith('acknowledging failed: '));
      const warned = failed.filter((l) => l.level === 40).map((l) => l.msg);
      // Told once per reason (a timeout, a closed connection); the retries between are debug.
      assert.deepEqual(warned, [...new Set(warned)], said());
      assert.ok(warned.length < failed.length, said());
      assert.equal(upToEnd.at(-1)?.failures, failed.length, said());
      assert.ok(
        warned.every((msg) => msg.endsWith('; retrying')),
        said(),
      );
      // A partition's lines name it once: its logger's own field, not again beside it.
      const twice = projector
        .output()
        .split('\n')
        .filter((line) => (line.match(/"partition":/g) ?? []).length > 1);
      assert.deepEqual(twice, []);
      // Each partition's reader says its Redis failure as Redis's, once per reason.
      for (let p = 0; p < h.config.partitions; p += 1) {
        const reads = readFailures()
          .filter((l) => l.partition === p)
          .map((l) => l.msg);
        assert.deepEqual(reads, [...new Set(reads)], said());
      }
      projector.child.kill('SIGTERM');
      await exited(projector.child);
    });

    void it('refuses writes and reads within the command timeout, however long the call before them waits', async () => {
      // Run alone (a name pattern), the test before it has set up nothing.
      h ??= await Harness.start({ role: 'api' });
      const configuration = await h.post('/instrument_configurations', {
        instrument: 'nircam',
        configuration: { filter: 'F200W' },
      });
      assert.equal(configuration.status, 201, configuration.text);
      const unit = await h.post('/executed_obs_units/start', {
        obs_unit_id: 'frozen-writes',
        instrument: 'nircam',
      });
      assert.equal(unit.status, 201, unit.text);
      const { id: configurationId } = configuration.body as { id: string };
      const { id: unitId, event_id: unitEvent } = unit.body as { id: string; event_id: string };
      const pid = Number(/^process_id:(\d+)/m.exec(await h.redis.info('server'))?.[1]);
      assert.ok(pid > 0);
      process.kill(pid, 'SIGSTOP');
      frozen = pid;
      // One after another, so each is asked while the process's call before it (the last
      // request's, or a background loop's) is still out on the frozen Redis.
      const key = () => ({ 'Idempotency-Key': `frozen-${randomInt(1e9)}` });
      const start = { obs_unit_id: 'frozen-writes-2', instrument: 'nircam' };
      const requests: [string, () => Promise<{ status: number; text: string }>][] = [
        ['a keyed start', () => h.post('/executed_obs_units/start', start, key())],
        ['another keyed start', () => h.post('/executed_obs_units/start', start, key())],
        [
          'a start naming a configuration',
          () =>
            h.post(
              '/executed_obs_units/start',
              { ...start, instrument_configuration_id: configurationId },
              key(),
            ),
        ],
        [
          'a finish',
          () => h.post(`/executed_obs_units/${unitId}/finish`, { status: 'success' }, key()),
        ],
        ['a merged read', () => h.get(`/executed_obs_units/${unitId}`)],
        ["an event's state", () => h.get(`/events/${unitEvent}`)],
        ['a list', () => h.get('/executed_obs_units?obs_unit_id=frozen-writes')],
        // Without a key the append itself is the first call: sent on its own, it is timed from
        // when it leaves, not from when the auto-pipeline before it is answered.
        ['a start without a key', () => h.post('/executed_obs_units/start', start)],
        ['another start without a key', () => h.post('/executed_obs_units/start', start)],
      ];
      const answers: { request: string; status: number; seconds: number; text: string }[] = [];
      try {
        for (const [request, send] of requests) {
          const askedAt = performance.now();
          const { status, text } = await send();
          answers.push({ request, status, seconds: (performance.now() - askedAt) / 1000, text });
        }
      } finally {
        process.kill(pid, 'SIGCONT');
        frozen = undefined;
      }
      const said = JSON.stringify(answers, null, 1);
      assert.deepEqual(
        answers.map((a) => a.status),
        requests.map(() => 503),
        said,
      );
      // The command timeout is 5 s. Counted from when each call left, not from when it was
      // asked, a request waited up to twice that.
      assert.ok(
        answers.every((a) => a.seconds < 7.5),
        said,
      );
    });
  });

  void describe('Redis restarted without its data (its volume lost)', () => {
    let h: Harness;
    after(async () => {
      // Unset when the test failed before starting its site, which then killed nothing.
      await h?.restartStackAndClose();
    });

    void it('applies what is written after it: the projector creates the consumer groups again', async () => {
      h = await Harness.start();
      const before = await h.post('/executed_obs_units/start', {
        obs_unit_id: 'before-loss',
        instrument: 'x',
      });
      assert.equal(before.status, 201, before.text);
      await waitForAllAcknowledged(h);
      await killRedis(h.stack.dir);
      rmSync(join(h.stack.dir, 'redis', 'appendonlydir'), { recursive: true, force: true });
      await stackUp(h.stackOptions());
      // Writes come back once the service has reconnected; the streams they create have no group.
      const written: { id: string; event_id: string }[] = [];
      await waitFor(async () => {
        const answer = await h.post('/executed_obs_units/start', {
          obs_unit_id: `after-loss-${written.length}`,
          instrument: 'x',
        });
        if (answer.status === 201) {
          written.push(answer.body);
        }
        return written.length >= 2 * h.config.partitions;
      }, 'writes to be taken again');
      const eventIds = written.map((w) => w.event_id);
      await waitForApplied(h, eventIds, 'every write after the loss to be applied', 60_000);
      await waitForAllAcknowledged(h, 60_000);
      // The site's name, lost with the data, is recorded again by the running projector: a shell
      // with another OUTPOST_SITE is refused, not taken in (drill 163: until a process restarted).
      await waitFor(
        async () => (await h.redis.get(siteNameKey(h.config.namespace))) === h.config.site,
        "the site's name to be recorded beside the log again",
      );
      // And `outpost pending` says the log began anew, which /health (healthy) cannot.
      const pending = await runCli(h, ['pending']);
      assert.equal(pending.code, 0, pending.stderr);
      assert.match(
        pending.stdout,
        /^this Redis log began at \S+, after another log of site test-site \(seen from \S+\): Redis restarted without its data/m,
      );
      const pendingJson = JSON.parse((await runCli(h, ['pending', '--json'])).stdout);
      assert.ok(
        Date.parse(pendingJson.log_restarted.began_at) >
          Date.parse(pendingJson.log_restarted.earlier_log_seen_at),
      );
      const stranger = await runCliWith(h.envOf({ OUTPOST_SITE: 'another-site' }), ['pending']);
      assert.equal(stranger.code, 1, stranger.stdout);
      assert.match(
        stranger.stderr,
        /this shell has OUTPOST_SITE=another-site, but the site's log is served as site test-site/,
      );
    });
  });

  void describe('Redis busy running a long script', () => {
    let h: Harness | undefined;
    after(async () => {
      try {
        await h?.redis.config('SET', 'busy-reply-threshold', '5000');
      } finally {
        await h?.close();
      }
    });

    void it('answers writes and reads 503 log_unavailable while Redis answers BUSY, not 500', async () => {
      const started = await Harness.start({ role: 'api' });
      h = started;
      const unit = (
        await started.post('/executed_obs_units/start', { obs_unit_id: 'b', instrument: 'x' })
      ).body;
      // Past 50 ms, Redis answers every other client BUSY until the script ends, three seconds on
      // (by Redis's clock; bounded by a count too, should that clock stand still in a script).
      await started.redis.config('SET', 'busy-reply-threshold', '50');
      const blocker = started.redis.duplicate();
      blocker.on('error', () => undefined);
      try {
        const busy = blocker.eval(
          `local t = redis.call('TIME')
           local stop = t[1] * 1000000 + t[2] + 3000000
           for i = 1, 1000000000 do
             if i % 100000 == 0 then
               t = redis.call('TIME')
               if t[1] * 1000000 + t[2] >= stop then return i end
             end
           end
           return 0`,
          0,
        );
        await waitFor(
          async () =>
            /^BUSY /.test(
              await started.redis.ping().then(
                () => '',
                (err: Error) => err.message,
              ),
            ),
          'Redis to answer BUSY',
        );
        const write = await started.post('/executed_obs_units/start', {
          obs_unit_id: 'c',
          instrument: 'x',
        });
        assert.equal(write.status, 503, write.text);
        assert.equal(write.body.error.code, 'log_unavailable');
        assert.ok(write.headers.get('retry-after'));
        const read = await started.get(`/executed_obs_units/${unit.id}`);
        assert.equal(read.status, 503, read.text);
        assert.equal(read.body.error.code, 'log_unavailable');
        await busy;
      } finally {
        blocker.disconnect();
      }
    });
  });

  void describe("Redis's fsync turned off under a running service (CONFIG SET appendfsync no)", () => {
    let h: Harness | undefined;
    after(async () => {
      try {
        await h?.redis.config('SET', 'appendfsync', 'always');
      } finally {
        await h?.close();
      }
    });

    void it('refuses writes and names the setting, /health and the gauge say so, and writes resume once it is back', async () => {
      const started = await Harness.start();
      h = started;
      const accepted = new Set<string>();
      const start = async (obsUnitId: string) => {
        const answer = await started.post('/executed_obs_units/start', {
          obs_unit_id: obsUnitId,
          instrument: 'x',
        });
        if (answer.status === 201) {
          accepted.add(answer.body.event_id);
        }
        return answer;
      };
      assert.equal((await start('before-fsync-off')).status, 201);

      // The start-up check passed; the setting changes under the running service.
      await started.redis.config('SET', 'appendfsync', 'no');
      let refused: Awaited<ReturnType<typeof start>> | undefined;
      let tries = 0;
      await waitFor(async () => {
        tries += 1;
        refused = await start(`while-fsync-off-${tries}`);
        return refused.status === 503;
      }, 'writes to be refused');
      assert.equal(refused?.body.error.code, 'log_unavailable', refused?.text);
      assert.match(
        refused?.body.error.message ?? '',
        /^the local log would not keep writes through a crash: Redis runs with appendfsync no: .*set appendfsync always/,
      );
      assert.equal(refused?.headers.get('retry-after'), '5');
      const health = await started.get('/health');
      assert.equal(health.status, 503, health.text);
      assert.equal(health.body.status, 'unhealthy');
      assert.equal(health.body.redis, 'connected');
      assert.match(
        health.body.transaction_buffer.write_error ?? '',
        /^Redis runs with appendfsync no/,
      );
      assert.equal(await scrapeMetric(started.url, 'outpost_log_writable'), 0);
      // And so does `outpost pending`, which had said all was well (drill 163).
      const pending = await runCli(started, ['pending']);
      assert.equal(pending.code, 0, pending.stderr);
      assert.match(
        pending.stdout,
        /^writes are refused: Redis runs with appendfsync no: .*; writers get 503 log_unavailable until then/m,
      );
      const pendingJson = await runCli(started, ['pending', '--json']);
      assert.match(
        JSON.parse(pendingJson.stdout).log_write_error,
        /^Redis runs with appendfsync no/,
      );

      await started.redis.config('SET', 'appendfsync', 'always');
      await waitFor(async () => (await start('after-fsync-on')).status === 201, 'writes to resume');
      const recovered = await started.get('/health');
      assert.equal(recovered.body.transaction_buffer.write_error, null);
      assert.equal(await scrapeMetric(started.url, 'outpost_log_writable'), 1);
      // Exactly the writes answered 201 reach the main database: the refused ones left nothing.
      await audit(started, accepted);
    });
  });

  void describe('Redis refusing every write after a background save failed (a full disk)', () => {
    let h: Harness | undefined;
    after(async () => {
      try {
        // Redis takes writes again whatever the test reached, for the files after this one.
        await h?.redis.config('SET', 'rdb-key-save-delay', '0');
        await h?.redis.config('SET', 'save', '');
      } finally {
        await h?.close();
      }
    });

    void it("refuses writes and an operator's replay with Redis's reason, /health says so, and every write lands once Redis saves again", async () => {
      const started = await Harness.start();
      h = started;
      const load = started.steadyLoad(25, 'misconf');
      await waitFor(() => load.accepted() >= 25, 'writes to flow');
      assert.equal(await scrapeMetric(started.url, 'outpost_log_writable'), 1);
      const answeredBefore = {
        authorization: `Bearer ${started.config.adminToken}`,
        'idempotency-key': 'dry-run-before-misconf',
      };
      const dryRun = { from: '0', dry_run: true };
      const answered = await started.request('POST', '/admin/replay', dryRun, answeredBefore);
      assert.equal(answered.status, 200, answered.text);
      const keyedWrite = { 'idempotency-key': 'write-before-misconf' };
      const keyedBody = { obs_unit_id: 'keyed-before-misconf', instrument: 'x' };
      const written = await started.post('/executed_obs_units/start', keyedBody, keyedWrite);
      assert.equal(written.status, 201, written.text);
      await failBackgroundSave(started);

      const health = await started.get('/health');
      assert.equal(health.status, 503, 'writes cannot be accepted');
      assert.equal(health.body.status, 'unhealthy');
      assert.equal(health.body.redis, 'connected', 'Redis answers; it refuses writes');
      assert.match(
        health.body.transaction_buffer.write_error ?? '',
        /^MISCONF .*unable to persist/,
      );
      assert.equal(health.body.transaction_buffer.full, false);
      assert.equal(await scrapeMetric(started.url, 'outpost_log_writable'), 0);

      const refused = await started.post('/executed_obs_units/start', {
        obs_unit_id: 'refused',
        instrument: 'x',
      });
      assert.equal(refused.status, 503, refused.text);
      assert.equal(refused.body.error.code, 'log_unavailable');
      assert.match(
        refused.body.error.message,
        /^the local log cannot save writes: Redis refuses them \(MISCONF .*\); free disk space/,
      );
      assert.equal(refused.headers.get('retry-after'), '5');
      // The operator's first look names Redis, not the projector or the main database.
      const pending = await runCli(started, ['pending']);
      assert.equal(pending.code, 0, pending.stderr);
      assert.match(
        pending.stdout,
        /^the local log cannot save writes: Redis refuses them \(MISCONF .*; until then the projector can neither read new entries nor record or acknowledge/m,
      );
      const pendingJson = await runCli(started, ['pending', '--json']);
      assert.match(JSON.parse(pendingJson.stdout).log_write_error ?? '', /^MISCONF /);
      // An operator's action under an Idempotency-Key claims it in Redis first: the same answer,
      // not an internal error.
      const admin = {
        authorization: `Bearer ${started.config.adminToken}`,
        'idempotency-key': 'replay-during-misconf',
      };
      const replayed = await started.request('POST', '/admin/replay', { from: '0' }, admin);
      assert.equal(replayed.status, 503, replayed.text);
      assert.match(replayed.body.error.message, /^the local log cannot save writes/);
      // One Redis answered before is answered again: reading still works.
      const again = await started.request('POST', '/admin/replay', dryRun, answeredBefore);
      assert.equal(again.status, 200, again.text);
      assert.equal(again.headers.get('idempotent-replayed'), 'true');
      assert.deepEqual(again.body, answered.body);
      // And so is a write accepted before, retried under its key.
      const rewritten = await started.post('/executed_obs_units/start', keyedBody, keyedWrite);
      assert.equal(rewritten.status, 201, rewritten.text);
      assert.equal(rewritten.headers.get('idempotent-replayed'), 'true');
      assert.deepEqual(rewritten.body, written.body);
      // Restarted meanwhile (an operator's first move), the service comes up and says why.
      const restarted = await started.startService('api');
      const restartedHealth = await fetch(`http://127.0.0.1:${restarted.port}/health`);
      assert.equal(restartedHealth.status, 503);
      const { transaction_buffer } = (await restartedHealth.json()) as {
        transaction_buffer: { write_error: string | null };
      };
      assert.match(transaction_buffer.write_error ?? '', /^MISCONF /);
      await started.stopService(restarted);

      // The disk has room again and a save succeeds: Redis takes writes at once.
      await started.redis.config('SET', 'rdb-key-save-delay', '0');
      await started.redis.bgsave();
      await waitFor(
        async () => (await started.get('/health')).status === 200,
        'Redis to take writes again',
      );
      const recovered = await started.get('/health');
      assert.equal(recovered.body.transaction_buffer.write_error, null);
      const pendingAfter = await runCli(started, ['pending', '--json']);
      assert.equal(JSON.parse(pendingAfter.stdout).log_write_error, null);
      assert.equal(await scrapeMetric(started.url, 'outpost_log_writable'), 1);
      const sentBefore = load.accepted();
      await waitFor(() => load.accepted() >= sentBefore + 25, 'writes to flow again');
      const { accepted, failures, sent } = await load.stop();
      assert.deepEqual(failures, [], 'every refused write landed once retried');
      assert.equal(accepted.size, sent);
      await waitForAllAcknowledged(started);
      await audit(started, new Set([...accepted, written.body.event_id]));
    });
  });

  void describe('two projectors, one frozen past its lease', () => {
    let h: Harness;
    after(() => h?.close());

    void it('refuses the frozen one, applies nothing twice, and keeps per-aggregate order', async () => {
      h = await Harness.start({ role: 'api' });
      const a = await h.spawnServe('projector', { OUTPOST_CONSUMER: 'projector-a' });
      const b = await h.spawnServe('projector', { OUTPOST_CONSUMER: 'projector-b' });
      const owners = () => leaseOwners(h);
      await waitFor(async () => {
        const now = await owners();
        return (
          now.length === h.config.partitions &&
          now.includes('projector-a') &&
          now.includes('projector-b')
        );
      }, 'both projectors to hold partitions');
      // A projector-only process serves operations endpoints, so probes and Prometheus see it.
      for (const projector of [a, b]) {
        await projector.ready();
        const health = (await (await fetch(`${projector.url}/health`)).json()) as { role: string };
        assert.equal(health.role, h.config.role);
        const write = await fetch(`${projector.url}/executed_obs_units/start`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ obs_unit_id: 'not-here', instrument: 'x' }),
        });
        assert.equal(write.status, 404, 'a projector-only process takes no writes');
      }

      let stopped = false;
      const lifecycles = (async () => {
        const results: string[] = [];
        let n = 0;
        while (!stopped) {
          n += 1;
          const unit = await h.post('/executed_obs_units/start', {
            obs_unit_id: `order-${n}`,
            instrument: 'x',
          });
          results.push(unit.body.event_id);
          for (const step of [{ status: 'paused' }, { status: 'running' }, { notes: `n${n}` }]) {
            results.push(
              (await h.request('PATCH', `/executed_obs_units/${unit.body.id}`, step)).body.event_id,
            );
          }
          results.push(
            (await h.post(`/executed_obs_units/${unit.body.id}/finish`, { status: 'success' })).body
              .event_id,
          );
        }
        return results;
      })();
      await waitFor(
        async () => (await h.mainRows('SELECT 1 FROM events LIMIT 20')).length === 20,
        'work to flow',
      );
      await waitFor(
        async () => (await appliedBy(a)) > 0 && (await appliedBy(b)) > 0,
        "each projector's own /metrics to count the events it applied",
      );

      a.child.kill('SIGSTOP');
      await waitFor(
        async () => (await owners()).every((o) => o === 'projector-b'),
        'B to take over every partition',
        30_000,
      );
      await waitFor(
        async () => (await h.mainRows('SELECT 1 FROM events')).length > 200,
        "B to apply A's share",
      );
      a.child.kill('SIGCONT');
      await waitFor(
        () => /fenced|lease may have lapsed|lease lost/.test(a.output()),
        'the resumed projector to notice it lost its leases',
        30_000,
      );
      await waitFor(
        async () => (await owners()).includes('projector-a'),
        'A to rejoin and take its share again',
        30_000,
      );
      stopped = true;
      const accepted = new Set(await lifecycles);
      await audit(h, accepted);
      const outOfOrder = await h.mainRows(
        `SELECT aggregate_id FROM (
           SELECT aggregate_id, seq,
                  split_part(stream_entry_id, '-', 1)::bigint AS ms, split_part(stream_entry_id, '-', 2)::bigint AS n,
                  lag(split_part(stream_entry_id, '-', 1)::bigint) OVER w AS prev_ms,
                  lag(split_part(stream_entry_id, '-', 2)::bigint) OVER w AS prev_n
             FROM events WINDOW w AS (PARTITION BY aggregate_id ORDER BY seq)) s
          WHERE (prev_ms, prev_n) > (ms, n)`,
      );
      assert.deepEqual(
        outOfOrder,
        [],
        'every aggregate applied in the order the site accepted its events',
      );
      const finished = await h.mainRows<{ n: number }>(
        "SELECT count(*)::int AS n FROM executed_obs_units WHERE status <> 'success'",
      );
      assert.equal(finished[0]?.n, 0);
      a.child.kill('SIGTERM');
      b.child.kill('SIGTERM');
      await Promise.all([exited(a.child), exited(b.child)]);
    });
  });

  void describe('a read a former owner sent before the takeover, reaching Redis after it', () => {
    let h: Harness;
    after(() => h?.close());

    void it('takes the entries it took back at once, and applies them before later ones', async () => {
      // The idle reclaim, which would take the entry back after a minute, is not what brings it.
      h = await Harness.start({ role: 'api', config: { claimIdleMs: 60_000 } });
      const { projector: heir, id } = await runningAUnit(h, 'heir', 'stranded');

      // The heir stops between reads, so none of its reads is blocked in Redis.
      heir.child.kill('SIGSTOP');
      try {
        await noReadBlocked(h);
        const first = await h.request('PATCH', `/executed_obs_units/${id}`, { notes: 'first' });
        assert.equal(first.status, 202, first.text);
        // The former owner's read, held in its client until now, takes the patch.
        const stream = eventLogOf(h).keys(partitionOf(id, h.config.partitions)).stream;
        assert.equal(
          (await readAsFormerOwner(h, stream)).length,
          1,
          'the former owner took the patch',
        );
        const second = await h.request('PATCH', `/executed_obs_units/${id}`, { notes: 'second' });
        assert.equal(second.status, 202, second.text);
        const finish = await h.post(`/executed_obs_units/${id}/finish`, { status: 'success' });
        assert.equal(finish.status, 202, finish.text);
      } finally {
        heir.child.kill('SIGCONT');
      }

      await patchedInOrder(h, id, 'first');
      assert.match(heir.output(), /claimed entries another consumer read after this one took/);
      heir.child.kill('SIGTERM');
      await exited(heir.child);
    });
  });

  void describe('an entry a former owner read after the takeover, then deleted from the stream by hand', () => {
    let h: Harness;
    after(() => h?.close());

    void it('is named by the owner that claims the rest, not dropped without a word', async () => {
      h = await Harness.start({ role: 'api', config: { claimIdleMs: 60_000 } });
      const { projector: owner, id } = await runningAUnit(h, 'owner', 'read-then-deleted');
      owner.child.kill('SIGSTOP');
      let deletedId = '';
      try {
        await noReadBlocked(h);
        const patch = await h.request('PATCH', `/executed_obs_units/${id}`, { notes: 'deleted' });
        assert.equal(patch.status, 202, patch.text);
        const stream = eventLogOf(h).keys(partitionOf(id, h.config.partitions)).stream;
        const taken = await readAsFormerOwner(h, stream);
        assert.equal(taken.length, 1, 'the former owner took the patch');
        deletedId = taken[0] as string;
        // What an operator freeing memory with XDEL does to one of them.
        assert.equal(await h.redis.xdel(stream, deletedId), 1);
      } finally {
        owner.child.kill('SIGCONT');
      }
      await waitFor(
        async () => (await deliveredTo(h, 'former-owner')).length === 0,
        "the owner to claim the former owner's entries",
      );
      const said = () =>
        owner
          .output()
          .split('\n')
          .find((line) =>
            line.includes('claimed from another consumer were deleted from the stream'),
          );
      await waitFor(() => said() !== undefined, 'the owner to say what it found deleted').catch(
        (err: Error) => {
          throw new Error(`${err.message}; it said:\n${owner.output()}`);
        },
      );
      assert.ok(said()?.includes(deletedId), said());
      owner.child.kill('SIGTERM');
      await exited(owner.child);
    });
  });

  void describe('an outpost command whose link to Redis stops delivering part-way', () => {
    let h: Harness;
    let proxy: BlackholeProxy;
    after(async () => {
      await h?.close();
      await proxy?.close();
    });

    void it('names Redis and its address, not only that a command timed out', async () => {
      h = await Harness.start({ role: 'api' });
      // In several partitions, so the scan reads on after its first progress line.
      const started = await Promise.all(
        Array.from({ length: 16 }, (_, i) =>
          h.post('/executed_obs_units/start', { obs_unit_id: `stalled-${i}`, instrument: 'x' }),
        ),
      );
      assert.deepEqual(
        started.map((r) => r.status),
        started.map(() => 201),
      );
      proxy = await BlackholeProxy.start(testStack().redisPort);
      const env = h.envOf();
      const redisUrl = proxy.reroute(`${env.REDIS_URL}/`);
      // Connected and ready, the command's next read goes into a link that drops every packet.
      const cli = await runCliWith(
        { ...env, REDIS_URL: redisUrl },
        ['replay', '--from', '0', '--dry-run', '--json'],
        { stderr: (soFar) => soFar.includes('"progress"') && proxy.blackhole() },
      );
      proxy.heal();
      assert.equal(cli.code, 1, cli.stdout);
      assert.match(
        cli.stderr,
        new RegExp(
          `^outpost: cannot reach Redis at 127\\.0\\.0\\.1:${proxy.port} \\(Command timed out\\)`,
          'm',
        ),
      );
    });

    void it('says a Redis that takes the connection and answers nothing is stalled, not loading', async () => {
      // Run alone (a name pattern), the test before it has set up nothing.
      h ??= await Harness.start({ role: 'api' });
      proxy ??= await BlackholeProxy.start(testStack().redisPort);
      // As a Redis stopped with SIGSTOP: the kernel takes the connection, nothing answers.
      proxy.blackhole();
      try {
        const env = h.envOf();
        const cli = await runCliWith({ ...env, REDIS_URL: proxy.reroute(`${env.REDIS_URL}/`) }, [
          'pending',
        ]);
        assert.equal(cli.code, 1, cli.stdout);
        assert.match(
          cli.stderr,
          new RegExp(
            `^outpost: waiting for Redis at 127\\.0\\.0\\.1:${proxy.port} to be ready \\(it took the connection but answers nothing: stopped, or stalled\\?\\)$`,
            'm',
          ),
        );
        assert.doesNotMatch(cli.stderr, /loading/);
      } finally {
        proxy.heal();
      }
    });
  });

  void describe("a projector's read whose reply is lost with its connection, and which its client sends again", () => {
    let h: Harness;
    let proxy: BlackholeProxy;
    after(async () => {
      await h?.close();
      await proxy?.close();
    });

    void it('reads its own pending entries again, in order, instead of applying what the second run took first', async () => {
      // The idle reclaim, which would take the lost read's entry back after a minute, is not
      // what brings it.
      h = await Harness.start({ role: 'api', config: { claimIdleMs: 60_000 } });
      proxy = await BlackholeProxy.start(testStack().redisPort);
      await h.startService('projector', { redisUrl: `redis://127.0.0.1:${proxy.port}` });
      const start = await h.post('/executed_obs_units/start', {
        obs_unit_id: 'resent-read',
        instrument: 'nircam',
      });
      assert.equal(start.status, 201);
      const { id, event_id: startEvent } = start.body as { id: string; event_id: string };
      await waitFor(
        async () =>
          ((await h.get(`/events/${startEvent}`)).body as { state?: string }).state === 'confirmed',
        'the start to be confirmed',
      );

      // Redis runs the read that takes the first patch (into the projector's pending list), and
      // its reply is lost with the connection. ioredis sends the read again once it reconnects,
      // and that run takes only what comes after.
      const firstNotes = `first-${randomInt(1e9)}`;
      proxy.loseReplyWithConnection((chunk) => chunk.includes(firstNotes));
      const first = await h.request('PATCH', `/executed_obs_units/${id}`, { notes: firstNotes });
      assert.equal(first.status, 202, first.text);
      await waitFor(
        () => proxy.repliesLostWithConnection === 1,
        'the read that took the first patch to lose its reply',
      );
      const second = await h.request('PATCH', `/executed_obs_units/${id}`, { notes: 'second' });
      assert.equal(second.status, 202, second.text);
      const finish = await h.post(`/executed_obs_units/${id}/finish`, { status: 'success' });
      assert.equal(finish.status, 202, finish.text);

      await patchedInOrder(h, id, firstNotes);
    });
  });

  void describe("Redis's address moving to a replica and back to the primary (a failover under a stable name)", () => {
    let h: Harness | undefined;
    let proxy: BlackholeProxy | undefined;
    let replica: ChildProcess | undefined;
    let replicaDir: string | undefined;
    after(async () => {
      try {
        await h?.close();
        await proxy?.close();
      } finally {
        replica?.kill('SIGKILL');
        if (replicaDir !== undefined) {
          rmSync(replicaDir, { recursive: true, force: true });
        }
      }
    });

    void it('reconnects on READONLY, and takes writes again and projects them once the address leads to the primary', async () => {
      const primaryPort = testStack().redisPort;
      // The only projector is a process of its own behind the proxy: nothing else projects.
      const harness = await Harness.start({ role: 'api' });
      h = harness;
      const replicaPort = await freePort();
      replicaDir = mkdtempSync(join(tmpdir(), 'outpost-redis-replica-'));
      // A durable replica, as a failover would leave one: the durability check passes on it.
      replica = spawn('redis-server', [
        ...['--port', String(replicaPort), '--bind', '127.0.0.1', '--dir', replicaDir],
        ...['--replicaof', '127.0.0.1', String(primaryPort), '--save', ''],
        ...['--appendonly', 'yes', '--appendfsync', 'always'],
      ]);
      killOnExit(replica);
      const replicaClient = new IORedis(replicaPort, '127.0.0.1', { lazyConnect: true });
      // Refused until the server listens: waitFor asks again.
      replicaClient.on('error', () => undefined);
      try {
        await waitFor(
          async () => /^master_link_status:up/m.test(await replicaClient.info('replication')),
          'the replica to sync',
        );
      } finally {
        replicaClient.disconnect();
      }
      proxy = await BlackholeProxy.start(primaryPort);
      const redisUrl = `redis://127.0.0.1:${proxy.port}`;
      const api = await harness.startService('api', { redisUrl });
      await harness.startService('projector', {
        redisUrl,
        consumer: 'projector-behind-the-address',
      });
      const start = (name: string) =>
        fetch(`http://127.0.0.1:${api.port}/executed_obs_units/start`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ obs_unit_id: name, instrument: 'x' }),
        });
      const confirmed = async (answer: Response, what: string) => {
        const { event_id: eventId } = (await answer.json()) as { event_id: string };
        await waitFor(
          async () =>
            ((await harness.get(`/events/${eventId}`)).body as { state?: string }).state ===
            'confirmed',
          what,
          60_000,
        );
      };
      const before = await start('before');
      assert.equal(before.status, 201);
      await confirmed(before, 'the write before the failover to be projected');

      // The address leads to the replica, and the service's connection is made again there.
      proxy.retarget(replicaPort);
      proxy.dropConnections();
      let refusal = '';
      await waitFor(async () => {
        const answer = await start('on-the-replica');
        refusal = await answer.text();
        return answer.status === 503 && /READONLY/.test(refusal);
      }, 'writes to be refused by the replica');
      assert.match(refusal, /names a read-only replica/);

      // Back to the primary, with no connection dropped: only a connection made again reaches it.
      proxy.retarget(primaryPort);
      let after: Response | undefined;
      await waitFor(async () => {
        after = await start('after');
        return after.status === 201;
      }, 'writes to be taken again');
      // The projector process's connections, its partitions' readers among them, are made again too.
      await confirmed(after as Response, 'the write after the failover to be projected');
    });
  });

  void describe("an operator's action whose Idempotency-Key claim loses its reply with the connection, which ioredis sends again", () => {
    let h: Harness | undefined;
    let proxy: BlackholeProxy | undefined;
    after(async () => {
      await h?.close();
      await proxy?.close();
    });

    void it('runs the action, instead of taking its own claim for an earlier run still going', async () => {
      h = await Harness.start({ role: 'projector' });
      proxy = await BlackholeProxy.start(testStack().redisPort);
      const api = await h.startService('api', { redisUrl: `redis://127.0.0.1:${proxy.port}` });
      // Redis runs the claim (SET … NX GET, nil: the key was free) and its reply is lost with
      // the connection; ioredis sends the claim again, which now finds the value it set itself.
      proxy.loseReplyTo(
        (chunk) => chunk.includes(':admin-idem:') && chunk.includes('NX'),
        (chunk) => chunk.toString().endsWith('$-1\r\n'),
      );
      const answer = await fetch(`http://127.0.0.1:${api.port}/admin/replay`, {
        method: 'POST',
        headers: {
          authorization: `Bearer ${h.config.adminToken}`,
          'content-type': 'application/json',
          'idempotency-key': 'claim-sent-twice',
        },
        body: JSON.stringify({ from: '0', dry_run: true }),
      });
      const text = await answer.text();
      assert.equal(proxy.repliesLostWithConnection, 1, 'the claim lost its reply');
      assert.equal(answer.status, 200, text);
      assert.equal(answer.headers.get('idempotent-replayed'), null);
    });
  });

  void describe('a projector taking partitions over while its link to Redis drops packets', () => {
    let h: Harness;
    let proxy: BlackholeProxy;
    after(async () => {
      // Each is unset when the test failed before making it.
      proxy?.heal();
      await h?.close();
      await proxy?.close();
    });

    void it('starts each partition it took once Redis answers, not just holds its lease', async () => {
      // A lease that outlives a Redis command's 5 s timeout, as in production (30 s): a shorter
      // one would lapse while the claim hangs, and its loss would restart the partition anyway.
      h = await Harness.start({ role: 'api', config: { claimIdleMs: 15_000 } });
      proxy = await BlackholeProxy.start(testStack().redisPort);
      const a = await h.startService('projector', { consumer: 'projector-a' });
      const b = await h.startService('projector', {
        consumer: 'projector-b',
        redisUrl: `redis://127.0.0.1:${proxy.port}`,
      });
      const owners = () => leaseOwners(h);
      // What B went through, each change once with the seconds since A left: a take that does
      // not come then says where B's rounds were.
      const seen: string[] = [];
      let leftAt = performance.now();
      const noteB = (now: readonly (string | null)[]) => {
        const stats = b.projector?.stats();
        const line = `partitions ${stats?.partitions.join(',')}, leases ${now.join(',')}: ${stats?.lastError ?? 'no error'}`;
        if (!seen.at(-1)?.endsWith(line)) {
          seen.push(`${((performance.now() - leftAt) / 1000).toFixed(1)} s ${line}`);
        }
      };
      await waitFor(async () => {
        const now = await owners();
        return now.includes('projector-a') && now.includes('projector-b');
      }, 'both projectors to hold partitions');

      // B's link to Redis goes silent, then A leaves: B takes A's partitions over, and claiming
      // the entries A left pending times out.
      const held = (await owners()).flatMap((owner, partition) =>
        owner === 'projector-a' ? [partition] : [],
      );
      proxy.blackhole();
      await h.stopService(a);
      leftAt = performance.now();
      await waitFor(
        async () => !(await owners()).includes('projector-a'),
        "A's leases to be released",
      );
      // B's next lease round (every 5 s) takes one of A's partitions, and claiming what A left
      // pending times out (5 s) on the silent link: the lease is given back, to be taken again.
      // Each round of B's also waits out its site-claim's Redis call (5 s) on the silent link, so
      // under a loaded CI a take can come well after 20 s (a clean-clone CI missed 30 s once).
      // B took none in 60 s in three full runs. Likely why (by reading, not seen): each of B's
      // rounds waited up to 10 s for the log id and 10 s for a claim, behind stalled
      // auto-pipelines, past B's own leases (15 s here); one of those, lapsed and first in B's
      // order, then failed to start and ended every round before A's were tried. Both calls now
      // take 5 s at most, and a partition that failed to start comes last in the next round.
      let taken: number | undefined;
      const sayingWhatBDid = (err: Error) => {
        throw new Error(`${err.message}; B, since A left:\n${seen.join('\n')}`, { cause: err });
      };
      await waitFor(
        async () => {
          const now = await owners();
          noteB(now);
          taken = held.find((partition) => now[partition] === 'projector-b');
          return taken !== undefined;
        },
        "B to take one of A's partitions",
        60_000,
      ).catch(sayingWhatBDid);
      await waitFor(
        async () => {
          const now = await owners();
          noteB(now);
          return now[taken as number] !== 'projector-b';
        },
        'B to give it back once claiming its entries timed out',
        30_000,
      ).catch(sayingWhatBDid);
      proxy.heal();

      const accepted = new Set<string>();
      const partitionsWritten = new Set<number>();
      for (let n = 0; partitionsWritten.size < h.config.partitions; n += 1) {
        const unit = (
          await h.post('/executed_obs_units/start', { obs_unit_id: `taken-${n}`, instrument: 'x' })
        ).body;
        accepted.add(unit.event_id);
        partitionsWritten.add(partitionOf(unit.id, h.config.partitions));
      }
      await waitForAllAcknowledged(h, 30_000);
      await audit(h, accepted);
      assert.deepEqual(
        await owners(),
        Array.from({ length: h.config.partitions }, () => 'projector-b'),
      );
    });
  });
});
