import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { Envelope } from '../src/domain/events.ts';
import { partitionOf } from '../src/domain/ids.ts';
import { audit, eventLogOf, streamEventIds, waitForAllAcknowledged } from './harness/audit.ts';
import { Harness, waitFor } from './harness/harness.ts';
import { inBatches } from './harness/load.ts';

/**
 * What a unit's start left in the main database. The event's row alone cannot show a second
 * application (event_id is its primary key); its aggregate's count of events and the projection's
 * version would read 2. A copy filed as a dead letter instead would leave one in its partition.
 */
const effectsOfStart = async (h: Harness, unitId: string) => {
  const [row] = await h.mainRows<{ events: number; event_count: number; version: number }>(
    `SELECT (SELECT count(*)::int FROM events WHERE aggregate_id = $1) AS events,
            (SELECT sum(event_count)::int FROM aggregate_stats WHERE aggregate_id = $1) AS event_count,
            (SELECT version FROM executed_obs_units WHERE id = $1) AS version`,
    [unitId],
  );
  const dead = await h.redis.xlen(
    eventLogOf(h).keys(partitionOf(unitId, h.config.partitions)).deadLetters,
  );
  return { ...row, dead };
};
const APPLIED_ONCE = { events: 1, event_count: 1, version: 1, dead: 0 };

void describe('exactly-once effect', () => {
  let h: Harness;
  before(async () => {
    h = await Harness.start({ role: 'api' });
  });
  after(async () => {
    await h.resumeReplay().catch(() => undefined);
    await h?.close();
  });

  void it('applies an event once when its entry is appended twice with the same event_id', async () => {
    const projector = await h.startService('projector');
    const unit = await h.post('/executed_obs_units/start', {
      obs_unit_id: 'dup-xadd',
      instrument: 'miri',
    });
    await waitForAllAcknowledged(h);
    const log = eventLogOf(h);
    const partition = partitionOf(unit.body.id, h.config.partitions);
    const [entry] = await log.readInflight(unit.body.id, partition);
    assert.equal(entry, undefined, 'acknowledged entries leave the read index');
    const stored = (
      await h.mainRows<{ data: Envelope['data']; occurred_at: Date }>(
        'SELECT data, occurred_at FROM events WHERE event_id = $1',
        [unit.body.event_id],
      )
    )[0];
    assert.ok(stored);
    // What ioredis does when it re-sends an in-flight append after a reconnect.
    const resent = {
      event_id: unit.body.event_id,
      aggregate_id: unit.body.id,
      aggregate_type: 'executed_obs_unit',
      type: 'ExecutedObsUnitStarted',
      version: 1,
      site: h.config.site,
      accepted_at: stored.occurred_at.getTime(),
      data: stored.data,
    } as Envelope;
    // As the first entry left it, confirmed at its commit, while the second waits and after.
    const views = async () => [
      (await h.get(`/events/${unit.body.event_id}`)).body,
      (await h.get(`/aggregates/${unit.body.id}/events`)).body,
    ];
    const confirmed = await views();
    assert.equal(confirmed[0].state, 'confirmed');
    assert.ok(confirmed[0].commit_lsn);
    await h.stopService(projector);
    const appended = await log.append({ partition, events: [resent] });
    assert.equal(appended.kind, 'appended');
    assert.deepEqual(await views(), confirmed, 'while the second entry waits');
    const again = await h.startService('projector');
    await waitForAllAcknowledged(h);
    assert.deepEqual(await effectsOfStart(h, unit.body.id), APPLIED_ONCE);
    assert.deepEqual(await views(), confirmed, 'once it was acknowledged as a duplicate');
    await h.stopService(again);
  });

  void it('counts and lists an event appended twice once while it waits', async () => {
    const unit = await h.post('/executed_obs_units/start', {
      obs_unit_id: 'dup-pending',
      instrument: 'miri',
    });
    const log = eventLogOf(h);
    const partition = partitionOf(unit.body.id, h.config.partitions);
    const [entry] = await log.readInflight(unit.body.id, partition);
    assert.ok(entry, 'no projector runs: the start waits in the log');
    // A second copy while the first waits, as an append re-sent after a reconnect left it before
    // the append script looked for its own first run (the event index no longer naming the first
    // copy stands for that build).
    await h.redis.hdel(log.keys(partition).eventIndex(unit.body.event_id), unit.body.event_id);
    assert.equal((await log.append({ partition, events: [entry.event] })).kind, 'appended');
    assert.equal((await log.readInflight(unit.body.id, partition)).length, 2);

    const merged = await h.get(`/executed_obs_units/${unit.body.id}`);
    assert.equal(merged.status, 200, merged.text);
    assert.deepEqual(merged.body.consistency, { source: 'pending', pending_events: 1 });
    assert.equal(merged.body.version, 1);
    const events = await h.get(`/aggregates/${unit.body.id}/events`);
    assert.deepEqual(
      events.body.items.map((e: { event_id: string; state: string }) => [e.event_id, e.state]),
      [[unit.body.event_id, 'pending']],
    );

    const projector = await h.startService('projector');
    await waitForAllAcknowledged(h);
    assert.deepEqual(await effectsOfStart(h, unit.body.id), APPLIED_ONCE);
    await h.stopService(projector);
  });

  void it('refuses to start against a Redis that may drop or un-fsync what it accepted', async () => {
    const [, maxmemory] = (await h.redis.config('GET', 'maxmemory')) as string[];
    await h.redis.config('SET', 'maxmemory', '1gb');
    for (const [setting, value, reason] of [
      ['maxmemory-policy', 'allkeys-lru', /maxmemory-policy allkeys-lru/],
      ['appendfsync', 'everysec', /appendfsync everysec/],
      ['no-appendfsync-on-rewrite', 'yes', /no-appendfsync-on-rewrite yes/],
      ['appendonly', 'no', /without appendonly/],
    ] as const) {
      const [, before] = (await h.redis.config('GET', setting)) as string[];
      await h.redis.config('SET', setting, value);
      try {
        await assert.rejects(h.startService('projector'), reason, setting);
      } finally {
        await h.redis.config('SET', setting, before as string);
      }
    }
    await h.redis.config('SET', 'maxmemory', maxmemory as string);
    // The running API saw the unsafe settings too, if it looked while they held (once a second):
    // it takes writes again within a second of their return. Waited for here, or the next test's
    // first write is refused.
    await waitFor(
      async () =>
        (
          await h.post('/executed_obs_units/start', {
            obs_unit_id: 'settings-back',
            instrument: 'x',
          })
        ).status === 201,
      'writes to be taken again once the settings are back',
    );
  });

  void it('applies an event once when a projector that crashed before recording re-reads its pending entries', async () => {
    await h.pauseReplay();
    let projector = await h.startService('projector');
    const unit = await h.post('/executed_obs_units/start', {
      obs_unit_id: 'reread',
      instrument: 'miri',
    });
    await waitFor(
      async () => (await effectsOfStart(h, unit.body.id)).events === 1,
      'the start to be applied',
    );
    await h.stopService(projector);
    // The crash window: committed in PostgreSQL, nothing recorded in Redis yet.
    const keys = eventLogOf(h).keys(partitionOf(unit.body.id, h.config.partitions));
    await h.redis.del(keys.applied, keys.appliedLsn);
    await h.resumeReplay();

    projector = await h.startService('projector');
    await waitForAllAcknowledged(h);
    assert.deepEqual(await effectsOfStart(h, unit.body.id), APPLIED_ONCE);
    const applied = await projector.metrics.eventsApplied.get();
    assert.equal(
      applied.values[0]?.value ?? 0,
      0,
      'the re-read entry was a duplicate, not a new application',
    );
    const row = await h.get(`/executed_obs_units/${unit.body.id}`);
    assert.equal(row.body.version, 1);
    await h.stopService(projector);
  });

  void it('loses nothing and applies nothing twice when the projector is killed -9 between COMMIT and XACK', async () => {
    // With replay paused nothing can be acknowledged: every kill lands between commit and XACK.
    await h.pauseReplay();
    let { child } = await h.spawnServe('projector');
    const total = 1500;
    const load = inBatches(
      Array.from({ length: total }, (_, i) => i),
      16,
      (i) =>
        h.post('/executed_obs_units/start', { obs_unit_id: `kill-${i}`, instrument: 'nircam' }),
    );
    for (let kill = 1; kill <= 3; kill += 1) {
      const threshold = kill * 250;
      await waitFor(
        async () =>
          ((await h.mainRows<{ n: number }>('SELECT count(*)::int AS n FROM events'))[0]?.n ?? 0) >=
          threshold,
        `${threshold} events applied before kill ${kill}`,
        60_000,
      );
      child.kill('SIGKILL');
      await new Promise((resolve) => child.once('exit', resolve));
      ({ child } = await h.spawnServe('projector'));
    }
    const responses = await load;
    assert.ok(responses.every((r) => r.status === 201));
    await h.resumeReplay();
    const accepted = new Set(responses.map((r) => r.body.event_id as string));
    assert.deepEqual(
      await streamEventIds(h),
      new Set([...accepted, ...(await earlierEventIds(h))]),
    );
    await audit(h, new Set([...accepted, ...(await earlierEventIds(h))]));
    child.kill('SIGTERM');
  });
});

/** Events accepted by this file's earlier tests, which share the site. */
const earlierEventIds = async (h: Harness) =>
  new Set(
    (
      await h.mainRows<{ event_id: string }>(
        "SELECT e.event_id::text FROM events e JOIN executed_obs_units u ON u.id = e.aggregate_id WHERE u.obs_unit_id IN ('dup-xadd', 'dup-pending', 'reread', 'settings-back')",
      )
    ).map((r) => r.event_id),
  );
