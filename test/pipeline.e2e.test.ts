import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { acquireLease } from '../src/db/queries/leases.ts';
import { newIdInPartition, partitionOf } from '../src/domain/ids.ts';
import { decodeEntry, type RawEntry } from '../src/log/codec.ts';
import { applyBatches } from '../src/projector/apply-batch.ts';
import { crashMain, stackUp } from '../src/stack/stack.ts';
import {
  audit,
  eventLogOf,
  streamEventIds,
  unacknowledged,
  waitForAllAcknowledged,
  waitForApplied,
} from './harness/audit.ts';
import { runCliWith } from './harness/cli.ts';
import { Harness, waitFor } from './harness/harness.ts';
import { inBatches } from './harness/load.ts';

const startBody = (n: number | string) => ({ obs_unit_id: `ou-${n}`, instrument: 'nirspec' });

/** The entry of `eventId` as it lies in its partition's stream, decoded. */
const entryOf = async (h: Harness, partition: number, eventId: string) =>
  ((await h.redis.xrange(eventLogOf(h).keys(partition).stream, '-', '+')) as RawEntry[])
    .map(decodeEntry)
    .find((e) => e.event.event_id === eventId);

void describe('core pipeline', () => {
  void describe('with the API alone running', () => {
    let h: Harness;
    before(async () => {
      h = await Harness.start({ role: 'api' });
    });
    after(() => h?.close());

    void it('serves a new unit from the log before any projector ran, then from the replica once acknowledged', async () => {
      const started = await h.post('/executed_obs_units/start', startBody(1));
      assert.equal(started.status, 201);
      assert.equal(started.body.status, 'running');
      assert.match(started.body.id, /^[0-9a-f]{8}-[0-9a-f]{4}-7/);

      const pending = await h.get(`/executed_obs_units/${started.body.id}`);
      assert.equal(pending.status, 200);
      assert.deepEqual(pending.body.consistency, { source: 'pending', pending_events: 1 });
      assert.equal(pending.body.obs_unit_id, 'ou-1');
      assert.equal((await h.get(`/events/${started.body.event_id}`)).body.state, 'pending');
      // Pending as a unit, it is no raw data file.
      const asFile = await h.get(`/raw_data_files/${started.body.id}`);
      assert.equal(asFile.status, 404);
      assert.equal(asFile.body.error.code, 'not_found');

      // Nothing projects: once the write has waited longer than a lease's lifetime in a
      // partition no projector holds, the API's /health says so instead of healthy.
      const unprojected =
        /^no projector holds partitions? .*: nothing applies their events until a projector runs/;
      await waitFor(
        async () => unprojected.test((await h.get('/health')).body.background_processor.last_error),
        "the API's health to say that no projector holds the partition",
      );
      const health = (await h.get('/health')).body;
      assert.equal(health.status, 'degraded');
      assert.equal(health.background_processor.status, 'disabled');

      await h.startService('projector');
      await waitForAllAcknowledged(h);
      await waitFor(
        async () => (await h.get('/health')).body.status === 'healthy',
        "the API's health to be healthy once the projector applied the write",
      );
      const rows = await h.mainRows('SELECT status FROM executed_obs_units WHERE id = $1', [
        started.body.id,
      ]);
      assert.deepEqual(rows, [{ status: 'running' }]);
      const confirmed = await h.get(`/executed_obs_units/${started.body.id}`);
      assert.deepEqual(confirmed.body.consistency, { source: 'replica', pending_events: 0 });
      assert.equal(confirmed.body.version, 1);
      const event = await h.get(`/events/${started.body.event_id}`);
      assert.equal(event.body.state, 'confirmed');
      assert.equal(event.body.seq, 0);
      assert.match(event.body.commit_lsn, /^[0-9A-F]+\/[0-9A-F]+$/);
    });
  });

  void describe('with no projector running', () => {
    let h: Harness;
    before(async () => {
      h = await Harness.start({ role: 'api' });
    });
    after(() => h?.close());

    void it('never folds an event twice that the replica holds while it is still pending', async () => {
      const started = (await h.post('/executed_obs_units/start', startBody('twice'))).body;
      const patched = await h.request('PATCH', `/executed_obs_units/${started.id}`, {
        notes: 'after the start',
      });
      assert.equal(patched.status, 202, patched.text);
      // The state between a projector's commit and its XACK: the start applied and replayed,
      // both entries still in the log. No projector runs here, so nothing acknowledges them.
      const partition = partitionOf(started.id, h.config.partitions);
      const start = await entryOf(h, partition, started.event_id);
      assert.ok(start, 'the start is in its partition stream');
      const token = await acquireLease(h.main, h.config.site, partition, 'by-hand', 60_000);
      assert.ok(token, 'the partition is free');
      await applyBatches(h.main, [
        { entries: [start], lease: { site: h.config.site, partition, consumer: 'by-hand', token } },
      ]);
      await waitFor(
        async () =>
          (await h.replicaRows('SELECT 1 FROM events WHERE event_id = $1', [started.event_id]))
            .length === 1,
        'the replica to replay the start',
      );
      const unit = await h.get(`/executed_obs_units/${started.id}`);
      assert.deepEqual(unit.body.consistency, { source: 'replica+pending', pending_events: 1 });
      assert.equal(unit.body.version, 2, 'the start counted once, the patch once');
      assert.equal(unit.body.notes, 'after the start');
      const events = await h.get(`/aggregates/${started.id}/events`);
      assert.deepEqual(
        events.body.items.map((e: { event_id: string; state: string }) => [e.event_id, e.state]),
        [
          [started.event_id, 'applied'],
          [patched.body.event_id, 'pending'],
        ],
      );
      // Listed by its obs_unit_id once, on the replica and merged with its patch; the start is
      // still in flight too, so Redis found the value in it.
      const listed = await h.get('/executed_obs_units?obs_unit_id=ou-twice');
      assert.deepEqual(
        listed.body.items.map((u: { id: string; version: number; notes: string }) => [
          u.id,
          u.version,
          u.notes,
        ]),
        [[started.id, 2, 'after the start']],
      );
      // Between a batch's commit and the commit LSN stamped on its events after it, the replica
      // shows the row without the LSN that Redis already holds: both reads of the event name it.
      const [stamped] = await h.mainRows<{ lsn: string }>(
        'SELECT commit_lsn::text AS lsn FROM events WHERE event_id = $1',
        [started.event_id],
      );
      assert.ok(stamped?.lsn, 'the batch stamped its commit LSN');
      await h.main.query('UPDATE events SET commit_lsn = NULL WHERE event_id = $1', [
        started.event_id,
      ]);
      await eventLogOf(h).recordApplied(partition, [
        {
          lsn: stamped.lsn,
          entryId: start.entryId,
          eventId: started.event_id,
          aggregateId: started.id,
          aggregateType: 'executed_obs_unit',
        },
      ]);
      await waitFor(
        async () =>
          (
            await h.replicaRows('SELECT 1 FROM events WHERE event_id = $1 AND commit_lsn IS NULL', [
              started.event_id,
            ])
          ).length === 1,
        'the replica to show the row without its LSN',
      );
      assert.equal((await h.get(`/events/${started.event_id}`)).body.commit_lsn, stamped.lsn);
      const unstamped = await h.get(`/aggregates/${started.id}/events`);
      assert.deepEqual(
        unstamped.body.items.map((e: { state: string; commit_lsn?: string }) => [
          e.state,
          e.commit_lsn,
        ]),
        [
          ['applied', stamped.lsn],
          ['pending', undefined],
        ],
      );
      await h.main.query('UPDATE events SET commit_lsn = $2 WHERE event_id = $1', [
        started.event_id,
        stamped.lsn,
      ]);
    });

    /**
     * A started unit with, after its start, an event like it but for `changes` appended past the
     * API: one the projector will dead-letter.
     */
    const startedWithPoison = async (name: string, changes: Record<string, unknown>) => {
      const started = (await h.post('/executed_obs_units/start', startBody(name))).body;
      const partition = partitionOf(started.id, h.config.partitions);
      const start = await entryOf(h, partition, started.event_id);
      assert.ok(start);
      const poison = {
        ...start.event,
        event_id: newIdInPartition(partition, h.config.partitions),
        accepted_at: start.event.accepted_at + 1,
        ...changes,
      } as typeof start.event;
      assert.equal((await eventLogOf(h).append({ partition, events: [poison] })).kind, 'appended');
      return started;
    };

    void it('counts as pending only the events its state shows: one that cannot fold is left out, and the events after it', async () => {
      // A second creation of the same unit, as only a writer past the API could append: the
      // projector will dead-letter it, and a read leaves it out of the state.
      const started = await startedWithPoison('unfoldable', {});
      const unit = await h.get(`/executed_obs_units/${started.id}`);
      assert.equal(unit.status, 200);
      assert.deepEqual(unit.body.consistency, { source: 'pending', pending_events: 1 });
      // A change after it waits behind it in the projector (and follows it to the dead
      // letters): the view leaves it out too, rather than show what the database never will.
      const patched = await h.request('PATCH', `/executed_obs_units/${started.id}`, {
        notes: 'behind the poison',
      });
      assert.equal(patched.status, 202, patched.text);
      const after = await h.get(`/executed_obs_units/${started.id}`);
      assert.deepEqual(after.body.consistency, { source: 'pending', pending_events: 1 });
      assert.equal(after.body.notes, unit.body.notes);
      assert.equal(after.body.version, unit.body.version);
    });

    void it('leaves an event this build cannot read out of the view, and the events after it', async () => {
      // A change in a version of a newer build, as after a rollback: the projector dead-letters
      // it and holds the unit's later events behind it.
      const started = await startedWithPoison('newer', {
        type: 'ExecutedObsUnitUpdated',
        version: 99,
        data: { notes: 'from a newer build' },
      });
      const patched = await h.request('PATCH', `/executed_obs_units/${started.id}`, {
        notes: 'behind the newer one',
      });
      assert.equal(patched.status, 202, patched.text);
      const unit = await h.get(`/executed_obs_units/${started.id}`);
      assert.equal(unit.status, 200);
      assert.deepEqual(unit.body.consistency, { source: 'pending', pending_events: 1 });
      assert.equal(unit.body.notes, started.notes ?? null);
    });
  });

  void describe('with a backlog of pending units', () => {
    let h: Harness;
    before(async () => {
      h = await Harness.start({ role: 'api' });
    });
    after(() => h?.close());

    void it('pages a list through it in id order, each unit once, and finds a rare one', async () => {
      // More pending units than a list merges at a time, so a page settles before all are merged.
      const units = await inBatches(
        Array.from({ length: 1_500 }, (_, i) => i),
        16,
        async (i) => (await h.post('/executed_obs_units/start', startBody(`page-${i % 3}`))).body,
      );
      const rare = (await h.post('/executed_obs_units/start', startBody('page-rare'))).body;
      const pageOf = async (query: string) => {
        const list = await h.get(`/executed_obs_units?${query}`);
        assert.equal(list.status, 200, list.text);
        return list.body as { items: { id: string; obs_unit_id: string }[]; next_cursor: string };
      };
      const expected = units
        .filter((_, i) => i % 3 === 0)
        .map((u) => u.id as string)
        .sort();
      const seen: string[] = [];
      let cursor = '';
      do {
        const page = await pageOf(`obs_unit_id=ou-page-0&limit=150&cursor=${cursor}`);
        assert.ok(page.items.every((item) => item.obs_unit_id === 'ou-page-0'));
        seen.push(...page.items.map((item) => item.id));
        cursor = page.next_cursor;
      } while (cursor && seen.length <= expected.length);
      assert.deepEqual(seen, expected);
      const first = await pageOf('limit=5');
      assert.deepEqual(
        first.items.map((item) => item.id),
        [...units.map((u) => u.id as string), rare.id].sort().slice(0, 5),
      );
      assert.equal(first.next_cursor, first.items[4]?.id);
      const found = await pageOf('obs_unit_id=ou-page-rare');
      assert.deepEqual(
        found.items.map((item) => item.id),
        [rare.id],
      );
      assert.equal(found.next_cursor, null);

      // Files pending for the rare unit among files of others, listed by their unit.
      const register = async (unitId: string, count: number) =>
        (
          await h.post('/raw_data_files', {
            executed_obs_unit_id: unitId,
            files: Array.from({ length: count }, (_, n) => ({
              path: `/raw/${unitId}/${n}`,
              size_bytes: n,
              checksum: 'ab'.repeat(8),
              checksum_algorithm: 'xxh64',
            })),
          })
        ).body.ids as string[];
      const others = await register(units[0].id, 40);
      const files = await register(rare.id, 3);
      const filesOf = async (unitId: string) =>
        (
          (await h.get(`/raw_data_files?executed_obs_unit_id=${unitId.toUpperCase()}`)).body
            .items as {
            id: string;
            executed_obs_unit_id: string;
          }[]
        ).map((f) => [f.id, f.executed_obs_unit_id]);
      assert.deepEqual(
        await filesOf(rare.id),
        [...files].sort().map((id) => [id, rare.id]),
      );
      assert.equal((await filesOf(units[0].id)).length, others.length);
      assert.deepEqual(await filesOf(units[1].id), []);
    });
  });

  void describe('without a separate replica, on a main database that recovered from a crash', () => {
    let h: Harness;
    before(async () => {
      h = await Harness.start({ role: 'none' });
      // A primary that ran crash recovery reports the LSN its recovery ended at as its replay
      // position for as long as it runs: a site must not mistake it for a standby stuck there.
      await crashMain(h.stack.dir);
      await stackUp(h.stackOptions());
      const [recovered] = await h.mainRows<{ replay: string | null }>(
        'SELECT pg_last_wal_replay_lsn()::text AS replay',
      );
      assert.ok(recovered?.replay, 'the main database reports a replay position after recovery');
    });
    after(() => h?.close());

    void it('confirms against the main database when the replica URL is the main one', async () => {
      await h.startService('all', {
        replicaDatabaseUrl: h.config.mainDatabaseUrl,
        replicaIsMain: true,
      });
      const started = (await h.post('/executed_obs_units/start', startBody('no-replica'))).body;
      await waitFor(
        async () => (await h.get(`/events/${started.event_id}`)).body?.state === 'confirmed',
        'the start to be confirmed by the main database itself',
      );
      const unit = await h.get(`/executed_obs_units/${started.id}`);
      assert.deepEqual(unit.body.consistency, { source: 'replica', pending_events: 0 });
    });

    void it('acknowledges nothing when the replica URL names a server that is not a standby', async () => {
      for (const service of [...h.services]) {
        await h.stopService(service);
      }
      // The primary under another URL: configured as a replica, its replay LSN is NULL, which
      // must not read as caught up.
      const notAStandby = `${h.config.mainDatabaseUrl}?application_name=not-a-standby`;
      await h.startService('all', { replicaDatabaseUrl: notAStandby, replicaIsMain: false });
      const started = (await h.post('/executed_obs_units/start', startBody('misread'))).body;
      await waitFor(
        async () => (await h.get(`/events/${started.event_id}`)).body?.state === 'applied',
        'the start to be applied on main',
      );
      await waitFor(
        async () =>
          /outpost_circuit_breaker_state\{target="replica"\} 2/.test(
            (await h.get('/metrics')).text,
          ),
        'the acknowledgements to fail until the replica breaker opens',
      );
      assert.equal((await h.get(`/events/${started.event_id}`)).body.state, 'applied');
      assert.ok(
        (await unacknowledged(h)) >= 1,
        'nothing acknowledged past a server that is no standby',
      );
      // And the operator's view says why.
      const pending = await h.get('/admin/pending', {
        authorization: `Bearer ${h.config.adminToken}`,
      });
      assert.match(pending.body.replica.error, /not a standby/);
      const health = await h.get('/health');
      assert.equal(health.body.replica, 'disconnected');
      assert.match(
        health.body.replication_lag.reason ?? '',
        /^the replica's position cannot be read: the replica is not a standby: .* names the main database in it, with the host, port, database and user MAIN_DATABASE_URL gives \(.*localhost and 127\.0\.0\.1 are\), or leaves it unset; the processes read it at start-up\)$/,
      );
      const entry = pending.body.entries.find(
        (e: { event_id: string }) => e.event_id === started.event_id,
      );
      assert.equal(entry?.waiting_for, 'replica');
    });
  });

  void describe('with replica replay paused', () => {
    let h: Harness;
    before(async () => {
      h = await Harness.start();
    });
    after(async () => {
      await h.replica.query('SELECT pg_wal_replay_resume()').catch(() => undefined);
      await h?.close();
    });

    void it('keeps applied entries pending with their commit LSN until the replica replays them', async () => {
      await h.pauseReplay();
      const unit = await h.post('/executed_obs_units/start', startBody('paused'));
      const finish = await h.post(`/executed_obs_units/${unit.body.id}/finish`, {
        status: 'success',
      });
      assert.equal(finish.status, 202);
      const eventIds = [unit.body.event_id, finish.body.event_id];
      await waitFor(
        async () =>
          (
            await h.mainRows(
              'SELECT 1 FROM events WHERE event_id = ANY($1) AND commit_lsn IS NOT NULL',
              [eventIds],
            )
          ).length === 2,
        'both events applied on the main database with their commit LSN',
      );
      const log = eventLogOf(h);
      await waitFor(async () => {
        const views = await Promise.all(eventIds.map((id) => h.get(`/events/${id}`)));
        return views.every((v) => v.body.state === 'applied' && v.body.commit_lsn);
      }, 'both events to show as applied');
      // Give the acker many chances to act wrongly: it must not acknowledge past the replica.
      const acker = h.services[0]?.acker;
      assert.ok(acker);
      const passesBefore = acker.passes;
      const seen = new Set<number>();
      await waitFor(async () => {
        seen.add(await unacknowledged(h));
        return acker.passes >= passesBefore + 20;
      }, '20 acknowledgement passes');
      assert.deepEqual([...seen], [2], 'nothing acknowledged past the replica at any look');
      const merged = await h.get(`/executed_obs_units/${unit.body.id}`);
      assert.equal(merged.body.status, 'success');
      assert.equal(merged.body.consistency.source, 'pending');
      const partition = (await h.get(`/events/${unit.body.event_id}`)).body.partition as number;
      assert.equal(await log.pendingCount(partition), 2);

      await h.replica.query('SELECT pg_wal_replay_resume()');
      await waitForAllAcknowledged(h, 15_000);
      const confirmed = await h.get(`/executed_obs_units/${unit.body.id}`);
      assert.deepEqual(confirmed.body.consistency, { source: 'replica', pending_events: 0 });
      assert.equal(confirmed.body.status, 'success');
    });

    void it('pages on to a matching unit when pending events took every row of a page out of the filter', async () => {
      const started: { id: string }[] = [];
      for (const n of [1, 2, 3]) {
        started.push((await h.post('/executed_obs_units/start', startBody(`filtered-${n}`))).body);
      }
      await waitForAllAcknowledged(h, 15_000);
      const [first, second, third] = started.map((u) => u.id).sort();
      await h.pauseReplay();
      try {
        // The replica still shows all three running; the first two finish in the log.
        for (const id of [first, second]) {
          const finish = await h.post(`/executed_obs_units/${id}/finish`, { status: 'success' });
          assert.equal(finish.status, 202);
        }
        const listed: string[] = [];
        let cursor: string | null = null;
        let pages = 0;
        do {
          const page = await h.get(
            `/executed_obs_units?status=running&limit=2${cursor ? `&cursor=${cursor}` : ''}`,
          );
          assert.equal(page.status, 200, page.text);
          listed.push(...page.body.items.map((item: { id: string }) => item.id));
          cursor = page.body.next_cursor;
          pages += 1;
        } while (cursor !== null && pages < 10);
        assert.deepEqual(listed, [third], 'the running unit is listed, the finished ones are not');
      } finally {
        await h.resumeReplay();
      }
    });
  });

  void describe('under concurrent load', () => {
    let h: Harness;
    before(async () => {
      h = await Harness.start();
    });
    after(() => h?.close());

    void it('finishes 200 units with 100 files each, fired concurrently, with contiguous seqs', async () => {
      const units = 200;
      const filesPerUnit = 100;
      const starts = await inBatches(
        Array.from({ length: units }, (_, i) => i),
        32,
        (i) => h.post('/executed_obs_units/start', startBody(`load-${i}`)),
      );
      assert.ok(starts.every((r) => r.status === 201));
      const ids = starts.map((r) => r.body.id as string);
      const writes = await inBatches(
        ids.flatMap((id) => [
          () => h.post(`/executed_obs_units/${id}/finish`, { status: 'success' }),
          () =>
            h.post('/raw_data_files', {
              executed_obs_unit_id: id,
              files: Array.from({ length: filesPerUnit }, (_, f) => ({
                path: `/data/${id}/${f}.fits`,
                size_bytes: 1024 * f,
                checksum: f.toString(16).padStart(16, '0'),
                checksum_algorithm: 'xxh64',
              })),
            }),
        ]),
        32,
        (write) => write(),
      );
      assert.deepEqual(
        writes.filter((r) => r.status !== 201 && r.status !== 202).map((r) => r.text),
        [],
      );
      const accepted = await streamEventIds(h);
      assert.equal(accepted.size, units * (2 + filesPerUnit));
      await audit(h, accepted);
      const perUnit = await h.mainRows<{ status: string; files: number }>(
        `SELECT u.status, count(f.id)::int AS files FROM executed_obs_units u
           LEFT JOIN raw_data_files f ON f.executed_obs_unit_id = u.id GROUP BY u.id`,
      );
      assert.equal(perUnit.length, units);
      assert.ok(perUnit.every((u) => u.status === 'success' && u.files === filesPerUnit));
      const links = await h.mainRows<{ n: number }>(
        "SELECT count(*)::int AS n FROM aggregate_links WHERE kind = 'recorded_in'",
      );
      assert.equal(links[0]?.n, units * filesPerUnit);
    });
  });
});

void describe('two sites sharing one main database', () => {
  let h: Harness;
  before(async () => {
    h = await Harness.start();
  });
  after(() => h?.close());

  /** Starts a unit through the service on `port`: each site's service runs in this process. */
  const postTo = async (port: number, obsUnitId: string) => {
    const answer = await fetch(`http://127.0.0.1:${port}/executed_obs_units/start`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ obs_unit_id: obsUnitId, instrument: 'x' }),
    });
    assert.equal(answer.status, 201, await answer.clone().text());
    return ((await answer.json()) as { event_id: string }).event_id;
  };

  void it("applies every site's writes: each site's projectors hold all of its own partitions", async () => {
    // Another site: its own log (here a namespace of the same Redis) and its own processes,
    // projecting onto the same main database.
    const far = await h.startService('all', {
      site: 'far-site',
      namespace: 'outpost:far-site',
      consumer: 'far-site:8080',
      port: 0,
    });
    const near = h.services[0];
    assert.ok(near, "this site's service");
    const eventIds: string[] = [];
    // Enough writes for every partition of both sites to have some, whatever their ids.
    for (let n = 0; n < 8 * h.config.partitions; n += 1) {
      eventIds.push(await postTo(near.port, `near-${n}`), await postTo(far.port, `far-${n}`));
    }
    await waitForApplied(h, eventIds, 'every write of both sites to be applied');
    for (const service of [near, far]) {
      assert.deepEqual(
        service.projector?.stats().partitions,
        [...Array(h.config.partitions).keys()],
        "a site's one projector holds all of its partitions",
      );
    }
  });

  void it("keeps a site's partitions with its own log when another site is given its name, which says so", async () => {
    // A second site with the first's OUTPOST_SITE (an env file copied): its own log, here a
    // namespace of the same Redis, so the site name recorded there does not refuse it.
    const copy = await h.startService('all', {
      namespace: 'outpost:copied-env',
      consumer: 'copied-env:8080',
      port: 0,
    });
    try {
      await waitFor(
        () =>
          /^site test-site's partitions are applied from another Redis log/.test(
            copy.projector?.stats().lastError ?? '',
          ),
        'the copy to say that another log serves its site name',
      );
      assert.deepEqual(copy.projector?.stats().partitions, []);
      const health = (await (await fetch(`http://127.0.0.1:${copy.port}/health`)).json()) as {
        status: string;
        background_processor: { last_error: string | null };
      };
      assert.equal(health.status, 'degraded');
      assert.match(
        health.background_processor.last_error ?? '',
        /two sites have OUTPOST_SITE=test-site, so give each its own/,
      );
      // An API process of the copy, which runs no projector of its own, says the same: the
      // leases it sees held are the other log's.
      const copyApi = await h.startService('api', {
        namespace: 'outpost:copied-env',
        consumer: 'copied-env:8081',
        port: 0,
      });
      try {
        const apiHealth = (await (
          await fetch(`http://127.0.0.1:${copyApi.port}/health`)
        ).json()) as typeof health;
        assert.equal(apiHealth.status, 'degraded');
        assert.match(
          apiHealth.background_processor.last_error ?? '',
          /^site test-site's partitions are applied from another Redis log .*two sites have OUTPOST_SITE=test-site/,
        );
      } finally {
        await h.stopService(copyApi);
      }
      // Either site's operator hears of the other in outpost pending.
      for (const [namespace, line] of [
        [
          h.config.namespace,
          `a projector of another Redis log (copied-env:8080) runs as site ${h.config.site} and applies nothing`,
        ],
        [
          'outpost:copied-env',
          `site ${h.config.site}'s partitions are applied from another Redis log (projectors ${h.config.consumer}, last seen`,
        ],
      ] as const) {
        const pending = await runCliWith({ ...h.envOf(), OUTPOST_NAMESPACE: namespace }, [
          'pending',
        ]);
        assert.ok(pending.stdout.includes(line), `${pending.stdout}${pending.stderr}`);
      }
      // Every write of the first site still applies: none of its partitions went to the copy.
      const eventIds: string[] = [];
      for (let n = 0; n < 4 * h.config.partitions; n += 1) {
        eventIds.push(
          (await h.post('/executed_obs_units/start', { obs_unit_id: `kept-${n}`, instrument: 'x' }))
            .body.event_id,
        );
      }
      await waitForApplied(h, eventIds, 'every write of the first site to be applied');
      assert.deepEqual(h.services[0]?.projector?.stats().partitions, [
        ...Array(h.config.partitions).keys(),
      ]);
    } finally {
      await copy.stop();
    }
  });

  void it('refuses to start a process of a site under another name: it would lease every partition beside the others', async () => {
    // A second host left to the default OUTPOST_SITE, its host name.
    await assert.rejects(
      h.startService('projector', { site: 'second-host' }),
      /^SiteNameError: OUTPOST_SITE is "second-host", but this log is served as site "test-site": start every process of the site with OUTPOST_SITE=test-site/,
    );
  });

  void it("applies again, with no operator, once the site's Redis was replaced by an empty one while its processes were stopped", async () => {
    const service = h.services[0];
    assert.ok(service, "this site's service, started first");
    await waitForApplied(
      h,
      [await postTo(service.port, 'before-replaced')],
      'a write before the replacement',
    );
    await waitForAllAcknowledged(h);
    await h.stopService(service);
    // Every key of the site's log gone: a new Redis, with a new log id.
    await h.redis.del(...(await h.redis.keys(`${h.config.namespace}:*`)));
    const restarted = await h.startService('all');
    await waitForApplied(
      h,
      [await postTo(restarted.port, 'after-replaced')],
      'a write after the replacement, the log that held the name having stopped',
    );
    // Partitions are leased one after another: the write's may be applied before the last is held.
    await waitFor(
      () => restarted.projector?.stats().partitions.length === h.config.partitions,
      'every partition to be held',
    );
    assert.deepEqual(restarted.projector?.stats().partitions, [
      ...Array(h.config.partitions).keys(),
    ]);
    assert.equal(restarted.projector?.stats().lastError ?? null, null);
  });
});

void describe('a Redis whose ACL denies INFO to the service', () => {
  let h: Harness;
  const user = `no-info-${process.pid}`;
  after(async () => {
    // The service first: its clients, cut off by the user's deletion, would retry for good.
    for (const service of [...(h?.services ?? [])]) {
      await h.stopService(service);
    }
    await h?.redis.call('ACL', 'DELUSER', user).catch(() => undefined);
    await h?.close();
  });

  void it('still answers /buffer-stats and /health, without the memory it cannot read', async () => {
    h = await Harness.start({ role: 'none' });
    await h.redis.call('ACL', 'SETUSER', user, 'on', 'nopass', '~*', '&*', '+@all', '-info');
    const url = new URL(h.config.redisUrl);
    url.username = user;
    url.password = 'unused';
    await h.startService('api', { redisUrl: url.toString() });
    const written = await h.post('/executed_obs_units/start', startBody('acl'));
    assert.equal(written.status, 201, written.text);
    const stats = await h.get('/buffer-stats');
    assert.equal(stats.status, 200, stats.text);
    assert.equal(stats.body.buffer_size_mb, null);
    assert.ok(stats.body.pending_transactions >= 1, stats.text);
    const health = await h.get('/health');
    assert.equal(health.status, 200, health.text);
    assert.equal(health.body.transaction_buffer.memory_used_bytes, null);
  });
});
