import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { parseLsn } from '../src/db/lsn.ts';
import type { Envelope } from '../src/domain/events.ts';
import { newIdInPartition, partitionForText, partitionOf } from '../src/domain/ids.ts';
import {
  decodeEntry,
  encodeEntryFields,
  encodeFieldPerProperty,
  entryRecord,
  type RawEntry,
} from '../src/log/codec.ts';
import { compareEntryIds } from '../src/log/entry-id.ts';
import { EventLog } from '../src/log/event-log.ts';
import { CONSUMER_GROUP, partitionCountKey, processRosterKey } from '../src/log/keys.ts';
import { audit, eventLogOf, streamEventIds, waitForAllAcknowledged } from './harness/audit.ts';
import { runCli, runCliWith } from './harness/cli.ts';
import { Harness, scrapeMetric, waitFor, withField } from './harness/harness.ts';
import { inBatches } from './harness/load.ts';

const TOKEN = 'test-admin-token';
const auth = (token: string) => ({ authorization: `Bearer ${token}` });

/**
 * An event of `partition` as something past the API would append it: a build of another version,
 * or a hand. A new aggregate unless `aggregate_id` names one.
 */
const eventIn = (
  h: Harness,
  partition: number,
  event: {
    type: string;
    aggregate_type: string;
    data: object;
    aggregate_id?: string;
    version?: number;
  },
): Envelope =>
  ({
    event_id: newIdInPartition(partition, h.config.partitions),
    aggregate_id: event.aggregate_id ?? newIdInPartition(partition, h.config.partitions),
    aggregate_type: event.aggregate_type,
    type: event.type,
    version: event.version ?? 1,
    site: h.config.site,
    accepted_at: Date.now(),
    data: event.data,
  }) as unknown as Envelope;

/** A PATCH of a unit's notes that the main database refuses until it is dead-lettered; then allowed again. */
const deadLetteredPatch = async (h: Harness, unitId: string) => {
  await h.main.query(
    "ALTER TABLE executed_obs_units ADD CONSTRAINT no_poison CHECK (notes IS DISTINCT FROM 'poison') NOT VALID",
  );
  const poison = await h.request('PATCH', `/executed_obs_units/${unitId}`, { notes: 'poison' });
  await waitFor(
    async () => (await h.get(`/events/${poison.body.event_id}`)).body?.state === 'dead',
    'the poison patch to be dead-lettered',
  );
  await h.main.query('ALTER TABLE executed_obs_units DROP CONSTRAINT no_poison');
  return poison;
};

/**
 * A unit whose patch was dead-lettered and discarded, then patched again (notes 'next') and that
 * patch confirmed: applied, not held behind an event no list shows.
 */
const patchedPastADiscardedLetter = async (h: Harness, obsUnitId: string) => {
  const unit = (
    await h.post('/executed_obs_units/start', { obs_unit_id: obsUnitId, instrument: 'x' })
  ).body;
  const poison = await deadLetteredPatch(h, unit.id);
  const discarded = await h.request(
    'DELETE',
    `/admin/dead-letters/${poison.body.event_id}`,
    { reason: 'a wrong note, not worth keeping' },
    auth(TOKEN),
  );
  assert.equal(discarded.status, 200, discarded.text);
  const next = await h.request('PATCH', `/executed_obs_units/${unit.id}`, { notes: 'next' });
  assert.equal(await settledState(h, next.body.event_id), 'confirmed');
  return { unit, poison };
};

/**
 * A site of its own for the describe it is called in, whose service only takes writes (projectors
 * are started by the tests), with the poison constraint dropped when it is done.
 */
const apiOnlySite = (): (() => Harness) => {
  let h: Harness | undefined;
  before(async () => {
    h = await Harness.start({ role: 'api' });
  });
  after(async () => {
    await h?.main.query('ALTER TABLE executed_obs_units DROP CONSTRAINT IF EXISTS no_poison');
    await h?.main.query('ALTER TABLE events DROP CONSTRAINT IF EXISTS no_poison_event');
    await h?.close();
  });
  return () => {
    assert.ok(h, 'the site started');
    return h;
  };
};

/** POST /admin/dead-letters/{id}/retry, as an operator would. */
const retryLetter = (h: Harness, eventId: string) =>
  h.request('POST', `/admin/dead-letters/${eventId}/retry`, undefined, auth(TOKEN));

/** The state an event settles in: confirmed, or dead. */
const settledState = async (h: Harness, eventId: string): Promise<string | undefined> => {
  let state: string | undefined;
  await waitFor(async () => {
    state = (await h.get(`/events/${eventId}`)).body?.state;
    return state === 'confirmed' || state === 'dead';
  }, `event ${eventId} to be settled`);
  return state;
};

/**
 * A unit started and confirmed, then its projector stopped: `patch` builds an update of it to
 * append past the API, `appendUnreadable` writes one with data no JSON parser takes, and
 * `discardLetters` discards whatever of the given events the dead letters hold.
 */
const unitForUnreadablePatches = async (h: Harness, obsUnitId: string) => {
  const log = eventLogOf(h);
  const first = await h.startService('projector');
  const unit = (
    await h.post('/executed_obs_units/start', { obs_unit_id: obsUnitId, instrument: 'x' })
  ).body;
  assert.equal(await settledState(h, unit.event_id), 'confirmed');
  await h.stopService(first);
  const partition = partitionOf(unit.id, h.config.partitions);
  return {
    log,
    unit,
    partition,
    patch: (notes: string) =>
      eventIn(h, partition, {
        type: 'ExecutedObsUnitUpdated',
        aggregate_type: 'executed_obs_unit',
        aggregate_id: unit.id,
        data: { notes },
      }),
    appendUnreadable: async (event: Envelope) => {
      // Written past the API, a field per property, with data no JSON parser takes.
      const unreadable = withField(encodeFieldPerProperty(event), 'data', '{not json');
      await log.redis.xadd(log.keys(partition).stream, '*', ...unreadable);
    },
    discardLetters: async (events: readonly Envelope[]) => {
      for (const event of events) {
        await h.request(
          'DELETE',
          `/admin/dead-letters/${event.event_id}`,
          { reason: 'test of an undecodable entry' },
          auth(TOKEN),
        );
      }
    },
  };
};

void describe('admin and incident tools', () => {
  let h: Harness;
  before(async () => {
    h = await Harness.start();
  });
  after(async () => {
    await h.main.query('ALTER TABLE executed_obs_units DROP CONSTRAINT IF EXISTS no_poison');
    await h?.close();
  });

  /** A unit start that the main database refuses, so it ends as a dead letter; then allowed again. */
  const deadLetteredStart = async (obsUnitId: string) => {
    await h.main.query(
      "ALTER TABLE executed_obs_units ADD CONSTRAINT no_poison CHECK (instrument <> 'poison') NOT VALID",
    );
    const poison = (
      await h.post('/executed_obs_units/start', { obs_unit_id: obsUnitId, instrument: 'poison' })
    ).body as { id: string; event_id: string };
    await waitFor(
      async () => (await h.get(`/events/${poison.event_id}`)).body?.state === 'dead',
      'dead-lettered',
    );
    await h.main.query('ALTER TABLE executed_obs_units DROP CONSTRAINT no_poison');
    return poison;
  };

  const unknownId = '01900000-0000-7000-8000-000000000000';
  const adminCalls: [string, string, unknown?][] = [
    ['GET', '/admin/pending'],
    ['GET', '/admin/dead-letters'],
    ['GET', `/admin/dead-letters/${unknownId}`],
    ['POST', `/admin/dead-letters/${unknownId}/retry`],
    ['DELETE', `/admin/dead-letters/${unknownId}?reason=test`],
    ['DELETE', `/admin/dead-letters/${unknownId}`],
    ['GET', '/admin/nothing-here'],
  ];

  void it('answers 401 without a token and 403 with a wrong one on every admin endpoint, before anything else', async () => {
    for (const [method, path] of adminCalls) {
      const missing = await h.request(method, path);
      assert.equal(missing.status, 401, `${method} ${path}`);
      assert.equal(missing.body.error.code, 'unauthorized');
      const wrong = await h.request(method, path, undefined, auth(`${TOKEN}x`));
      assert.equal(wrong.status, 403, `${method} ${path}`);
      assert.equal(wrong.body.error.code, 'forbidden');
      const notBearer = await h.request(method, path, undefined, { authorization: TOKEN });
      assert.equal(notBearer.status, 401, `${method} ${path}`);
    }
  });

  void it('lets the right token through on every admin endpoint', async () => {
    // An unknown dead letter is 404 even when the discard also lacks its reason.
    const expected = [200, 200, 404, 404, 404, 404, 404];
    for (const [i, [method, path]] of adminCalls.entries()) {
      const result = await h.request(method, path, undefined, auth(TOKEN));
      assert.equal(result.status, expected[i], `${method} ${path}: ${result.text}`);
    }
  });

  void it('refuses a dead-letter cursor Redis could not read on from with 400', async () => {
    for (const cursor of [
      'nonsense',
      '0:99999999999999999999-0',
      '0:18446744073709551615-18446744073709551615',
    ]) {
      const answer = await h.request(
        'GET',
        `/admin/dead-letters?cursor=${cursor}`,
        undefined,
        auth(TOKEN),
      );
      assert.equal(answer.status, 400, `${cursor}: ${answer.text}`);
      assert.equal(answer.body.error.code, 'validation_failed');
    }
    const last = await h.request(
      'GET',
      '/admin/dead-letters?cursor=0:18446744073709551615-18446744073709551614',
      undefined,
      auth(TOKEN),
    );
    assert.equal(last.status, 200, last.text);
  });

  void it('answers 403 admin_disabled when no token is configured', async () => {
    const service = await h.startService('api', { adminToken: undefined, port: 0 });
    try {
      const result = await fetch(`http://127.0.0.1:${service.port}/admin/pending`, {
        headers: auth(TOKEN),
      });
      assert.equal(result.status, 403);
      assert.equal(
        ((await result.json()) as { error: { code: string } }).error.code,
        'admin_disabled',
      );
    } finally {
      await h.stopService(service);
    }
  });

  void it('dead-letters a poison event among 1,000 good ones, applies the rest, and applies it exactly once after a retry', async () => {
    // A constraint the event cannot meet: a data failure PostgreSQL reports, not a transient one.
    await h.main.query(
      "ALTER TABLE executed_obs_units ADD CONSTRAINT no_poison CHECK (instrument <> 'poison') NOT VALID",
    );
    const bodies = Array.from({ length: 1001 }, (_, i) => ({
      obs_unit_id: `batch-${i}`,
      instrument: i === 500 ? 'poison' : 'nircam',
    }));
    const results = await inBatches(bodies, 16, (body) =>
      h.post('/executed_obs_units/start', body),
    );
    assert.ok(results.every((r) => r.status === 201));
    const poison = results[500]?.body as { id: string; event_id: string };

    await waitFor(
      async () => (await h.get(`/events/${poison.event_id}`)).body?.state === 'dead',
      'the poison event to be dead-lettered',
    );
    await waitForAllAcknowledged(h);
    const applied = await h.mainRows<{ n: number }>(
      "SELECT count(*)::int AS n FROM executed_obs_units WHERE obs_unit_id LIKE 'batch-%'",
    );
    assert.equal(applied[0]?.n, 1000);

    const list = await h.request('GET', '/admin/dead-letters', undefined, auth(TOKEN));
    assert.equal(list.status, 200);
    assert.equal(list.body.items.length, 1);
    const [letter] = list.body.items;
    assert.equal(letter.event_id, poison.event_id);
    assert.equal(letter.attempts.length, h.config.maxAttempts);
    assert.match(letter.error, /no_poison/);
    const health = await h.get('/health');
    assert.equal(health.body.transaction_buffer.failed, 1);
    const metrics = await h.get('/metrics');
    assert.match(metrics.text, /^outpost_dead_letters 1$/m);

    const cliList = await runCli(h, ['dead', 'list', '--json']);
    assert.equal(cliList.code, 0, cliList.stderr);
    assert.equal(JSON.parse(cliList.stdout).items[0].event_id, poison.event_id);
    const cliShow = await runCli(h, ['dead', 'show', poison.event_id]);
    assert.equal(cliShow.code, 0, cliShow.stderr);
    assert.match(cliShow.stdout, new RegExp(`^event_id +${poison.event_id}$`, 'm'));
    assert.match(cliShow.stdout, /^error +.*no_poison/m);
    assert.match(cliShow.stdout, /^ATTEMPT +AT +ERROR$/m);
    assert.equal(
      cliShow.stdout.match(/^\d+ +\d{4}-\d\d-\d\dT.*no_poison/gm)?.length,
      h.config.maxAttempts,
    );

    await h.main.query('ALTER TABLE executed_obs_units DROP CONSTRAINT no_poison');
    const retried = await runCli(h, ['dead', 'retry', poison.event_id, '--json']);
    assert.equal(retried.code, 0, retried.stderr);
    assert.equal(JSON.parse(retried.stdout).items[0].retried, true);
    await waitForAllAcknowledged(h);
    const times = await h.mainRows<{ n: number }>(
      'SELECT count(*)::int AS n FROM events WHERE event_id = $1',
      [poison.event_id],
    );
    assert.equal(times[0]?.n, 1);
    assert.equal((await h.get(`/executed_obs_units/${poison.id}`)).body.instrument, 'poison');
    assert.equal((await h.get(`/events/${poison.event_id}`)).body.state, 'confirmed');
    const again = await runCli(h, ['dead', 'retry', poison.event_id]);
    assert.equal(again.code, 1, 'a retried dead letter is gone');
    assert.match(again.stderr, /no dead letter/);
    // Without --reason too, the first thing said is that the dead letter is gone, as the API's 404.
    const discardGone = await runCli(h, ['dead', 'discard', poison.event_id]);
    assert.equal(discardGone.code, 1);
    assert.match(discardGone.stderr, /no dead letter/);
    await audit(h, await streamEventIds(h));
  });

  void it('dead retry --wait says whether the retried event applied or was dead-lettered again', async () => {
    // Retried before the cause is gone: dead again, said with the new letter's error, exit 1.
    await h.main.query(
      "ALTER TABLE executed_obs_units ADD CONSTRAINT no_poison CHECK (instrument <> 'poison') NOT VALID",
    );
    const poison = (
      await h.post('/executed_obs_units/start', { obs_unit_id: 'retry-wait', instrument: 'poison' })
    ).body as { id: string; event_id: string };
    const deadOnce = async () =>
      waitFor(
        async () => (await h.get(`/events/${poison.event_id}`)).body?.state === 'dead',
        'dead-lettered',
      );
    await deadOnce();
    const tooEarly = await runCli(h, ['dead', 'retry', poison.event_id, '--wait', '--json']);
    assert.equal(tooEarly.code, 1, tooEarly.stderr);
    const [deadAgain] = JSON.parse(tooEarly.stdout).items;
    assert.equal(deadAgain.retried, true);
    assert.equal(deadAgain.outcome, 'dead');
    assert.match(deadAgain.error, /no_poison/);
    assert.match(
      tooEarly.stderr,
      new RegExp(
        `^outpost: 1 of 1 retried event\\(s\\) were dead-lettered again \\(${poison.event_id}: .*no_poison`,
      ),
    );
    assert.equal((await h.get(`/events/${poison.event_id}`)).body.state, 'dead');
    // The cause gone: applied, said in the table, exit 0.
    await h.main.query('ALTER TABLE executed_obs_units DROP CONSTRAINT no_poison');
    const fixed = await runCli(h, ['dead', 'retry', poison.event_id, '--wait']);
    assert.equal(fixed.code, 0, fixed.stderr);
    assert.match(fixed.stdout, /^ID +PARTITION +ENTRY_ID +RETRIED +OUTCOME$/m);
    assert.match(
      fixed.stdout,
      new RegExp(`^${poison.event_id} +\\d+ +\\d+-\\d+ +true +applied$`, 'm'),
    );
    const times = await h.mainRows<{ n: number }>(
      'SELECT count(*)::int AS n FROM events WHERE event_id = $1',
      [poison.event_id],
    );
    assert.equal(times[0]?.n, 1);
  });

  void it('honours Idempotency-Key on admin actions: a repeat answers the first response and does nothing', async () => {
    const poison = await deadLetteredStart('retry-once');
    const retry = () =>
      h.request('POST', `/admin/dead-letters/${poison.event_id}/retry`, undefined, {
        ...auth(TOKEN),
        'idempotency-key': 'retry-1',
      });
    const first = await retry();
    assert.equal(first.status, 200, first.text);
    const again = await retry();
    assert.equal(again.status, 200, 'not 404: the same key answers the first retry');
    assert.deepEqual(again.body, first.body);
    assert.equal(again.headers.get('idempotent-replayed'), 'true');
    // A body the route does not read is still the request the key was given to.
    const withBody = await h.request(
      'POST',
      `/admin/dead-letters/${poison.event_id}/retry`,
      { note: 'again' },
      { ...auth(TOKEN), 'idempotency-key': 'retry-1' },
    );
    assert.equal(withBody.status, 409, withBody.text);
    assert.equal(withBody.body.error.code, 'idempotency_key_reused');
    // A discard's reason in the query, with a body beside it: the key is given to both.
    const discarded = await deadLetteredStart('discard-by-query');
    const discard = (body: unknown) =>
      h.request('DELETE', `/admin/dead-letters/${discarded.event_id}?reason=by%20query`, body, {
        ...auth(TOKEN),
        'idempotency-key': 'discard-q',
      });
    const byQuery = await discard(undefined);
    assert.equal(byQuery.status, 200, byQuery.text);
    assert.equal((await discard(undefined)).headers.get('idempotent-replayed'), 'true');
    const byQueryWithBody = await discard({ note: 'x' });
    assert.equal(byQueryWithBody.status, 409, byQueryWithBody.text);
    assert.equal(byQueryWithBody.body.error.code, 'idempotency_key_reused');
    await waitFor(
      async () => (await h.get(`/events/${poison.event_id}`)).body?.state === 'confirmed',
      'the retried event confirmed',
    );
    const entries = (
      await Promise.all(
        eventLogOf(h)
          .allKeys()
          .map((k) => h.redis.xrange(k.stream, '-', '+')),
      )
    ).flat();
    const appended = entries.filter(
      ([, fields]) => entryRecord(fields).event_id === poison.event_id,
    );
    assert.equal(appended.length, 2, 'the original entry and one retry, not two');

    const replay = (body: unknown) =>
      h.request('POST', '/admin/replay', body, { ...auth(TOKEN), 'idempotency-key': 'replay-1' });
    const dry = await replay({ from: '0', dry_run: true });
    assert.equal(dry.status, 200, dry.text);
    const different = await replay({ from: '0', dry_run: false });
    assert.equal(different.status, 409);
    assert.equal(different.body.error.code, 'idempotency_key_reused');
    // Compared as JSON, canonically: key order does not matter, a default spelled out does.
    const future = { from: '2099-01-01T00:00:00Z', to: '2099-01-02T00:00:00Z' };
    const later = (body: unknown) =>
      h.request('POST', '/admin/replay', body, { ...auth(TOKEN), 'idempotency-key': 'replay-2' });
    const original = await later(future);
    assert.equal(original.status, 200, original.text);
    const reordered = await later({ to: future.to, from: future.from });
    assert.equal(reordered.headers.get('idempotent-replayed'), 'true', 'the same JSON');
    const defaultSpelledOut = await later({ ...future, dry_run: false });
    assert.equal(defaultSpelledOut.status, 409, 'another JSON body, though it means the same');
    const badKey = await h.request('POST', '/admin/integrity/refresh', undefined, {
      ...auth(TOKEN),
      'idempotency-key': 'has space',
    });
    assert.equal(badKey.status, 400);
  });

  void it("holds an admin action's Idempotency-Key for as long as it runs, and never stores over a key another request took", async () => {
    const refresh = (key: string) =>
      h.request('POST', '/admin/integrity/refresh', undefined, {
        ...auth(TOKEN),
        'idempotency-key': key,
      });
    /** The key of an admin action running now that is not one of `known`. */
    const newRunningKey = async (known: readonly string[]) => {
      let found: string | undefined;
      await waitFor(async () => {
        for (const key of await h.redis.keys(`${h.config.namespace}:admin-idem:*`)) {
          if (!known.includes(key) && (await h.redis.get(key))?.startsWith('running\n')) {
            found = key;
          }
        }
        return found !== undefined;
      }, 'an admin action to claim its key');
      return found as string;
    };
    const holder = await h.main.connect();
    let long: Promise<Awaited<ReturnType<typeof refresh>>> | undefined;
    let overtaken: typeof long;
    const foreign = `running\n${'0'.repeat(64)}\nanother-process`;
    let overtakenKey = '';
    try {
      // The refresh waits for this lock: an action that runs as long as the test wants.
      await holder.query('SELECT pg_advisory_lock(7246002)');
      long = refresh('long-refresh');
      const longKey = await newRunningKey([]);
      overtaken = refresh('taken-over');
      overtakenKey = await newRunningKey([longKey]);
      // As if the action had run for most of its claim: unrenewed, the key lapses in 3 s and a
      // retry would run the refresh a second time.
      await h.redis.pexpire(longKey, 3000);
      await waitFor(
        async () => (await h.redis.pttl(longKey)) > 10_000,
        'the running action to renew its claim',
      );
      const during = await refresh('long-refresh');
      assert.equal(during.status, 409, during.text);
      assert.equal(during.body.error.code, 'conflict');
      // As if this claim had lapsed and another process's retry had taken the key since.
      await h.redis.set(overtakenKey, foreign, 'KEEPTTL');
    } finally {
      await holder.query('SELECT pg_advisory_unlock(7246002)');
      holder.release();
    }
    const done = await long;
    assert.equal(done?.status, 200, done?.text);
    assert.equal((await overtaken)?.status, 200, 'its action ran; only its outcome is not kept');
    assert.equal(
      await h.redis.get(overtakenKey),
      foreign,
      'the key stays with the request that took it, neither overwritten nor freed',
    );
    const again = await refresh('long-refresh');
    assert.equal(again.headers.get('idempotent-replayed'), 'true');
    assert.deepEqual(again.body, done?.body);
  });

  void it("refuses writes while the site's partition count is not the process's, saying why", async () => {
    const countKey = partitionCountKey(h.config.namespace);
    const rosterKey = processRosterKey(h.config.namespace);
    const own = String(h.config.partitions);
    const other = String(h.config.partitions * 2);
    const start = () =>
      h.post('/executed_obs_units/start', { obs_unit_id: 'count-moved', instrument: 'x' });
    try {
      // As after a Redis outage that outlived every listing, when a process with another count
      // started first and took the change.
      await h.redis.del(rosterKey);
      await h.redis.set(countKey, other);
      await waitFor(
        async () => (await h.get('/health')).body?.partition_count !== undefined,
        'the process to notice at its next renewal',
      );
      const probe = await h.get('/health');
      assert.equal(probe.status, 503, 'a load balancer stops sending writes it would refuse');
      assert.equal(probe.headers.get('retry-after'), '5');
      const health = probe.body;
      assert.equal(health.status, 'unhealthy');
      assert.match(
        health.partition_count.error,
        new RegExp(`changed to ${other} while this process runs with ${own}: it refuses writes`),
      );
      const refused = await start();
      assert.equal(refused.status, 503, refused.text);
      assert.equal(refused.body.error.code, 'log_unavailable');
      assert.match(refused.body.error.message, new RegExp(`OUTPOST_PARTITIONS=${other}`));
      // A replay would walk partitions the site's other processes do not read, and a read or an
      // operator's look would miss the events in flight that they wrote.
      const refusedToo: [string, string, unknown?][] = [
        ['POST', '/admin/replay', { from: '0' }],
        ['POST', '/admin/replay', { from: '0', dry_run: true }],
        ['GET', '/admin/pending'],
        ['GET', '/admin/dead-letters'],
        ['GET', `/admin/dead-letters/${unknownId}`],
        ['GET', `/executed_obs_units/${unknownId}`],
        ['GET', '/executed_obs_units'],
        ['GET', `/events/${unknownId}`],
      ];
      for (const [method, path, body] of refusedToo) {
        const headers = path.startsWith('/admin') ? auth(TOKEN) : {};
        const answer = await h.request(method, path, body, headers);
        assert.equal(answer.status, 503, `${method} ${path}: ${answer.text}`);
        assert.equal(answer.body.error.code, 'log_unavailable');
        assert.match(answer.body.error.message, new RegExp(`OUTPOST_PARTITIONS=${other}`));
      }
      const unauthorized = await h.request('GET', '/admin/pending');
      assert.equal(unauthorized.status, 401, 'auth is still checked before anything else');
      assert.equal((await h.get('/metrics')).status, 200);
    } finally {
      await h.redis.set(countKey, own);
    }
    await waitFor(async () => (await start()).status === 201, 'writes to be taken again');
    assert.equal((await h.get('/health')).body?.partition_count, undefined);
  });

  void it('refuses a write the moment the partition count moved, before its listing notices', async () => {
    const countKey = partitionCountKey(h.config.namespace);
    const own = String(h.config.partitions);
    const other = String(h.config.partitions * 2);
    const obs_unit_id = 'count-moved-at-once';
    try {
      // The listing renews every 5 s; this write comes within milliseconds of the change.
      await h.redis.del(processRosterKey(h.config.namespace));
      await h.redis.set(countKey, other);
      const refused = await h.post('/executed_obs_units/start', { obs_unit_id, instrument: 'x' });
      assert.equal(refused.status, 503, refused.text);
      assert.equal(refused.headers.get('retry-after'), '30');
      assert.equal(refused.body.error.code, 'log_unavailable');
      assert.match(
        refused.body.error.message,
        new RegExp(
          `changed to ${other} while this process runs with ${own}: it refuses writes.*OUTPOST_PARTITIONS=${other}$`,
        ),
      );
    } finally {
      await h.redis.set(countKey, own);
    }
    await waitFor(
      async () => (await h.get('/health')).body?.partition_count === undefined,
      'the process to take requests again',
    );
    const listed = await h.get(`/executed_obs_units?obs_unit_id=${obs_unit_id}`);
    assert.equal(listed.status, 200, listed.text);
    assert.deepEqual(
      listed.body.items,
      [],
      'the refused write appended nothing, pending or applied',
    );
  });

  void it('answers a read of a dead-lettered aggregate with a 404 that says where it is', async () => {
    const poison = await deadLetteredStart('read-while-dead');
    for (const path of [`/executed_obs_units/${poison.id}`, `/aggregates/${poison.id}/events`]) {
      const read = await h.get(path);
      assert.equal(read.status, 404, read.text);
      assert.equal(read.body.error.code, 'not_found');
      assert.match(
        read.body.error.message,
        new RegExp(
          `^${poison.id} is not applied: the events of the aggregate with this id are held in the dead letters`,
        ),
      );
    }
    const unknown = await h.get(`/executed_obs_units/${unknownId}`);
    assert.equal(unknown.status, 404);
    assert.equal(unknown.body.error.message, 'executed obs unit not found');
    const discarded = await h.request(
      'DELETE',
      `/admin/dead-letters/${poison.event_id}?reason=test`,
      undefined,
      auth(TOKEN),
    );
    assert.equal(discarded.status, 200, discarded.text);
    assert.equal(
      (await h.get(`/executed_obs_units/${poison.id}`)).body.error.message,
      'executed obs unit not found',
      'discarded: nothing of it is held any more',
    );
  });

  void it("dead-letters a dead-lettered unit's later events instead of applying them out of order", async () => {
    const poison = await deadLetteredStart('held-back');
    const later = await h.request('PATCH', `/executed_obs_units/${poison.id}`, { notes: 'later' });
    assert.equal(later.status, 202, later.text);
    await waitFor(
      async () => (await h.get(`/events/${later.body.event_id}`)).body?.state === 'dead',
      'the later event to be held back as a dead letter',
    );
    const list = await h.request('GET', '/admin/dead-letters', undefined, auth(TOKEN));
    const held = list.body.items.find(
      (item: { event_id: string }) => item.event_id === later.body.event_id,
    );
    assert.match(
      held?.error ?? '',
      /^an event of this aggregate ahead of it in the log is dead-lettered$/,
    );
    const applied = await h.mainRows<{ n: number }>(
      'SELECT count(*)::int AS n FROM events WHERE aggregate_id = $1',
      [poison.id],
    );
    assert.equal(applied[0]?.n, 0, 'nothing of the unit applied');
    for (const eventId of [poison.event_id, later.body.event_id]) {
      const discarded = await h.request(
        'DELETE',
        `/admin/dead-letters/${eventId}`,
        { reason: 'test of held-back events' },
        auth(TOKEN),
      );
      assert.equal(discarded.status, 200, discarded.text);
    }
  });

  void it('acknowledges a second entry of an event applied before its aggregate was blocked, rather than file it as dead', async () => {
    const unit = (
      await h.post('/executed_obs_units/start', {
        obs_unit_id: 'resent-while-blocked',
        instrument: 'x',
      })
    ).body as { id: string; event_id: string };
    assert.equal(await settledState(h, unit.event_id), 'confirmed');
    await h.main.query(
      "ALTER TABLE executed_obs_units ADD CONSTRAINT no_poison CHECK (notes IS DISTINCT FROM 'poison') NOT VALID",
    );
    const poison = await h.request('PATCH', `/executed_obs_units/${unit.id}`, { notes: 'poison' });
    assert.equal(poison.status, 202, poison.text);
    assert.equal(await settledState(h, poison.body.event_id), 'dead');
    await h.main.query('ALTER TABLE executed_obs_units DROP CONSTRAINT no_poison');
    // The start again, as an append re-sent by ioredis after a reconnect lands once the first
    // copy has been acknowledged and left the event index.
    const { partition, entry_id: entryId } = (await h.get(`/events/${unit.event_id}`)).body;
    const log = eventLogOf(h);
    const stream = log.keys(partition).stream;
    const [first] = await h.redis.xrange(stream, entryId, entryId);
    assert.ok(first, 'the acknowledged entry is still held for replays');
    const appended = await log.append({ partition, events: [decodeEntry(first).event] });
    assert.ok(appended.kind === 'appended');
    const [resent] = appended.entryIds;
    assert.ok(resent);
    // Out of the pending list only once delivered: before its first delivery it is not in it.
    const deliveredPast = async (entry: string) => {
      const groups = (await h.redis.xinfo('GROUPS', stream)) as unknown[][];
      const group = groups.find((fields) => fields[fields.indexOf('name') + 1] === 'projector');
      const last = String(group?.[group.indexOf('last-delivered-id') + 1] ?? '0-0');
      return compareEntryIds(last, entry) >= 0;
    };
    await waitFor(
      async () =>
        (await deliveredPast(resent)) &&
        (await h.redis.xpending(stream, 'projector', resent, resent, 1)).length === 0,
      'the second entry to be delivered and leave the pending list',
    );
    const letters = await h.request('GET', '/admin/dead-letters', undefined, auth(TOKEN));
    assert.deepEqual(
      letters.body.items
        .filter((item: { aggregate_id: string }) => item.aggregate_id === unit.id)
        .map((item: { event_id: string }) => item.event_id),
      [poison.body.event_id],
      'only the patch is held; the start is applied',
    );
    assert.equal((await h.get(`/events/${unit.event_id}`)).body.state, 'confirmed');
    const discarded = await h.request(
      'DELETE',
      `/admin/dead-letters/${poison.body.event_id}`,
      { reason: 'test of a re-sent entry behind a dead letter' },
      auth(TOKEN),
    );
    assert.equal(discarded.status, 200, discarded.text);
  });

  void it("retries an aggregate's dead letters together, in the order accepted, before anything newer", async () => {
    const start = await deadLetteredStart('chain');
    const patches = [];
    for (const notes of ['p1', 'p2']) {
      const patch = await h.request('PATCH', `/executed_obs_units/${start.id}`, { notes });
      assert.equal(patch.status, 202, patch.text);
      await waitFor(
        async () => (await h.get(`/events/${patch.body.event_id}`)).body?.state === 'dead',
        'the patch to follow the start into the dead letters',
      );
      patches.push(patch.body.event_id as string);
    }
    // Only the oldest is named, as the runbook says to begin.
    const retried = await runCli(h, ['dead', 'retry', start.event_id, '--json']);
    assert.equal(retried.code, 0, retried.stderr);
    const finish = await h.post(`/executed_obs_units/${start.id}/finish`, { status: 'success' });
    assert.equal(finish.status, 202, finish.text);
    await waitForAllAcknowledged(h, 30_000);
    const applied = await h.mainRows<{ event_id: string }>(
      'SELECT event_id FROM events WHERE aggregate_id = $1 ORDER BY seq',
      [start.id],
    );
    assert.deepEqual(
      applied.map((e) => e.event_id),
      [start.event_id, ...patches, finish.body.event_id],
      'the dead letters went back in order, and before the finish',
    );
    const unit = await h.get(`/executed_obs_units/${start.id}`);
    assert.equal(unit.body.notes, 'p2');
    assert.equal(unit.body.status, 'success');
    const left = await h.request('GET', '/admin/dead-letters', undefined, auth(TOKEN));
    assert.deepEqual(
      left.body.items.filter((item: { aggregate_id: string }) => item.aggregate_id === start.id),
      [],
    );
  });

  void it("lets a unit's next events apply once its only dead letter is discarded", async () => {
    const { unit, poison } = await patchedPastADiscardedLetter(h, 'discarded-patch');
    assert.equal((await h.get(`/executed_obs_units/${unit.id}`)).body.notes, 'next');

    // A replay over the whole log leaves discarded events out; it does not bring them back.
    const replay = await h.request('POST', '/admin/replay', { from: '0' }, auth(TOKEN));
    assert.equal(replay.status, 200, replay.text);
    assert.ok(replay.body.discarded >= 1, replay.text);
    assert.equal(replay.body.applied, 0, replay.text);
    assert.equal(replay.body.failed, 0, replay.text);
    assert.equal(replay.body.history_starts_at, null, 'nothing trimmed on this site');
    // A range whose start lies after its end holds nothing: refused, not answered with zeros.
    const backwards = await h.request(
      'POST',
      '/admin/replay',
      { from: '2026-12-05T03:00Z', to: '2026-12-05T02:00Z', dry_run: true },
      auth(TOKEN),
    );
    assert.equal(backwards.status, 400, backwards.text);
    assert.equal(backwards.body.error.code, 'validation_failed');
    assert.match(backwards.body.error.message, /lies after to/);
    // One that starts in the future (a mistyped year after a restore) holds nothing yet: it is
    // answered, and the answer says why its zeros mean nothing, as the CLI does.
    const nextYear = new Date(Date.now() + 365 * 86_400_000).toISOString();
    const future = await h.request(
      'POST',
      '/admin/replay',
      { from: nextYear, dry_run: true },
      auth(TOKEN),
    );
    assert.equal(future.status, 200, future.text);
    assert.equal(future.body.scanned, 0);
    assert.match(future.body.warning ?? '', /^from .* lies in the future .*check the date$/);
    assert.equal(replay.body.warning, undefined, 'only then');
    const cliFuture = await runCli(h, ['replay', '--from', nextYear, '--dry-run']);
    assert.equal(cliFuture.code, 0, cliFuture.stderr);
    assert.match(cliFuture.stderr, /^outpost: from .* lies in the future /m);
    assert.deepEqual(
      await h.mainRows('SELECT 1 FROM events WHERE event_id = $1', [poison.body.event_id]),
      [],
    );
    assert.equal((await h.get(`/events/${poison.body.event_id}`)).status, 404, 'still gone');
    const dead = await h.request('GET', '/admin/dead-letters', undefined, auth(TOKEN));
    assert.ok(
      !dead.body.items.some((item: { event_id: string }) => item.event_id === poison.body.event_id),
      'not back in the dead letters',
    );
  });

  void it('forgets what a discarded event did to its unit: a finish can come again, files for a discarded start are 404', async () => {
    const unit = (
      await h.post('/executed_obs_units/start', { obs_unit_id: 'refinished', instrument: 'x' })
    ).body;
    await h.main.query(
      "ALTER TABLE executed_obs_units ADD CONSTRAINT no_poison CHECK (status <> 'failed') NOT VALID",
    );
    const finish = await h.post(`/executed_obs_units/${unit.id}/finish`, { status: 'failed' });
    assert.equal(finish.status, 202, finish.text);
    await waitFor(
      async () => (await h.get(`/events/${finish.body.event_id}`)).body?.state === 'dead',
      'the finish to be dead-lettered',
    );
    await h.main.query('ALTER TABLE executed_obs_units DROP CONSTRAINT no_poison');
    const discard = (id: string) =>
      h.request('DELETE', `/admin/dead-letters/${id}`, { reason: 'sent by mistake' }, auth(TOKEN));
    assert.equal((await discard(finish.body.event_id)).status, 200);
    const again = await h.post(`/executed_obs_units/${unit.id}/finish`, { status: 'success' });
    assert.equal(again.status, 202, `the unit is running, not finished: ${again.text}`);
    await waitFor(
      async () => (await h.get(`/events/${again.body.event_id}`)).body?.state === 'confirmed',
      'the new finish to be confirmed',
    );
    assert.equal((await h.get(`/executed_obs_units/${unit.id}`)).body.status, 'success');

    const never = await deadLetteredStart('never-started');
    assert.equal((await discard(never.event_id)).status, 200);
    const files = await h.post('/raw_data_files', {
      executed_obs_unit_id: never.id,
      files: [{ path: '/raw/x.fits', size_bytes: 1, checksum: 'ab', checksum_algorithm: 'xxh64' }],
    });
    assert.equal(files.status, 404, `files for a unit that never was: ${files.text}`);
  });

  void it("lists, shows and discards a dead entry written past the API with fields named as the letter's own", async () => {
    const { log, partition, patch, discardLetters } = await unitForUnreadablePatches(
      h,
      'undecodable-clash',
    );
    const clash = patch('clash');
    // Undecodable, and carrying an `attempts` that is no JSON and an `original_entry_id` of its own.
    const fields = [
      ...withField(encodeFieldPerProperty(clash), 'data', '{not json'),
      'attempts',
      'x',
      'original_entry_id',
      '1-1',
    ];
    const entryId = await log.redis.xadd(log.keys(partition).stream, '*', ...fields);
    const projector = await h.startService('projector');
    try {
      assert.equal(await settledState(h, clash.event_id), 'dead');
      const listed = await h.request(
        'GET',
        '/admin/dead-letters?limit=1000',
        undefined,
        auth(TOKEN),
      );
      assert.equal(listed.status, 200, listed.text);
      const letter = listed.body.items.find(
        (item: { event_id: string }) => item.event_id === clash.event_id,
      );
      assert.ok(letter, listed.text.slice(0, 2000));
      assert.equal(letter.original_entry_id, entryId, 'the letter says where the entry was');
      assert.ok(letter.attempts.length >= 1, JSON.stringify(letter.attempts));
      const shown = await runCli(h, ['dead', 'show', clash.event_id, '--json']);
      assert.equal(shown.code, 0, shown.stderr);
    } finally {
      await discardLetters([clash]);
      await h.stopService(projector);
    }
    const gone = await h.request(
      'GET',
      `/admin/dead-letters/${clash.event_id}`,
      undefined,
      auth(TOKEN),
    );
    assert.equal(gone.status, 404, 'discarded');
  });

  void it("applies a unit's events before an undecodable entry of it in the same batch, and holds those after", async () => {
    const { log, unit, partition, patch, appendUnreadable, discardLetters } =
      await unitForUnreadablePatches(h, 'undecodable-middle');
    const [before, middle, after] = [patch('before'), patch('unreadable'), patch('after')];
    assert.equal((await log.append({ partition, events: [before] })).kind, 'appended');
    await appendUnreadable(middle);
    assert.equal((await log.append({ partition, events: [after] })).kind, 'appended');

    // One batch: the projector meets all three at once.
    const projector = await h.startService('projector');
    try {
      assert.equal(await settledState(h, before.event_id), 'confirmed', 'before it: applied');
      assert.equal(await settledState(h, middle.event_id), 'dead');
      assert.equal(await settledState(h, after.event_id), 'dead', 'after it: held behind it');
      assert.equal((await h.get(`/executed_obs_units/${unit.id}`)).body.notes, 'before');
    } finally {
      await discardLetters([middle, after]);
      await h.stopService(projector);
    }
  });

  void it('dead-letters entries written past the API that no fold can take, and applies what follows them', async () => {
    const log = eventLogOf(h);
    const partition = 0;
    const brokenCases = [
      {
        // A package without its file_ids: nothing the API would take, and no fold or link can.
        read: 'raw_data_packages',
        error: /cannot fold RawDataPackageCreated/,
        event: eventIn(h, partition, {
          type: 'RawDataPackageCreated',
          aggregate_type: 'raw_data_package',
          data: { name: 'no files' },
        }),
      },
      {
        // A file of a unit named by null, and a package of a file named by a number: ids that
        // cannot be looked up, which once stopped the partition for good instead.
        read: 'raw_data_files',
        error: /cannot fold RawDataFileRegistered: executed_obs_unit_id is not a UUID: null/,
        event: eventIn(h, partition, {
          type: 'RawDataFileRegistered',
          aggregate_type: 'raw_data_file',
          data: {
            executed_obs_unit_id: null,
            path: '/data/of-no-unit.fits',
            size_bytes: 1,
            checksum: 'ab',
            checksum_algorithm: 'xxh64',
            created_at: new Date().toISOString(),
          },
        }),
      },
      {
        read: 'raw_data_packages',
        error: /cannot fold RawDataPackageCreated: file_ids is not a UUID: 42/,
        event: eventIn(h, partition, {
          type: 'RawDataPackageCreated',
          aggregate_type: 'raw_data_package',
          data: {
            name: 'numbered',
            file_ids: [42],
            executed_obs_unit_id: newIdInPartition(partition, h.config.partitions),
          },
        }),
      },
    ];
    const next = configurationEvent(h, partition);
    for (const event of [...brokenCases.map((c) => c.event), next]) {
      assert.equal((await log.append({ partition, events: [event] })).kind, 'appended');
    }
    for (const { read: collection, event } of brokenCases) {
      const read = await h.get(`/${collection}/${event.aggregate_id}`);
      assert.notEqual(read.status, 500, read.text);
    }
    await waitFor(
      async () => (await h.get(`/events/${next.event_id}`)).body?.state === 'confirmed',
      'the event after them in their partition to be applied',
    );
    for (const { event, error } of brokenCases) {
      await waitFor(
        async () => (await h.get(`/events/${event.event_id}`)).body?.state === 'dead',
        `the broken ${event.type} to be dead-lettered`,
      );
      const letter = await h.request(
        'GET',
        `/admin/dead-letters/${event.event_id}`,
        undefined,
        auth(TOKEN),
      );
      assert.match(letter.body.error, error);
      const discarded = await h.request(
        'DELETE',
        `/admin/dead-letters/${event.event_id}`,
        { reason: 'written past the API' },
        auth(TOKEN),
      );
      assert.equal(discarded.status, 200, discarded.text);
    }
  });

  void it('puts a lost start given back behind its failed patch back first, so both apply', async () => {
    const log = eventLogOf(h);
    const partition = 1;
    const unitId = newIdInPartition(partition, h.config.partitions);
    // After a restore from before the unit's start: its patch, still in the log, meets no unit
    // and is dead-lettered; a replay then gives the start back, appended behind it, and the
    // start follows the block into the dead letters.
    const patch = eventIn(h, partition, {
      type: 'ExecutedObsUnitUpdated',
      aggregate_type: 'executed_obs_unit',
      aggregate_id: unitId,
      data: { notes: 'after the start' },
    });
    assert.equal((await log.append({ partition, events: [patch] })).kind, 'appended');
    assert.equal(await settledState(h, patch.event_id), 'dead');
    const start = eventIn(h, partition, {
      type: 'ExecutedObsUnitStarted',
      aggregate_type: 'executed_obs_unit',
      aggregate_id: unitId,
      data: {
        obs_unit_id: 'lost-in-a-restore',
        instrument: 'x',
        start_time: new Date().toISOString(),
        instrument_configuration_id: null,
        notes: null,
        metadata: {},
      },
    });
    assert.equal((await log.append({ partition, events: [start] })).kind, 'appended');
    assert.equal(await settledState(h, start.event_id), 'dead');

    const retry = await retryLetter(h, patch.event_id);
    assert.equal(retry.status, 200, retry.text);
    for (const event of [start, patch]) {
      assert.equal(await settledState(h, event.event_id), 'confirmed', event.type);
    }
    const unit = await h.get(`/executed_obs_units/${unitId}`);
    assert.equal(unit.body.notes, 'after the start', unit.text);
  });

  void it("leaves an event of a type this build does not know out of its unit's reads", async () => {
    const unit = (
      await h.post('/executed_obs_units/start', { obs_unit_id: 'newer-build', instrument: 'x' })
    ).body;
    await waitForAllAcknowledged(h);
    // As a newer build would have appended it before a rollback to this one.
    const partition = partitionOf(unit.id, h.config.partitions);
    const archived = eventIn(h, partition, {
      type: 'ExecutedObsUnitArchived',
      aggregate_type: 'executed_obs_unit',
      aggregate_id: unit.id,
      data: {},
    });
    // With nothing projecting, so that the reads meet it pending.
    const [service] = h.services;
    assert.ok(service);
    await h.stopService(service);
    const api = await h.startService('api');
    assert.equal((await eventLogOf(h).append({ partition, events: [archived] })).kind, 'appended');
    const reads = async () =>
      Promise.all(
        [
          `/executed_obs_units/${unit.id}`,
          `/aggregates/${unit.id}/events`,
          '/executed_obs_units?obs_unit_id=newer-build',
          `/events/${archived.event_id}`,
        ].map(async (path) => ({ path, ...(await h.get(path)) })),
      );
    const pending = await reads();
    for (const read of pending) {
      assert.equal(read.status, 200, `${read.path}: ${read.text}`);
    }
    // The event itself, by its raw fields, until the projector dead-letters it.
    const eventRead = pending.at(-1)?.body;
    assert.equal(eventRead?.state, 'pending', JSON.stringify(eventRead));
    assert.equal(eventRead?.type, 'ExecutedObsUnitArchived');
    assert.equal(eventRead?.aggregate_id, unit.id);
    await h.stopService(api);
    await h.startService();
    await waitFor(
      async () => (await h.get(`/events/${archived.event_id}`)).body?.state === 'dead',
      'the projector to dead-letter the entry',
    );
    // Its dead letter could not name its aggregate type, yet it left the unit's in-flight bucket:
    // a field left behind would hold back any retry of the unit's letters for good.
    const bucket = eventLogOf(h).keys(partition).inflight('executed_obs_unit', unit.id);
    assert.equal(await h.redis.hget(bucket, unit.id), null);
    const [unitRead, events, list, dead] = await reads();
    assert.equal(dead?.body.state, 'dead', dead?.text);
    assert.equal(unitRead?.status, 200, unitRead?.text);
    assert.equal(unitRead?.body.status, 'running');
    assert.deepEqual(
      events?.body.items.map((e: { type: string }) => e.type),
      ['ExecutedObsUnitStarted'],
    );
    assert.deepEqual(
      list?.body.items.map((u: { id: string }) => u.id),
      [unit.id],
    );
    const discarded = await h.request(
      'DELETE',
      `/admin/dead-letters/${archived.event_id}`,
      { reason: 'a newer build wrote it' },
      auth(TOKEN),
    );
    assert.equal(discarded.status, 200, discarded.text);
  });

  void it('keeps one dead letter for an event appended twice, so its discard unblocks the unit', async () => {
    const unit = (
      await h.post('/executed_obs_units/start', { obs_unit_id: 'twice-dead', instrument: 'x' })
    ).body;
    const poison = await deadLetteredPatch(h, unit.id);
    const lettersOf = async (eventId: string) =>
      (
        await h.request('GET', '/admin/dead-letters?limit=1000', undefined, auth(TOKEN))
      ).body.items.filter((item: { event_id: string }) => item.event_id === eventId);
    const [letter] = await lettersOf(poison.body.event_id);
    assert.ok(letter);
    // The same event appended again (ioredis re-sending an append after a reconnect, or two
    // replays racing): it fails as the first did, behind the aggregate's block.
    const log = eventLogOf(h);
    const [original] = (await h.redis.xrange(
      log.keys(letter.partition).stream,
      letter.original_entry_id,
      letter.original_entry_id,
    )) as RawEntry[];
    assert.ok(original);
    const again = await log.append({
      partition: letter.partition,
      events: [decodeEntry(original).event],
    });
    assert.equal(again.kind, 'appended');
    await waitForAllAcknowledged(h);
    assert.equal((await lettersOf(poison.body.event_id)).length, 1, 'one letter per event');

    const discarded = await h.request(
      'DELETE',
      `/admin/dead-letters/${poison.body.event_id}`,
      { reason: 'a wrong note' },
      auth(TOKEN),
    );
    assert.equal(discarded.status, 200, discarded.text);
    assert.deepEqual(await lettersOf(poison.body.event_id), []);
    const next = await h.request('PATCH', `/executed_obs_units/${unit.id}`, { notes: 'next' });
    assert.equal(
      await settledState(h, next.body.event_id),
      'confirmed',
      'applied, not held behind a letter the index lost',
    );
  });

  void it('pages the CLI through dead letters with --cursor, and says when more are left', async () => {
    const letters = [];
    for (const n of [1, 2, 3]) {
      letters.push(await deadLetteredStart(`paged-${n}`));
    }
    const ours = new Set(letters.map((l) => l.event_id));
    const seen: string[] = [];
    let cursor: string | undefined;
    let pages = 0;
    do {
      const args = ['dead', 'list', '--limit', '2', ...(cursor ? ['--cursor', cursor] : [])];
      const text = await runCli(h, args);
      assert.equal(text.code, 0, text.stderr);
      const json = await runCli(h, [...args, '--json']);
      const page = JSON.parse(json.stdout) as {
        items: { event_id: string }[];
        next_cursor: string | null;
      };
      assert.ok(page.items.length <= 2);
      seen.push(...page.items.map((item) => item.event_id));
      cursor = page.next_cursor ?? undefined;
      if (cursor) {
        assert.match(
          text.stdout,
          new RegExp(`^more: outpost dead list --limit 2 --cursor ${cursor}$`, 'm'),
        );
      } else {
        assert.doesNotMatch(text.stdout, /^more:/m);
      }
      pages += 1;
    } while (cursor && pages < 20);
    assert.ok(pages >= 2, 'more than one page');
    assert.deepEqual(
      seen.filter((id) => ours.has(id)).sort(),
      [...ours].sort(),
      'every dead letter listed once',
    );
    assert.equal(new Set(seen).size, seen.length, 'none twice');
    const bad = await runCli(h, ['dead', 'list', '--cursor', 'bogus']);
    assert.equal(bad.code, 1);
    assert.match(bad.stderr, /--cursor takes the next_cursor/);
    for (const letter of letters) {
      const discarded = await runCli(h, [
        'dead',
        'discard',
        letter.event_id,
        '--reason',
        'paging test',
      ]);
      assert.equal(discarded.code, 0, discarded.stderr);
    }
  });

  void it('discards a dead letter only with a reason, and keeps an audit record', async () => {
    const poison = await deadLetteredStart('discard-me');

    const noReason = await h.request(
      'DELETE',
      `/admin/dead-letters/${poison.event_id}`,
      undefined,
      auth(TOKEN),
    );
    assert.equal(noReason.status, 400);
    const tooLong = await h.request(
      'DELETE',
      `/admin/dead-letters/${poison.event_id}?reason=${'x'.repeat(2001)}`,
      undefined,
      auth(TOKEN),
    );
    assert.equal(tooLong.status, 400, 'a reason in the query is held to the body’s limit');
    assert.deepEqual(
      tooLong.body.error.details.map((d: { path: string }) => d.path),
      ['reason'],
    );
    const discard = (reason: string) =>
      h.request(
        'DELETE',
        `/admin/dead-letters/${poison.event_id}`,
        { reason },
        {
          ...auth(TOKEN),
          'idempotency-key': 'discard-1',
        },
      );
    const discarded = await discard('test instrument, not real data');
    assert.equal(discarded.status, 200, discarded.text);
    assert.equal(discarded.body.discarded, true);
    const repeated = await discard('test instrument, not real data');
    assert.equal(repeated.headers.get('idempotent-replayed'), 'true');
    assert.deepEqual(repeated.body, discarded.body);
    const reworded = await discard(' test instrument, not real data');
    assert.equal(reworded.status, 409, 'another JSON body, though its reason trims the same');
    assert.equal(reworded.body.error.code, 'idempotency_key_reused');
    const gone = await h.request(
      'DELETE',
      `/admin/dead-letters/${poison.event_id}?reason=again`,
      undefined,
      auth(TOKEN),
    );
    assert.equal(gone.status, 404);
    const partition = (await h.get(`/executed_obs_units/${poison.id}`)).status;
    assert.equal(partition, 404, 'a discarded start never applied');
    const audits = await Promise.all(
      Array.from({ length: h.config.partitions }, (_, p) =>
        h.redis.xrange(`${h.config.namespace}:{p${p}}:discarded`, '-', '+'),
      ),
    );
    const records = audits.flat().map(([, fields]) => {
      const record: Record<string, string> = {};
      for (let i = 0; i + 1 < fields.length; i += 2) {
        record[fields[i] as string] = fields[i + 1] as string;
      }
      return record;
    });
    const record = records.find((r) => r.event_id === poison.event_id);
    assert.ok(record, JSON.stringify(records));
    assert.equal(record.reason, 'test instrument, not real data');
    // Whole, so a discard found wrong after retention trimmed the stream can still be undone.
    assert.equal(record.aggregate_type, 'executed_obs_unit');
    assert.equal(JSON.parse(record.data ?? 'null').obs_unit_id, 'discard-me');
    assert.ok(JSON.parse(record.attempts ?? '[]').length >= 1, record.attempts);
  });

  void it('names undecodable entries of the same entry id in two partitions apart, and acts on the one named', async () => {
    // Entry ids are per stream: two partitions take the same one in the same millisecond. Past
    // both streams' last ids, and no further ahead of the clock: later entries follow it.
    const lastMs = await Promise.all(
      [2, 3].map(async (p) => {
        const info = (await h.redis.xinfo(
          'STREAM',
          `${h.config.namespace}:{p${p}}:events`,
        )) as unknown[];
        return Number(String(info[info.indexOf('last-generated-id') + 1]).split('-')[0]);
      }),
    );
    const entryId = `${Math.max(Date.now(), ...lastMs) + 1}-0`;
    for (const partition of [2, 3]) {
      await h.redis.xadd(
        `${h.config.namespace}:{p${partition}}:events`,
        entryId,
        'junk',
        `p${partition}`,
      );
    }
    const [inTwo, inThree] = [`undecodable-2-${entryId}`, `undecodable-3-${entryId}`];
    for (const id of [inTwo, inThree]) {
      await waitFor(
        async () =>
          (await h.request('GET', `/admin/dead-letters/${id}`, undefined, auth(TOKEN))).status ===
          200,
        `${id} to be dead-lettered`,
      );
    }
    const listed = await h.request('GET', '/admin/dead-letters?limit=1000', undefined, auth(TOKEN));
    const ids = listed.body.items.map((d: { id: string }) => d.id);
    assert.ok(ids.includes(inTwo) && ids.includes(inThree), ids.join(' '));
    // The entry id alone names both: refused, with the names that tell them apart.
    const ambiguous = await h.request(
      'DELETE',
      `/admin/dead-letters/undecodable-${entryId}?reason=which`,
      undefined,
      auth(TOKEN),
    );
    assert.equal(ambiguous.status, 409, ambiguous.text);
    assert.match(ambiguous.body.error.message, new RegExp(`${inTwo} or ${inThree}`));
    const cliAmbiguous = await runCli(h, ['dead', 'show', `undecodable-${entryId}`]);
    assert.equal(cliAmbiguous.code, 1);
    assert.match(cliAmbiguous.stderr, /names dead letters in partitions 2, 3/);

    const cliDiscard = await runCli(h, ['dead', 'discard', inThree, '--reason', 'junk']);
    assert.equal(cliDiscard.code, 0, cliDiscard.stderr);
    const left = await h.request('GET', `/admin/dead-letters/${inTwo}`, undefined, auth(TOKEN));
    assert.equal(left.status, 200, 'the other partition keeps its letter');
    assert.deepEqual(left.body.data, { junk: 'p2' });
    assert.equal(
      (await h.request('GET', `/admin/dead-letters/${inThree}`, undefined, auth(TOKEN))).status,
      404,
    );
    const discarded = await h.request(
      'DELETE',
      `/admin/dead-letters/undecodable-${entryId}?reason=junk`,
      undefined,
      auth(TOKEN),
    );
    assert.equal(discarded.status, 200, 'one partition left holding it: the entry id names it');
    assert.equal(
      await h.redis.sismember(
        `${h.config.namespace}:{p2}:blocked-aggregates`,
        `undecodable-${entryId}`,
      ),
      0,
    );
  });

  void it('lists, shows and discards an entry nobody can decode, and says why it cannot be retried', async () => {
    // Written past the API, as a foreign or corrupted writer would: no event id, nothing to decode.
    const entryId = await h.redis.xadd(`${h.config.namespace}:{p1}:events`, '*', 'junk', 'garbled');
    const id = `undecodable-1-${entryId}`;
    const path = `/admin/dead-letters/${id}`;
    await waitFor(
      async () => (await h.request('GET', path, undefined, auth(TOKEN))).status === 200,
      'the undecodable entry to be dead-lettered',
    );
    const shown = (await h.request('GET', path, undefined, auth(TOKEN))).body;
    assert.equal(shown.id, id);
    assert.equal(shown.partition, 1);
    assert.equal(shown.original_entry_id, entryId);
    assert.deepEqual(shown.data, { junk: 'garbled' }, 'its raw fields are shown');
    const listed = await h.request('GET', '/admin/dead-letters?limit=1000', undefined, auth(TOKEN));
    assert.ok(
      listed.body.items.some((d: { id: string }) => d.id === id),
      'listed under the id the endpoints take',
    );

    const retry = await h.request('POST', `${path}/retry`, undefined, auth(TOKEN));
    assert.equal(retry.status, 409, retry.text);
    assert.match(retry.body.error.message, /cannot be decoded.*discard it/);
    const cliRetry = await runCli(h, ['dead', 'retry', id]);
    assert.equal(cliRetry.code, 1);
    assert.match(
      cliRetry.stderr,
      /cannot be retried: entry \S+ cannot be decoded: .*; discard it: outpost dead discard/,
    );
    const cliShow = await runCli(h, ['dead', 'show', id]);
    assert.equal(cliShow.code, 0, cliShow.stderr);
    assert.match(cliShow.stdout, /garbled/);
    // The name earlier builds listed it under still finds it, while no other partition has one.
    const earlierName = `/admin/dead-letters/undecodable-${entryId}`;
    assert.equal((await h.request('GET', earlierName, undefined, auth(TOKEN))).body.id, id);

    const cliDiscard = await runCli(h, ['dead', 'discard', id, '--reason', 'corrupted entry']);
    assert.equal(cliDiscard.code, 0, cliDiscard.stderr);
    assert.equal((await h.request('GET', path, undefined, auth(TOKEN))).status, 404);
    const blocked = await h.redis.sismember(`${h.config.namespace}:{p1}:blocked-aggregates`, id);
    assert.equal(blocked, 0, 'its stand-in aggregate no longer counts as blocked');
    const unknown = await h.request(
      'GET',
      '/admin/dead-letters/undecodable-not-an-entry-id',
      undefined,
      auth(TOKEN),
    );
    assert.equal(unknown.status, 404);
  });

  void it('names an entry whose event id is in upper case by its entry, and discards it so its aggregate applies again', async () => {
    // Written past the API by a writer that spells UUIDs in upper case: the codec refuses the id.
    const partition = 2;
    const shouting = eventIn(h, partition, {
      type: 'ExecutedObsUnitStarted',
      aggregate_type: 'executed_obs_unit',
      data: { obs_unit_id: 'shouting', instrument: 'x' },
    });
    const event = { ...shouting, event_id: shouting.event_id.toUpperCase() } as Envelope;
    const stream = `${h.config.namespace}:{p${partition}}:events`;
    const entryId = await h.redis.xadd(stream, '*', ...encodeEntryFields(event));
    const id = `undecodable-${partition}-${entryId}`;
    const path = `/admin/dead-letters/${id}`;
    await waitFor(
      async () => (await h.request('GET', path, undefined, auth(TOKEN))).status === 200,
      'the entry to be dead-lettered under its entry id',
    );
    const cliList = await runCli(h, ['dead', 'list', '--json']);
    assert.equal(cliList.code, 0, cliList.stderr);
    const listedIds = (JSON.parse(cliList.stdout) as { items: { id: string }[] }).items.map(
      (d) => d.id,
    );
    assert.ok(listedIds.includes(id), 'listed under the name the commands take');
    assert.ok(!listedIds.includes(event.event_id), 'not under the id no command finds');
    const cliShow = await runCli(h, ['dead', 'show', id]);
    assert.equal(cliShow.code, 0, cliShow.stderr);
    const cliRetry = await runCli(h, ['dead', 'retry', id]);
    assert.equal(cliRetry.code, 1);
    assert.match(cliRetry.stderr, /cannot be decoded: .*lower-case UUID.*; discard it/);

    const cliDiscard = await runCli(h, ['dead', 'discard', id, '--reason', 'upper-case writer']);
    assert.equal(cliDiscard.code, 0, cliDiscard.stderr);
    assert.equal((await h.request('GET', path, undefined, auth(TOKEN))).status, 404);
    const blocked = await h.redis.smembers(
      `${h.config.namespace}:{p${partition}}:blocked-aggregates`,
    );
    assert.ok(!blocked.includes(event.aggregate_id), 'its aggregate is no longer blocked');
  });

  void it('says degraded, with the buffer unknown, when /health cannot read the buffer', async () => {
    const before = (await h.get('/health')).body;
    assert.notEqual(before.status, 'unhealthy', JSON.stringify(before));
    assert.equal(typeof before.transaction_buffer.size, 'number');
    // A partition's dead letters that are not a stream: Redis answers WRONGTYPE to the buffer's
    // read while it takes writes as ever.
    // Earlier tests leave the stream (empty or not): it is put aside and back.
    const { deadLetters } = eventLogOf(h).keys(0);
    const aside = `${deadLetters}:aside`;
    const existed = (await h.redis.exists(deadLetters)) === 1;
    if (existed) {
      await h.redis.rename(deadLetters, aside);
    }
    await h.redis.set(deadLetters, 'not a stream');
    try {
      const health = await h.get('/health');
      assert.equal(health.status, 200, 'writes are still accepted');
      assert.equal(health.body.status, 'degraded', health.text);
      assert.equal(health.body.redis, 'connected');
      assert.deepEqual(
        {
          size: health.body.transaction_buffer.size,
          failed: health.body.transaction_buffer.failed,
          oldest_pending_seconds: health.body.transaction_buffer.oldest_pending_seconds,
        },
        { size: null, failed: null, oldest_pending_seconds: null },
      );
    } finally {
      await h.redis.del(deadLetters);
      if (existed) {
        await h.redis.rename(aside, deadLetters);
      }
    }
    assert.equal((await h.get('/health')).body.status, before.status);
  });

  void it('shows what waits and why: projection or replica, with the replica position', async () => {
    await h.pauseReplay();
    try {
      const unit = (
        await h.post('/executed_obs_units/start', { obs_unit_id: 'inspect', instrument: 'x' })
      ).body;
      await waitFor(
        async () => (await h.get(`/events/${unit.event_id}`)).body.state === 'applied',
        'applied',
      );
      const report = await h.request('GET', '/admin/pending', undefined, auth(TOKEN));
      assert.equal(report.status, 200);
      const entry = report.body.entries.find(
        (e: { event_id: string }) => e.event_id === unit.event_id,
      );
      assert.ok(entry, JSON.stringify(report.body).slice(0, 2000));
      assert.equal(entry.waiting_for, 'replica');
      assert.match(entry.commit_lsn, /\//);
      assert.equal(entry.type, 'ExecutedObsUnitStarted');
      assert.ok(entry.deliveries >= 1);
      const partition = report.body.partitions.find(
        (p: { partition: number }) => p.partition === entry.partition,
      );
      assert.equal(partition.count, 1);
      assert.equal(partition.consumers[h.config.consumer], 1);
      assert.match(report.body.replica.replay_lsn, /\//);
      assert.ok(report.body.replica.lag_bytes > 0);
      // Why, in PostgreSQL's terms: the operator need not query the replica to find out.
      assert.equal(report.body.replica.replay_paused, true);
      assert.equal(report.body.replica.wal_receiver, 'streaming');
      assert.match(report.body.replica.reason, /replay is paused on the replica/);
      // Received (streamed) though not replayed: at most a moment after the commit.
      await waitFor(
        async () =>
          parseLsn(
            (await h.request('GET', '/admin/pending', undefined, auth(TOKEN))).body.replica
              .receive_lsn,
          ) >= parseLsn(entry.commit_lsn),
        'the replica to receive the commit it does not replay',
      );
      const paused = (await h.get('/health')).body;
      assert.equal(paused.status, 'degraded', 'nothing is acknowledged while replay is paused');
      const health = paused.replication_lag;
      assert.equal(health.replay_paused, true);
      assert.equal(health.reason, report.body.replica.reason);
      assert.equal(await scrapeMetric(h.url, 'outpost_replica_replay_paused'), 1);

      const filtered = await h.request(
        'GET',
        `/admin/pending?partition=${entry.partition}&min_idle_ms=3600000`,
        undefined,
        auth(TOKEN),
      );
      assert.equal(filtered.body.entries.length, 0);
      const bad = await h.request('GET', '/admin/pending?partition=99', undefined, auth(TOKEN));
      assert.equal(bad.status, 400);
      // A misspelt filter is refused, not ignored: the whole log shown as if filtered misleads.
      for (const path of ['/admin/pending?partiton=1', '/admin/dead-letters?limt=5']) {
        const misspelt = await h.request('GET', path, undefined, auth(TOKEN));
        assert.equal(misspelt.status, 400, `${path}: ${misspelt.text}`);
        assert.equal(misspelt.body.error.code, 'validation_failed');
        assert.deepEqual(misspelt.body.error.details, [
          { path: path.includes('partiton') ? 'partiton' : 'limt', message: 'unknown field' },
        ]);
      }

      // An operator's shell configured with one partition more than the site has is told so,
      // rather than shown part of the log.
      const extra = h.config.partitions;
      const wider = { ...h.envOf(), OUTPOST_PARTITIONS: String(extra + 1) };
      const refused = await runCliWith(wider, ['pending']);
      assert.equal(refused.code, 1);
      assert.match(
        refused.stderr,
        new RegExp(
          `this shell has OUTPOST_PARTITIONS=${extra + 1}, but the site's log has ${extra} partitions: set OUTPOST_PARTITIONS=${extra}`,
        ),
      );
      // A shell with another site name (OUTPOST_SITE unset on another host) would look for
      // leases no projector holds, and report none of the site's projectors.
      const elsewhere = await runCliWith({ ...h.envOf(), OUTPOST_SITE: 'ops-laptop' }, ['pending']);
      assert.equal(elsewhere.code, 1);
      assert.match(
        elsewhere.stderr,
        new RegExp(
          `this shell has OUTPOST_SITE=ops-laptop, but the site's log is served as site ${h.config.site}: set OUTPOST_SITE=${h.config.site}`,
        ),
      );
      // A shell with fewer partitions than the site, asked for one past its own count, is told
      // the cause (its env file), not that the partition is past the shell's count.
      const narrower = { ...h.envOf(), OUTPOST_PARTITIONS: String(extra - 1) };
      const past = await runCliWith(narrower, ['pending', '--partition', String(extra - 1)]);
      assert.equal(past.code, 1);
      assert.match(past.stderr, new RegExp(`this shell has OUTPOST_PARTITIONS=${extra - 1}, but`));
      const noSuch = await runCli(h, ['pending', '--partition', String(extra)]);
      assert.equal(noSuch.code, 1);
      assert.match(
        noSuch.stderr,
        new RegExp(
          `^outpost: --partition must be below ${extra}, the site's partition count$`,
          'm',
        ),
      );
      // With the count's record gone too (a Redis that lost its data), the partition past the
      // site's has no consumer group, which the report says instead of failing.
      const countKey = partitionCountKey(h.config.namespace);
      await h.redis.del(countKey);
      try {
        const groupless = await runCliWith(wider, ['pending']);
        assert.equal(groupless.code, 0, groupless.stderr);
        assert.match(
          groupless.stdout,
          new RegExp(`^partition\\(s\\) ${extra} have no consumer group on this Redis`, 'm'),
        );
        const partitions = JSON.parse(
          (await runCliWith(wider, ['pending', '--json'])).stdout,
        ).partitions;
        assert.deepEqual(
          partitions.map((p: { no_group?: boolean }) => p.no_group === true),
          [...Array(extra + 1).keys()].map((p) => p === extra),
        );
      } finally {
        await h.redis.set(countKey, String(extra));
      }

      const cli = await runCli(h, ['pending']);
      assert.equal(cli.code, 0, cli.stderr);
      assert.match(
        cli.stdout,
        /^\d+ events? pending in [1-9]\d* of \d+ partitions, the oldest accepted \d+s ago: \d+ to be applied \(\d+ not yet read by a projector\), [1-9]\d* applied and waiting for the replica$/m,
      );
      assert.match(cli.stdout, /WAITING_FOR/);
      assert.match(cli.stdout, new RegExp(unit.event_id));
      assert.match(cli.stdout, /replica replayed up to/);
      assert.match(cli.stdout, /replay is paused on the replica .*pg_wal_replay_resume\(\)/);
      const cliJson = await runCli(h, [
        'pending',
        '--json',
        '--partition',
        String(entry.partition),
      ]);
      assert.equal(JSON.parse(cliJson.stdout).entries[0].waiting_for, 'replica');
      for (const idle of ['soon', '60', '060']) {
        const cliBad = await runCli(h, ['pending', '--idle', idle]);
        assert.equal(cliBad.code, 1, idle);
        assert.match(cliBad.stderr, /--idle takes a duration with its unit/, idle);
      }
      // An entry waiting for the replica ages: the projector's rounds over idle entries
      // (every OUTPOST_CLAIM_IDLE_MS, 2 s here) must not make it look fresh.
      await waitFor(
        async () =>
          (
            await h.request(
              'GET',
              `/admin/pending?partition=${entry.partition}&min_idle_ms=5000`,
              undefined,
              auth(TOKEN),
            )
          ).body.entries.some((e: { event_id: string }) => e.event_id === unit.event_id),
        'the waiting entry to have been idle for 5 s',
      );
      const cliOld = await runCli(h, ['pending', '--json', '--idle', '5s']);
      assert.equal(cliOld.code, 0, cliOld.stderr);
      assert.ok(
        JSON.parse(cliOld.stdout).entries.some(
          (e: { event_id: string; idle_ms: number }) =>
            e.event_id === unit.event_id && e.idle_ms >= 5000,
        ),
        cliOld.stdout.slice(0, 2000),
      );
      const cliIdle = await runCli(h, ['pending', '--json', '--idle', '1h']);
      assert.equal(cliIdle.code, 0, cliIdle.stderr);
      assert.deepEqual(JSON.parse(cliIdle.stdout).entries, [], 'nothing has waited an hour');
    } finally {
      await h.replica.query('SELECT pg_wal_replay_resume()');
    }
    await waitForAllAcknowledged(h);
    // Acknowledged as replay passes each commit, while the rest of the paused WAL may still be
    // replaying with its old commit times: the lag's reason clears once it is all replayed.
    let resumedHealth = (await h.get('/health')).body;
    await waitFor(async () => {
      resumedHealth = (await h.get('/health')).body;
      return resumedHealth.replication_lag?.reason === null;
    }, 'the replica to replay what it held back').catch(() => undefined);
    assert.equal(resumedHealth.status, 'healthy');
    const resumed = resumedHealth.replication_lag;
    assert.equal(resumed.replay_paused, false);
    assert.equal(resumed.reason, null);
    assert.equal(await scrapeMetric(h.url, 'outpost_replica_replay_paused'), 0);
  });

  void it('lists the oldest waiting entries whichever partitions hold them, and says when it leaves some out', async () => {
    /** A unit started in `partition`: a new unit's partition follows from its Idempotency-Key. */
    const startIn = async (partition: number, name: string) => {
      let key = name;
      for (
        let n = 0;
        partitionForText(`POST /executed_obs_units/start ${key}`, h.config.partitions) !==
        partition;
        n += 1
      ) {
        key = `${name}-${n}`;
      }
      const started = await h.post(
        '/executed_obs_units/start',
        { obs_unit_id: name, instrument: 'x' },
        { 'idempotency-key': key },
      );
      assert.equal(started.status, 201, started.text);
      return started.body as { id: string; event_id: string };
    };
    await waitForAllAcknowledged(h);
    await h.pauseReplay();
    try {
      // The oldest waits in the last partition and newer ones in the first: a list filled
      // partition by partition would show only the newer ones.
      const oldest = await startIn(h.config.partitions - 1, 'oldest');
      const newer = [await startIn(0, 'newer-a'), await startIn(0, 'newer-b')];
      for (const unit of [oldest, ...newer]) {
        await waitFor(
          async () => (await h.get(`/events/${unit.event_id}`)).body.state === 'applied',
          'applied',
        );
      }
      const all = await h.request('GET', '/admin/pending?limit=1000', undefined, auth(TOKEN));
      assert.equal(all.body.truncated, false);
      assert.deepEqual(
        all.body.entries.map((e: { event_id: string }) => e.event_id).sort(),
        [oldest, ...newer].map((u) => u.event_id).sort(),
      );
      const cut = await h.request('GET', '/admin/pending?limit=1', undefined, auth(TOKEN));
      assert.equal(cut.body.truncated, true);
      assert.deepEqual(
        cut.body.entries.map((e: { event_id: string }) => e.event_id),
        [oldest.event_id],
      );
      const cli = await runCli(h, ['pending', '--limit', '1']);
      assert.equal(cli.code, 0, cli.stderr);
      assert.match(cli.stdout, new RegExp(oldest.event_id));
      assert.doesNotMatch(cli.stdout, new RegExp(`${newer[0]?.event_id}|${newer[1]?.event_id}`));
      assert.match(
        cli.stdout,
        /showing the 1 oldest entries of those that match: --limit shows more/,
      );
      const whole = await runCli(h, ['pending']);
      assert.doesNotMatch(whole.stdout, /showing the/, 'nothing left out, nothing said');
    } finally {
      await h.replica.query('SELECT pg_wal_replay_resume()');
    }
    await waitForAllAcknowledged(h);
  });
});

/** A new instrument configuration's event in `partition`, as the API would have accepted it. */
const configurationEvent = (h: Harness, partition: number): Envelope =>
  eventIn(h, partition, {
    type: 'InstrumentConfigurationCreated',
    aggregate_type: 'instrument_configuration',
    data: { instrument: 'x', configuration: {} },
  });

/** Files `event` as a dead letter of `partition` by hand, as the projector would, blocking its aggregate. */
const fileDeadLetter = async (h: Harness, partition: number, event: Envelope, deadId: string) => {
  const keys = eventLogOf(h).keys(partition);
  await h.redis.xadd(
    keys.deadLetters,
    deadId,
    ...encodeEntryFields(event),
    'original_entry_id',
    deadId,
    'error',
    'filed by hand',
    'attempts',
    '[]',
  );
  await h.redis.hset(keys.deadIndex, event.event_id, deadId);
  await h.redis.sadd(keys.blockedAggregates, event.aggregate_id);
};

void describe('dead retry --all', () => {
  let h: Harness;
  before(async () => {
    h = await Harness.start();
  });
  after(async () => {
    await h?.close();
  });

  void it('retries what can apply and passes over an undecodable entry, saying why', async () => {
    await h.main.query(
      "ALTER TABLE executed_obs_units ADD CONSTRAINT no_poison CHECK (instrument <> 'poison') NOT VALID",
    );
    const poison = (
      await h.post('/executed_obs_units/start', { obs_unit_id: 'retry-all', instrument: 'poison' })
    ).body as { id: string; event_id: string };
    const entryId = await h.redis.xadd(`${h.config.namespace}:{p0}:events`, '*', 'junk', 'x');
    const undecodable = `undecodable-0-${entryId}`;
    await waitFor(
      async () => (await h.get(`/events/${poison.event_id}`)).body?.state === 'dead',
      'the poison start to be dead-lettered',
    );
    await waitFor(
      async () =>
        (await h.request('GET', `/admin/dead-letters/${undecodable}`, undefined, auth(TOKEN)))
          .status === 200,
      'the undecodable entry to be dead-lettered',
    );
    await h.main.query('ALTER TABLE executed_obs_units DROP CONSTRAINT no_poison');

    // An operator used to replay's dry run: refused, not taken for the real thing.
    for (const args of [
      ['dead', 'retry', '--all', '--dry-run'],
      ['dead', 'retry', poison.event_id, '--all'],
      ['dead', 'retry', poison.event_id, undecodable],
    ]) {
      const refused = await runCli(h, args);
      assert.equal(refused.code, 1, args.join(' '));
      assert.match(refused.stderr, /\(nothing was done\)$/m, refused.stderr);
    }
    assert.equal(
      (await h.get(`/events/${poison.event_id}`)).body?.state,
      'dead',
      'nothing was retried',
    );

    const cli = await runCli(h, ['dead', 'retry', '--all', '--json']);
    assert.equal(cli.code, 1, 'a letter is left');
    assert.match(cli.stderr, /^outpost: 1 of 2 dead letter\(s\) were not retried/m);
    const rows = JSON.parse(cli.stdout).items as {
      id: string;
      retried: boolean;
      why_not?: string;
    }[];
    assert.deepEqual(
      rows
        .map(({ id, retried, why_not }) => ({ id, retried, why_not }))
        .sort((a, b) => a.id.localeCompare(b.id)),
      [
        { id: poison.event_id, retried: true, why_not: undefined },
        { id: undecodable, retried: false, why_not: 'undecodable: discard it with a reason' },
      ].sort((a, b) => a.id.localeCompare(b.id)),
    );
    await waitFor(
      async () => (await h.get(`/executed_obs_units/${poison.id}`)).status === 200,
      'the retried start to apply',
    );
    const still = await h.request(
      'GET',
      `/admin/dead-letters/${undecodable}`,
      undefined,
      auth(TOKEN),
    );
    assert.equal(still.status, 200, 'the undecodable entry waits to be discarded');
  });

  void it('retries letters of two partitions filed in the same millisecond, each its own', async () => {
    // Dead-letter ids are entry ids of each partition's stream: two can be alike.
    const deadId = `${Date.now() + 60_000}-0`;
    const events = [0, 1].map((partition) => configurationEvent(h, partition));
    for (const [partition, event] of events.entries()) {
      await fileDeadLetter(h, partition, event, deadId);
    }
    const cli = await runCli(h, ['dead', 'retry', '--all', '--json']);
    const rows = (
      JSON.parse(cli.stdout).items as { id: string; retried: boolean; entry_id: string }[]
    ).filter((row) => events.some((e) => e.event_id === row.id));
    assert.equal(rows.length, 2, cli.stdout);
    assert.ok(
      rows.every((row) => row.retried),
      cli.stdout,
    );
    assert.notEqual(rows[0]?.entry_id, rows[1]?.entry_id);
    for (const event of events) {
      await waitFor(
        async () => (await h.get(`/events/${event.event_id}`)).body?.state === 'confirmed',
        `the letter of partition ${partitionOf(event.aggregate_id, h.config.partitions)} to be applied`,
      );
    }
  });

  void it('reports every letter when a failure stops the run, those retried before it too', async () => {
    const log = eventLogOf(h);
    const first = Date.now() + 120_000;
    // A unit's start and, filed after the others, its patch: the start's retry puts both back.
    // Letters of units only: retry --all puts units back in the order they were filed.
    const unitEvent = (
      partition: number,
      unitId: string,
      type: string,
      version: number,
      data: object,
    ) =>
      eventIn(h, partition, {
        type,
        version,
        data,
        aggregate_type: 'executed_obs_unit',
        aggregate_id: unitId,
      });
    const unitStart = (
      partition: number,
      unitId = newIdInPartition(partition, h.config.partitions),
    ) =>
      unitEvent(partition, unitId, 'ExecutedObsUnitStarted', 2, {
        obs_unit_id: `stopped-run-${partition}`,
        instrument: 'x',
        start_time: new Date().toISOString(),
        instrument_configuration_id: null,
        notes: null,
        metadata: {},
      });
    const start = unitStart(0);
    const patch = unitEvent(0, start.aggregate_id, 'ExecutedObsUnitUpdated', 1, { notes: 'after' });
    const events = [start, unitStart(1), unitStart(2), patch];
    for (const [i, event] of events.entries()) {
      await fileDeadLetter(
        h,
        partitionOf(event.aggregate_id, h.config.partitions),
        event,
        `${first + i}-0`,
      );
    }
    // The second letter's in-flight bucket holds a string: Redis refuses its retry (WRONGTYPE)
    // before writing anything, as it would refuse every retry once out of memory.
    const [, broken] = events;
    assert.ok(broken);
    const bucket = log.keys(1).inflight(broken.aggregate_type, broken.aggregate_id);
    await h.redis.set(bucket, 'not a hash');
    try {
      const cli = await runCli(h, ['dead', 'retry', '--all', '--json']);
      assert.equal(cli.code, 1, cli.stderr);
      assert.match(
        cli.stderr,
        new RegExp(
          `^outpost: retry --all stopped at dead letter ${broken.event_id}: .*WRONGTYPE`,
          'm',
        ),
      );
      const rows = JSON.parse(cli.stdout).items as {
        id: string;
        retried: boolean;
        why_not?: string;
      }[];
      assert.deepEqual(
        events.map((e) => {
          const row = rows.find((r) => r.id === e.event_id);
          return {
            retried: row?.retried,
            why_not: row?.why_not?.replace(/WRONGTYPE.*/, 'WRONGTYPE'),
          };
        }),
        [
          { retried: true, why_not: undefined },
          { retried: false, why_not: 'failed: WRONGTYPE' },
          { retried: false, why_not: `not tried: the run stopped at ${broken.event_id}` },
          // Back in the stream with its unit's start, before the run stopped.
          { retried: true, why_not: undefined },
        ],
        cli.stdout,
      );
      assert.match(cli.stderr, /; 2 of \d+ dead letter\(s\) were retried before it/);
    } finally {
      await h.redis.del(bucket);
    }
    // Run again, it puts back the rest (the first test's undecodable entry stays, as there).
    const rest = await runCli(h, ['dead', 'retry', '--all', '--json']);
    const restRows = JSON.parse(rest.stdout).items as { id: string; retried: boolean }[];
    assert.deepEqual(
      events.slice(1, 3).map((e) => restRows.find((r) => r.id === e.event_id)?.retried),
      [true, true],
      rest.stdout,
    );
    for (const event of events) {
      await waitFor(
        async () => (await h.get(`/events/${event.event_id}`)).body?.state === 'confirmed',
        `the letter of partition ${partitionOf(event.aggregate_id, h.config.partitions)} to be applied`,
      );
    }
  });

  void it("puts a unit's start back before its files, though the start's letter was filed again later", async () => {
    await h.main.query(
      "ALTER TABLE executed_obs_units ADD CONSTRAINT no_poison CHECK (instrument <> 'poison') NOT VALID",
    );
    const unit = (
      await h.post('/executed_obs_units/start', {
        obs_unit_id: 'upstream-first',
        instrument: 'poison',
      })
    ).body as { id: string; event_id: string };
    const state = async (eventId: string) => (await h.get(`/events/${eventId}`)).body?.state;
    await waitFor(async () => (await state(unit.event_id)) === 'dead', 'the start dead-lettered');
    const file = (
      await h.post('/raw_data_files', {
        executed_obs_unit_id: unit.id,
        files: [
          { path: '/o/upstream-first', size_bytes: 1, checksum: 'ab', checksum_algorithm: 'xxh64' },
        ],
      })
    ).body as { event_ids: string[] };
    const [fileEvent = ''] = file.event_ids;
    await waitFor(async () => (await state(fileEvent)) === 'dead', 'the file to follow its start');
    const letterOf = async (eventId: string) =>
      (await h.request('GET', `/admin/dead-letters/${eventId}`, undefined, auth(TOKEN))).body as
        | { original_entry_id: string }
        | undefined;
    const firstFiled = (await letterOf(unit.event_id))?.original_entry_id;
    // Retried before its cause was fixed, the start is filed again: its letter is now younger
    // than its file's.
    assert.equal((await retryLetter(h, unit.event_id)).status, 200);
    await waitFor(async () => {
      const again = (await letterOf(unit.event_id))?.original_entry_id;
      return again !== undefined && again !== firstFiled;
    }, 'the start to be filed again');
    await h.main.query('ALTER TABLE executed_obs_units DROP CONSTRAINT no_poison');

    const cli = await runCli(h, ['dead', 'retry', '--all', '--json']);
    const rows = (JSON.parse(cli.stdout).items as { id: string; retried: boolean }[]).filter(
      (row) => row.id === unit.event_id || row.id === fileEvent,
    );
    assert.deepEqual(
      rows.map((row) => [row.id, row.retried]),
      [
        [unit.event_id, true],
        [fileEvent, true],
      ],
      cli.stdout,
    );
    await waitFor(
      async () =>
        (await state(unit.event_id)) === 'confirmed' && (await state(fileEvent)) === 'confirmed',
      'the start and then its file applied',
    );
  });
});

void describe('dead retry while later events of the aggregate wait', () => {
  const site = apiOnlySite();

  void it("never applies a file without its unit: files of a dead start follow it, a discarded start's never apply", async () => {
    const h = site();
    let projector = await h.startService('projector');
    await h.main.query(
      "ALTER TABLE executed_obs_units ADD CONSTRAINT no_poison CHECK (instrument <> 'poison') NOT VALID",
    );
    const unit = (
      await h.post('/executed_obs_units/start', { obs_unit_id: 'orphans', instrument: 'poison' })
    ).body;
    const settled = (eventId: string) => settledState(h, eventId);
    assert.equal(await settled(unit.event_id), 'dead');
    await h.main.query('ALTER TABLE executed_obs_units DROP CONSTRAINT no_poison');
    const file = (path: string) => ({
      executed_obs_unit_id: unit.id,
      files: [{ path, size_bytes: 1, checksum: 'ab', checksum_algorithm: 'xxh64' }],
    });
    const letterOf = async (eventId: string) =>
      (await h.request('GET', `/admin/dead-letters/${eventId}`, undefined, auth(TOKEN))).body;

    // The start is dead: a file of its unit follows it, as the unit's own events would.
    const behind = (await h.post('/raw_data_files', file('/o/behind'))).body;
    assert.equal(await settled(behind.event_ids[0]), 'dead');
    assert.match((await letterOf(behind.event_ids[0])).error, /derives from is dead-lettered/);
    assert.deepEqual((await letterOf(behind.event_ids[0])).follows, [unit.id]);
    // Retried while the start is still dead, it would only follow it back: refused, saying which.
    const early = await h.request(
      'POST',
      `/admin/dead-letters/${behind.event_ids[0]}/retry`,
      undefined,
      auth(TOKEN),
    );
    assert.equal(early.status, 409, early.text);
    assert.match(
      early.body.error.message,
      new RegExp(
        `followed ${unit.id} into the dead letters, and the creation of ${unit.id} is still held there`,
      ),
    );
    assert.equal(await settled(behind.event_ids[0]), 'dead', 'nothing was put back');

    // A unit that is there holds back none of its files, whatever of its own is dead.
    const there = (
      await h.post('/executed_obs_units/start', { obs_unit_id: 'there', instrument: 'x' })
    ).body;
    assert.equal(await settled(there.event_id), 'confirmed');
    await deadLetteredPatch(h, there.id);
    const beside = (
      await h.post('/raw_data_files', { ...file('/o/beside'), executed_obs_unit_id: there.id })
    ).body;
    assert.equal(await settled(beside.event_ids[0]), 'confirmed');

    // A file already in the stream when the start is discarded finds no unit when it comes.
    await h.stopService(projector);
    const late = (await h.post('/raw_data_files', file('/o/late'))).body;
    // The CLI's discard names the file that followed the start in, which now derives from nothing.
    const discarded = await runCli(h, [
      'dead',
      'discard',
      unit.event_id,
      '--reason',
      'a test start',
    ]);
    assert.equal(discarded.code, 0, discarded.stderr);
    assert.match(
      discarded.stdout,
      new RegExp(
        `^1 dead letter\\(s\\) followed executed_obs_unit ${unit.id} into the dead letters and wait still; they derive from it, .*: ${behind.event_ids[0]}$`,
        'm',
      ),
    );
    projector = await h.startService('projector');
    assert.equal(await settled(late.event_ids[0]), 'dead');
    assert.match((await letterOf(late.event_ids[0])).error, /which is not applied/);
    assert.deepEqual(
      await h.mainRows('SELECT id FROM raw_data_files WHERE executed_obs_unit_id = $1', [unit.id]),
      [],
    );
    await h.stopService(projector);
  });

  void it("retries a file that followed its unit's dead start once the start is applied, whatever of the unit is dead since", async () => {
    const h = site();
    const projector = await h.startService('projector');
    try {
      await h.main.query(
        "ALTER TABLE executed_obs_units ADD CONSTRAINT no_poison_start CHECK (instrument <> 'poison') NOT VALID",
      );
      const unit = (
        await h.post('/executed_obs_units/start', { obs_unit_id: 'followed', instrument: 'poison' })
      ).body;
      assert.equal(await settledState(h, unit.event_id), 'dead');
      const file = (
        await h.post('/raw_data_files', {
          executed_obs_unit_id: unit.id,
          files: [{ path: '/f/1', size_bytes: 1, checksum: 'ab', checksum_algorithm: 'xxh64' }],
        })
      ).body;
      assert.equal(await settledState(h, file.event_ids[0]), 'dead');
      await h.main.query('ALTER TABLE executed_obs_units DROP CONSTRAINT no_poison_start');
      // The CLI's retry of the start names the file that waits on it: retried with the start
      // alone, it was left in the dead letters with nothing said.
      const start = await runCli(h, ['dead', 'retry', unit.event_id, '--json']);
      assert.equal(start.code, 0, start.stderr);
      assert.deepEqual(JSON.parse(start.stdout).followers_waiting, [file.event_ids[0]]);
      assert.equal(await settledState(h, unit.event_id), 'confirmed');
      // The unit is blocked again, by a later update of its own: its files apply all the same.
      await deadLetteredPatch(h, unit.id);
      const retried = await retryLetter(h, file.event_ids[0]);
      assert.equal(retried.status, 200, retried.text);
      assert.equal(await settledState(h, file.event_ids[0]), 'confirmed');
    } finally {
      await h.main.query(
        'ALTER TABLE executed_obs_units DROP CONSTRAINT IF EXISTS no_poison_start',
      );
      await h.stopService(projector);
    }
  });

  void it('puts letters back in the order the stream took them, whatever the clocks that stamped them said', async () => {
    const h = site();
    const projector = await h.startService('projector');
    const unit = (
      await h.post('/executed_obs_units/start', { obs_unit_id: 'clocks', instrument: 'x' })
    ).body;
    assert.equal(await settledState(h, unit.event_id), 'confirmed');
    const partition = partitionOf(unit.id, h.config.partitions);
    const patch = (data: { notes?: string; status: string }, acceptedAt: number): Envelope =>
      ({
        event_id: newIdInPartition(partition, h.config.partitions),
        aggregate_id: unit.id,
        aggregate_type: 'executed_obs_unit',
        type: 'ExecutedObsUnitUpdated',
        version: 1,
        site: 's',
        accepted_at: acceptedAt,
        data,
      }) as Envelope;
    // Appended in this order by two API hosts whose clocks disagree by a second. Only the first
    // is refused, and the status tells in which order they were applied.
    const first = patch({ notes: 'poison', status: 'paused' }, Date.now() + 1_000);
    const second = patch({ status: 'running' }, Date.now());
    await h.main.query(
      "ALTER TABLE executed_obs_units ADD CONSTRAINT no_poison CHECK (notes IS DISTINCT FROM 'poison') NOT VALID",
    );
    for (const event of [first, second]) {
      assert.equal((await eventLogOf(h).append({ partition, events: [event] })).kind, 'appended');
    }
    assert.equal(await settledState(h, first.event_id), 'dead');
    assert.equal(await settledState(h, second.event_id), 'dead', 'behind the first');
    await h.main.query('ALTER TABLE executed_obs_units DROP CONSTRAINT no_poison');

    const retry = await retryLetter(h, first.event_id);
    assert.equal(retry.status, 200, retry.text);
    for (const event of [first, second]) {
      assert.equal(await settledState(h, event.event_id), 'confirmed');
    }
    const applied = await h.mainRows<{ event_id: string }>(
      'SELECT event_id::text FROM events WHERE aggregate_id = $1 ORDER BY seq',
      [unit.id],
    );
    assert.deepEqual(
      applied.map((e) => e.event_id),
      [unit.event_id, first.event_id, second.event_id],
    );
    const read = (await h.get(`/executed_obs_units/${unit.id}`)).body;
    assert.deepEqual([read.notes, read.status], ['poison', 'running']);
    await h.stopService(projector);
  });

  void it("applies files behind their unit's start retried after them, counting no attempt while they wait", async () => {
    const h = site();
    // One attempt each: a file read before its retried start would be dead-lettered at once.
    const oneAttempt = { maxAttempts: 1 };
    let projector = await h.startService('projector', oneAttempt);
    await h.main.query(
      "ALTER TABLE executed_obs_units ADD CONSTRAINT no_poison CHECK (instrument <> 'poison') NOT VALID",
    );
    const unit = (
      await h.post('/executed_obs_units/start', { obs_unit_id: 'retried', instrument: 'poison' })
    ).body;
    assert.equal(await settledState(h, unit.event_id), 'dead');
    await h.main.query('ALTER TABLE executed_obs_units DROP CONSTRAINT no_poison');
    await h.stopService(projector);

    // Registered while the projector is away, so still in the stream when the start is retried.
    const files = await Promise.all(
      ['/r/1', '/r/2'].map(async (path) => {
        const posted = await h.post('/raw_data_files', {
          executed_obs_unit_id: unit.id,
          files: [{ path, size_bytes: 1, checksum: 'ab', checksum_algorithm: 'xxh64' }],
        });
        assert.equal(posted.status, 201, posted.text);
        return posted.body.event_ids[0] as string;
      }),
    );
    const retry = await retryLetter(h, unit.event_id);
    assert.equal(retry.status, 200, retry.text);

    // The acker takes the start away from the in-flight index the moment it is recorded applied,
    // before the projector has judged the files of the same batch.
    const record = EventLog.prototype.recordApplied;
    let ackedFirst = false;
    EventLog.prototype.recordApplied = async function (this: EventLog, ...args) {
      const unpublished = await record.apply(this, args);
      if (args[1].some((r) => r.eventId === unit.event_id)) {
        ackedFirst = (await settledState(h, unit.event_id)) === 'confirmed';
      }
      return unpublished;
    };
    try {
      projector = await h.startService('projector', oneAttempt);
      for (const eventId of [unit.event_id, ...files]) {
        assert.equal(await settledState(h, eventId), 'confirmed', eventId);
      }
    } finally {
      EventLog.prototype.recordApplied = record;
    }
    assert.ok(ackedFirst, 'the start was acknowledged before the files were judged');
    const rows = await h.mainRows<{ path: string }>(
      'SELECT path FROM raw_data_files WHERE executed_obs_unit_id = $1 ORDER BY path',
      [unit.id],
    );
    assert.deepEqual(
      rows.map((r) => r.path),
      ['/r/1', '/r/2'],
    );
    await h.stopService(projector);
  });

  void it('refuses to put a letter back behind a later event still to be processed, then retries both in order', async () => {
    const h = site();
    let projector = await h.startService('projector');
    const unit = (
      await h.post('/executed_obs_units/start', { obs_unit_id: 'behind', instrument: 'x' })
    ).body;
    const poison = await deadLetteredPatch(h, unit.id);
    const stateOf = async (eventId: string) => (await h.get(`/events/${eventId}`)).body?.state;
    await h.stopService(projector);
    const later = await h.request('PATCH', `/executed_obs_units/${unit.id}`, { notes: 'later' });
    assert.equal(later.status, 202, later.text);

    // Put back now, the poison patch would land after the later one and overwrite its notes.
    const early = await retryLetter(h, poison.body.event_id);
    assert.equal(early.status, 409, early.text);
    assert.match(early.body.error.message, /1 later event\(s\) .* still waiting to be processed/);
    const cli = await runCli(h, ['dead', 'retry', poison.body.event_id]);
    assert.equal(cli.code, 1, cli.stdout);
    assert.match(cli.stderr, /cannot be retried yet: 1 later event/);
    assert.equal(await stateOf(poison.body.event_id), 'dead', 'left as it was');

    projector = await h.startService('projector');
    await waitFor(
      async () => (await stateOf(later.body.event_id)) === 'dead',
      'the later patch to follow the block into the dead letters',
    );
    const retry = await retryLetter(h, poison.body.event_id);
    assert.equal(retry.status, 200, retry.text);
    // The later patch went back with it, and the answer says so.
    assert.deepEqual(
      retry.body.also_retried.map((r: { event_id: string }) => r.event_id),
      [later.body.event_id],
    );
    assert.ok(compareEntryIds(retry.body.also_retried[0].entry_id, retry.body.entry_id) > 0);
    await waitFor(
      async () => (await stateOf(later.body.event_id)) === 'confirmed',
      'both patches to be confirmed',
    );
    assert.equal(await stateOf(poison.body.event_id), 'confirmed');
    assert.equal((await h.get(`/executed_obs_units/${unit.id}`)).body.notes, 'later');
    await h.stopService(projector);
  });

  void it("keeps an aggregate's order when its failing event is discarded at once, while a later one waits behind it", async () => {
    const h = site();
    // Five attempts: the re-read after the fifth waits 1.6 s or more, long enough to discard in.
    const fiveAttempts = { maxAttempts: 5 };
    let projector = await h.startService('projector', fiveAttempts);
    const unit = (
      await h.post('/executed_obs_units/start', { obs_unit_id: 'discarded-ahead', instrument: 'x' })
    ).body;
    const stateOf = async (eventId: string) => (await h.get(`/events/${eventId}`)).body?.state;
    assert.equal(await settledState(h, unit.event_id), 'confirmed');
    await h.stopService(projector);
    // On the event's own row: a unit's row is written once a batch, with its last notes, and two
    // patches read together would never show the poison to a constraint on it.
    await h.main.query(
      "ALTER TABLE events ADD CONSTRAINT no_poison_event CHECK (data->>'notes' IS DISTINCT FROM 'poison') NOT VALID",
    );
    const patch = async (notes: string) => {
      const answer = await h.request('PATCH', `/executed_obs_units/${unit.id}`, { notes });
      assert.equal(answer.status, 202, answer.text);
      return answer.body.event_id as string;
    };
    // Read in one page: the second waits behind the poison in every pass, and in the one that
    // files the poison it is left behind the cursor, for the next pass.
    const poison = await patch('poison');
    const second = await patch('second');
    projector = await h.startService('projector', fiveAttempts);
    await waitFor(
      async () => (await stateOf(poison)) === 'dead',
      'the poison patch to be dead-lettered',
    );
    await h.main.query('ALTER TABLE events DROP CONSTRAINT no_poison_event');
    const discarded = await h.request(
      'DELETE',
      `/admin/dead-letters/${poison}`,
      { reason: 'the notes were wrong' },
      auth(TOKEN),
    );
    assert.equal(discarded.status, 200, discarded.text);
    const third = await patch('third');

    for (const eventId of [second, third]) {
      assert.equal(await settledState(h, eventId), 'confirmed', eventId);
    }
    const applied = await h.mainRows<{ event_id: string }>(
      'SELECT event_id FROM events WHERE aggregate_id = $1 ORDER BY seq',
      [unit.id],
    );
    assert.deepEqual(
      applied.map((row) => row.event_id),
      [unit.event_id, second, third],
    );
    assert.equal((await h.get(`/executed_obs_units/${unit.id}`)).body.notes, 'third');
    await h.stopService(projector);
  });

  void it('forgets a finish discarded while another letter holds its unit', async () => {
    const h = site();
    const projector = await h.startService('projector', { maxAttempts: 1 });
    const unit = (
      await h.post('/executed_obs_units/start', { obs_unit_id: 'forget', instrument: 'x' })
    ).body;
    assert.equal(await settledState(h, unit.event_id), 'confirmed');
    await h.main.query(
      "ALTER TABLE executed_obs_units ADD CONSTRAINT no_poison CHECK (notes IS DISTINCT FROM 'poison') NOT VALID",
    );
    const poison = await h.request('PATCH', `/executed_obs_units/${unit.id}`, { notes: 'poison' });
    const finish = await h.post(`/executed_obs_units/${unit.id}/finish`, { status: 'success' });
    assert.equal(finish.status, 202, finish.text);
    assert.equal(await settledState(h, poison.body.event_id), 'dead');
    assert.equal(await settledState(h, finish.body.event_id), 'dead', 'behind the patch');
    await h.main.query('ALTER TABLE executed_obs_units DROP CONSTRAINT no_poison');
    const discard = await h.request(
      'DELETE',
      `/admin/dead-letters/${finish.body.event_id}?reason=finished by mistake`,
      undefined,
      auth(TOKEN),
    );
    assert.equal(discard.status, 200, discard.text);
    // Nothing finishes the unit any more, though the patch still holds it: it can be finished.
    const again = await h.post(`/executed_obs_units/${unit.id}/finish`, { status: 'failed' });
    assert.equal(again.status, 202, again.text);
    assert.equal(await settledState(h, again.body.event_id), 'dead', 'behind the patch');
    const retried = await runCli(h, ['dead', 'retry', poison.body.event_id, '--json']);
    assert.equal(retried.code, 0, retried.stderr);
    // The finish went back with the patch, and the report says so.
    assert.deepEqual(
      JSON.parse(retried.stdout).items.map((r: { id: string; retried: boolean; with?: string }) => [
        r.id,
        r.retried,
        r.with,
      ]),
      [
        [poison.body.event_id, true, undefined],
        [again.body.event_id, true, poison.body.event_id],
      ],
    );
    assert.equal(await settledState(h, poison.body.event_id), 'confirmed');
    assert.equal(await settledState(h, again.body.event_id), 'confirmed');
    assert.equal((await h.get(`/executed_obs_units/${unit.id}`)).body.status, 'failed');
    await h.stopService(projector);
  });

  void it('keeps a dead finish finishing its unit through a retry that fails again', async () => {
    const h = site();
    const projector = await h.startService('projector', { maxAttempts: 1 });
    const unit = (
      await h.post('/executed_obs_units/start', { obs_unit_id: 'refinish', instrument: 'x' })
    ).body;
    assert.equal(await settledState(h, unit.event_id), 'confirmed');
    await h.main.query(
      "ALTER TABLE executed_obs_units ADD CONSTRAINT no_success CHECK (status IS DISTINCT FROM 'success') NOT VALID",
    );
    try {
      const finish = await h.post(`/executed_obs_units/${unit.id}/finish`, { status: 'success' });
      assert.equal(await settledState(h, finish.body.event_id), 'dead');
      // Retried before its cause is fixed: it fails, and is dead again.
      assert.equal((await retryLetter(h, finish.body.event_id)).status, 200);
      await waitFor(
        async () =>
          (
            await h.request(
              'GET',
              `/admin/dead-letters/${finish.body.event_id}`,
              undefined,
              auth(TOKEN),
            )
          ).status === 200,
        'the finish to be dead-lettered again',
      );
      const second = await h.post(`/executed_obs_units/${unit.id}/finish`, { status: 'failed' });
      assert.equal(second.status, 409, second.text);
      assert.equal(second.body.error.code, 'already_finished');
      await h.main.query('ALTER TABLE executed_obs_units DROP CONSTRAINT no_success');
      assert.equal((await retryLetter(h, finish.body.event_id)).status, 200);
      assert.equal(await settledState(h, finish.body.event_id), 'confirmed');
    } finally {
      await h.main.query('ALTER TABLE executed_obs_units DROP CONSTRAINT IF EXISTS no_success');
    }
    await h.stopService(projector);
  });

  void it('applies a later event whose block an operator lifted after the projector read it, rather than block the aggregate again', async () => {
    const h = site();
    let projector = await h.startService('projector', { maxAttempts: 1 });
    const unit = (
      await h.post('/executed_obs_units/start', { obs_unit_id: 'lifted', instrument: 'x' })
    ).body;
    assert.equal(await settledState(h, unit.event_id), 'confirmed');
    const poison = await deadLetteredPatch(h, unit.id);
    await h.stopService(projector);
    const later = await h.request('PATCH', `/executed_obs_units/${unit.id}`, { notes: 'later' });
    assert.equal(later.status, 202, later.text);

    // The operator discards the letter just after the projector read the blocks with its batch.
    const partition = partitionOf(unit.id, h.config.partitions);
    const blocked = EventLog.prototype.blocked;
    let discarded: number | undefined;
    EventLog.prototype.blocked = async function (this: EventLog, ...args) {
      const found = await blocked.apply(this, args);
      if (discarded === undefined && found.has(unit.id)) {
        discarded = (
          await h.request(
            'DELETE',
            `/admin/dead-letters/${poison.body.event_id}?reason=lifted`,
            undefined,
            auth(TOKEN),
          )
        ).status;
      }
      return found;
    };
    try {
      projector = await h.startService('projector', { maxAttempts: 1 });
      assert.equal(await settledState(h, later.body.event_id), 'confirmed');
    } finally {
      EventLog.prototype.blocked = blocked;
    }
    assert.equal(discarded, 200, 'discarded between the read and the filing');
    assert.equal((await h.get(`/executed_obs_units/${unit.id}`)).body.notes, 'later');
    assert.equal(
      await h.redis.sismember(eventLogOf(h).keys(partition).blockedAggregates, unit.id),
      0,
      'not blocked again behind no letter',
    );
    const letters = await h.request(
      'GET',
      '/admin/dead-letters?limit=1000',
      undefined,
      auth(TOKEN),
    );
    assert.deepEqual(
      letters.body.items.filter((d: { aggregate_id: string }) => d.aggregate_id === unit.id),
      [],
    );
    await h.stopService(projector);
  });
});

void describe('outpost pending for an entry that keeps failing', () => {
  const site = apiOnlySite();

  void it('shows its failed attempts and the last error, which its deliveries do not tell', async () => {
    const h = site();
    const projector = await h.startService('projector', { maxAttempts: 1000 });
    await h.main.query(
      "ALTER TABLE executed_obs_units ADD CONSTRAINT no_poison CHECK (instrument <> 'poison') NOT VALID",
    );
    const unit = (
      await h.post('/executed_obs_units/start', { obs_unit_id: 'failing', instrument: 'poison' })
    ).body;
    type Entry = { entry_id: string; event_id: string; waiting_for: string; attempts: number };
    let entry: (Entry & { last_error: string | null }) | undefined;
    await waitFor(async () => {
      const pending = await h.request('GET', '/admin/pending', undefined, auth(TOKEN));
      entry = pending.body.entries.find((e: Entry) => e.event_id === unit.event_id);
      return (entry?.attempts ?? 0) >= 2;
    }, 'two failed attempts');
    assert.equal(entry?.waiting_for, 'projection');
    assert.match(entry?.last_error ?? '', /no_poison/);
    const cli = await runCli(h, ['pending']);
    assert.equal(cli.code, 0, cli.stderr);
    assert.match(cli.stdout, /^ENTRY_ID +P +CONSUMER +AGE +IDLE +DELIVERIES +ATTEMPTS /m);
    assert.match(
      cli.stdout,
      new RegExp(
        `^${entry?.entry_id} \\(partition \\d+\\) failed \\d+ attempt\\(s\\) \\(dead-lettered at its projector's OUTPOST_MAX_ATTEMPTS\\), the last: .*no_poison`,
        'm',
      ),
    );
    await h.main.query('ALTER TABLE executed_obs_units DROP CONSTRAINT no_poison');
    assert.equal(await settledState(h, unit.event_id), 'confirmed');
    const after = await h.request('GET', '/admin/pending', undefined, auth(TOKEN));
    assert.equal(
      after.body.entries.some((e: Entry) => e.event_id === unit.event_id),
      false,
      'gone once applied',
    );
    await h.stopService(projector);
  });
});

void describe('an undecodable entry behind a failing event of its unit', () => {
  const site = apiOnlySite();

  void it('files an undecodable entry only once the earlier events of its unit have applied: one retried first is not dead-lettered behind it', async () => {
    const h = site();
    const { log, unit, partition, patch, appendUnreadable, discardLetters } =
      await unitForUnreadablePatches(h, 'undecodable-later');
    const [refusedOnce, unreadableEvent, after] = [
      patch('refused-once'),
      patch('unreadable'),
      patch('after'),
    ];
    await h.main.query(
      "ALTER TABLE executed_obs_units ADD CONSTRAINT no_poison CHECK (notes IS DISTINCT FROM 'refused-once') NOT VALID",
    );
    const appended = await log.append({ partition, events: [refusedOnce] });
    assert.equal(appended.kind, 'appended');
    const [refusedEntry] = appended.kind === 'appended' ? appended.entryIds : [];
    await appendUnreadable(unreadableEvent);
    assert.equal((await log.append({ partition, events: [after] })).kind, 'appended');

    // Attempts far apart: the constraint is dropped between the first and the second.
    const projector = await h.startService('projector', { maxAttempts: 50 });
    try {
      await waitFor(
        async () =>
          (await log.redis.hget(log.keys(partition).attempts, refusedEntry ?? '')) !== null,
        'the refused patch to fail once',
      );
      await h.main.query('ALTER TABLE executed_obs_units DROP CONSTRAINT no_poison');
      assert.equal(
        await settledState(h, refusedOnce.event_id),
        'confirmed',
        'retried and applied, not dead-lettered behind the later unreadable entry',
      );
      assert.equal(await settledState(h, unreadableEvent.event_id), 'dead');
      assert.equal(await settledState(h, after.event_id), 'dead', 'after it: held behind it');
      assert.equal((await h.get(`/executed_obs_units/${unit.id}`)).body.notes, 'refused-once');
    } finally {
      await h.main.query('ALTER TABLE executed_obs_units DROP CONSTRAINT IF EXISTS no_poison');
      await discardLetters([refusedOnce, unreadableEvent, after]);
      await h.stopService(projector);
    }
  });
});

void describe('outpost pending when nothing is applied', () => {
  const site = apiOnlySite();

  void it('says what the main database answered when it refuses its WAL position: MAIN_DATABASE_URL naming a standby after a failover', async () => {
    const h = site();
    const standbyAsMain = { ...h.envOf(), MAIN_DATABASE_URL: h.config.replicaDatabaseUrl };
    const text = await runCliWith(standbyAsMain, ['pending']);
    assert.equal(text.code, 0, text.stderr);
    assert.match(
      text.stdout,
      /^replica replayed up to [0-9A-F]+\/[0-9A-F]+, lag unknown: the main database refused to give its WAL position: recovery is in progress.* \(SQLSTATE 55000\)$/m,
    );
    // A database that answers is asked who holds the partitions all the same.
    assert.match(text.stdout, /^no projector holds partitions /m);
    const json = await runCliWith(standbyAsMain, ['pending', '--json']);
    assert.equal(json.code, 0, json.stderr);
    assert.match(JSON.parse(json.stdout).replica.main_refusal, /\(SQLSTATE 55000\)$/);
    // /health says the same, where it only said `database: disconnected`.
    const api = await h.startService('api', {
      mainDatabaseUrl: h.config.replicaDatabaseUrl,
      port: 0,
    });
    try {
      const health = (await (await fetch(`http://127.0.0.1:${api.port}/health`)).json()) as {
        database: string;
        database_error?: string;
      };
      assert.equal(health.database, 'disconnected');
      assert.match(health.database_error ?? '', /recovery is in progress.* \(SQLSTATE 55000\)$/);
    } finally {
      await h.stopService(api);
    }
    const connected = (await h.get('/health')).body;
    assert.equal(connected.database, 'connected');
    assert.equal('database_error' in connected, false, 'only while disconnected');
  });

  void it('names the partitions no projector holds, how long their entries waited, and the dead letters', async () => {
    const h = site();
    const all = `0-${h.config.partitions - 1}`;
    const unit = (
      await h.post('/executed_obs_units/start', { obs_unit_id: 'nobody-applies', instrument: 'x' })
    ).body;
    const partition = partitionOf(unit.id, h.config.partitions);
    const pendingOutput = async () => {
      const cli = await runCli(h, ['pending']);
      assert.equal(cli.code, 0, cli.stderr);
      return cli.stdout;
    };

    // No projector has run: the entry is not even delivered, so it has no idle time, only an age.
    let out = await pendingOutput();
    assert.match(
      out,
      new RegExp(`^no projector holds partitions ${all}: nothing applies their events until`, 'm'),
    );
    const ageOf = (text: string) => {
      const header = text.split('\n')[0]?.split(/\s{2,}/) ?? [];
      const row = text
        .split('\n')
        .find((line) => line.startsWith(`${partition} `))
        ?.split(/\s{2,}/);
      return Number(row?.[header.indexOf('OLDEST_AGE')]?.replace(/s$/, ''));
    };
    assert.ok(ageOf(out) >= 0, `an age in seconds: ${out}`);
    await waitFor(
      async () => ageOf(await pendingOutput()) >= 2,
      "the partition's oldest age to pass 2 s",
    );
    assert.doesNotMatch(out, /dead letter/, 'none yet');
    // Scripts read the same facts from --json.
    const pendingJson = async () => {
      const cli = await runCli(h, ['pending', '--json']);
      assert.equal(cli.code, 0, cli.stderr);
      return JSON.parse(cli.stdout);
    };
    let json = await pendingJson();
    const row = json.partitions.find((p: { partition: number }) => p.partition === partition);
    assert.ok(row.oldest_age_ms >= 2000, JSON.stringify(row));
    assert.deepEqual(
      json.projector_leases.map((l: { holder: string | null }) => l.holder),
      Array(h.config.partitions).fill(null),
    );
    assert.deepEqual(json.dead_letters, { count: 0, blocked_aggregates: 0 });

    // A projector applies the start and dead-letters a patch it cannot apply.
    const projector = await h.spawnServe('projector', { OUTPOST_CONSUMER: 'night-shift' });
    await projector.ready();
    await waitFor(
      async () => (await h.get(`/events/${unit.event_id}`)).body.state === 'confirmed',
      'the start to be confirmed',
    );
    await deadLetteredPatch(h, unit.id);
    out = await pendingOutput();
    assert.match(out, new RegExp(`^projector leases: ${all} by night-shift$`, 'm'));
    assert.match(
      out,
      /^1 dead letter; 1 aggregate held behind them, whose later events follow them into the dead letters: outpost dead list$/m,
    );
    json = await pendingJson();
    assert.deepEqual(
      json.projector_leases.map((l: { holder: string | null }) => l.holder),
      Array(h.config.partitions).fill('night-shift'),
    );
    assert.deepEqual(json.dead_letters, { count: 1, blocked_aggregates: 1 });
    assert.equal(json.site_claim, null);

    // It dies without giving its leases back: once they lapse, the operator is told whose.
    projector.child.kill('SIGKILL');
    await waitFor(
      async () =>
        new RegExp(
          `^no projector holds partitions ${all} \\(leases expired: night-shift's \\d+ s ago\\)`,
          'm',
        ).test(await pendingOutput()),
      'the lapsed leases to be named',
    );
    json = await pendingJson();
    for (const lease of json.projector_leases) {
      assert.equal(lease.holder, null, JSON.stringify(lease));
      assert.equal(lease.last_holder, 'night-shift', JSON.stringify(lease));
      assert.ok(lease.expired_seconds >= 0, JSON.stringify(lease));
    }
  });
});

void describe('a keyed retry of a write whose named ids are gone since', () => {
  const site = apiOnlySite();

  void it('answers a start and a package with their first answers after the configuration and the files they named were dead-lettered', async () => {
    const h = site();
    const config = await h.post('/instrument_configurations', {
      instrument: 'poison',
      configuration: {},
    });
    assert.equal(config.status, 201, config.text);
    const startBody = {
      obs_unit_id: 'retried-later',
      instrument: 'x',
      instrument_configuration_id: config.body.id,
    };
    const startKey = { 'idempotency-key': 'start-naming-a-configuration' };
    const started = await h.post('/executed_obs_units/start', startBody, startKey);
    assert.equal(started.status, 201, started.text);
    const unit = (await h.post('/executed_obs_units/start', { obs_unit_id: 'u', instrument: 'x' }))
      .body;
    const files = await h.post('/raw_data_files', {
      executed_obs_unit_id: unit.id,
      files: [
        { path: '/poison', size_bytes: 1, checksum: 'ab'.repeat(8), checksum_algorithm: 'xxh64' },
      ],
    });
    assert.equal(files.status, 201, files.text);
    const packageBody = { name: 'p', file_ids: files.body.ids };
    const packageKey = { 'idempotency-key': 'package-naming-a-file' };
    const packaged = await h.post('/raw_data_packages', packageBody, packageKey);
    assert.equal(packaged.status, 201, packaged.text);

    await h.main.query(
      "ALTER TABLE instrument_configurations ADD CONSTRAINT no_poison_config CHECK (instrument <> 'poison') NOT VALID",
    );
    await h.main.query(
      "ALTER TABLE raw_data_files ADD CONSTRAINT no_poison_file CHECK (path <> '/poison') NOT VALID",
    );
    const projector = await h.startService('projector');
    try {
      assert.equal(await settledState(h, config.body.event_id), 'dead');
      assert.equal(await settledState(h, files.body.event_ids[0]), 'dead');
    } finally {
      await h.stopService(projector);
      await h.main.query('ALTER TABLE instrument_configurations DROP CONSTRAINT no_poison_config');
      await h.main.query('ALTER TABLE raw_data_files DROP CONSTRAINT no_poison_file');
    }
    // Sent fresh, each names what the site no longer knows.
    const fresh = await h.post('/executed_obs_units/start', startBody);
    assert.equal(fresh.status, 404, fresh.text);
    assert.equal((await h.post('/raw_data_packages', packageBody)).status, 404);
    // Retried under their keys, each gets its first answer, and nothing is appended.
    const before = await streamEventIds(h);
    const startAgain = await h.post('/executed_obs_units/start', startBody, startKey);
    assert.equal(startAgain.status, 201, startAgain.text);
    assert.deepEqual(startAgain.body, started.body);
    assert.equal(startAgain.headers.get('idempotent-replayed'), 'true');
    const packageAgain = await h.post('/raw_data_packages', packageBody, packageKey);
    assert.equal(packageAgain.status, 201, packageAgain.text);
    assert.deepEqual(packageAgain.body, packaged.body);
    assert.equal(packageAgain.headers.get('idempotent-replayed'), 'true');
    // The same keys with other bodies are still refused as reused.
    const reused = await h.post('/raw_data_packages', { ...packageBody, name: 'q' }, packageKey);
    assert.equal(reused.status, 409, reused.text);
    assert.equal(reused.body.error.code, 'idempotency_key_reused');
    assert.deepEqual(await streamEventIds(h), before, 'nothing appended');
  });
});

void describe('a consumer group lost after an operator discarded a dead letter', () => {
  let h: Harness;
  after(async () => {
    await h?.main.query('ALTER TABLE executed_obs_units DROP CONSTRAINT IF EXISTS no_poison');
    await h?.close();
  });

  void it('does not apply the discarded event when the group, created again, delivers it again', async () => {
    h = await Harness.start();
    const { unit, poison } = await patchedPastADiscardedLetter(h, 'regrouped');

    // The group destroyed by hand, its stream kept: the projector creates it again from the
    // stream's first entry and is delivered every entry a second time.
    const log = eventLogOf(h);
    const { stream } = log.keys(partitionOf(unit.id, h.config.partitions));
    await h.redis.xgroup('DESTROY', stream, CONSUMER_GROUP);
    const [newest] = await h.redis.xrevrange(stream, '+', '-', 'COUNT', 1);
    const last = newest?.[0];
    assert.ok(last, 'the stream holds entries');
    await waitFor(async () => {
      const groups = (await h.redis.xinfo('GROUPS', stream).catch(() => [])) as unknown[][];
      const group = groups.find((fields) => fields[1] === CONSUMER_GROUP);
      const delivered = group?.[group.indexOf('last-delivered-id') + 1] as string | undefined;
      const pending = group?.[group.indexOf('pending') + 1];
      return delivered === last && pending === 0;
    }, 'the group created again to have delivered and acknowledged every entry again');
    assert.deepEqual(
      await h.mainRows('SELECT 1 FROM events WHERE event_id = $1', [poison.body.event_id]),
      [],
      'the discarded patch is still not applied',
    );
    const rows = await h.mainRows<{ notes: string; version: number }>(
      'SELECT notes, version FROM executed_obs_units WHERE id = $1',
      [unit.id],
    );
    assert.deepEqual(rows, [{ notes: 'next', version: 2 }]);
  });
});
