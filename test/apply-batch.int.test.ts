import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import pg from 'pg';
import { parseLsn } from '../src/db/lsn.ts';
import {
  acquireLease,
  claimSite,
  FencedError,
  type Lease,
  releaseLeases,
  renewLeases,
} from '../src/db/queries/leases.ts';
import type { Envelope } from '../src/domain/events.ts';
import { newIdInPartition } from '../src/domain/ids.ts';
import type { LogEntry } from '../src/log/codec.ts';
import { createLogger } from '../src/observability/logger.ts';
import {
  applyBatches,
  type BatchResult,
  MainDatabaseChangedError,
} from '../src/projector/apply-batch.ts';
import { BatchCombiner } from '../src/projector/batch-combiner.ts';
import { LeaseManager, type LeaseManagerDeps } from '../src/projector/leases.ts';
import { leasePool, projectorPool } from '../src/service.ts';
import { crashMain, stackUp } from '../src/stack/stack.ts';
import { Harness, waitFor } from './harness/harness.ts';

/** One partition's batch on its own. */
const applyBatch = async (
  pool: pg.Pool,
  entries: readonly LogEntry[],
  lease: Lease,
): Promise<BatchResult> => {
  const [result] = await applyBatches(pool, [{ entries, lease }]);
  assert.ok(result, 'a result for the one batch');
  return result;
};

const startEntry = (n: number, partition = 0, aggregateId?: string): LogEntry => {
  const id = aggregateId ?? newIdInPartition(partition, 8);
  const event: Envelope = {
    event_id: newIdInPartition(partition, 8),
    aggregate_id: id,
    aggregate_type: 'executed_obs_unit',
    version: 1,
    site: 'fencing',
    accepted_at: Date.now(),
    type: 'ExecutedObsUnitStarted',
    data: {
      obs_unit_id: `f-${n}`,
      instrument: 'i',
      start_time: new Date().toISOString(),
      instrument_configuration_id: null,
      notes: null,
      metadata: {},
    },
  };
  return { entryId: `${Date.now()}-${n}`, event };
};

void describe('applying a batch', () => {
  let h: Harness;
  before(async () => {
    h = await Harness.start({ role: 'none' });
  });
  after(() => h?.close());

  const applied = async (entry: LogEntry) =>
    (await h.mainRows('SELECT 1 FROM events WHERE event_id = $1', [entry.event.event_id]))
      .length === 1;

  void it('refuses the commit of an owner whose lease was taken over, and accepts the new owner', async () => {
    const ttlMs = 300;
    const tokenA = await acquireLease(h.main, h.config.site, 0, 'A', ttlMs);
    assert.equal(tokenA, 1);
    assert.equal(
      await acquireLease(h.main, h.config.site, 0, 'B', ttlMs),
      undefined,
      'a live lease is not taken',
    );
    const leaseA = { site: h.config.site, partition: 0, consumer: 'A', token: tokenA };
    const first = startEntry(1);
    await applyBatch(h.main, [first], leaseA);
    assert.ok(await applied(first));

    // A stalls past its lease; B takes the partition over with a higher token.
    let tokenB: number | undefined;
    await waitFor(async () => {
      tokenB = await acquireLease(h.main, h.config.site, 0, 'B', 60_000);
      return tokenB !== undefined;
    }, 'the lease to expire and B to take it');
    assert.equal(tokenB, 2);

    const stale = startEntry(2);
    await assert.rejects(applyBatch(h.main, [stale], leaseA), FencedError);
    assert.equal(await applied(stale), false, 'nothing of the stale batch is committed');
    assert.deepEqual(
      await renewLeases(h.main, [leaseA], ttlMs),
      [],
      'A cannot renew a lease it lost',
    );

    await applyBatch(h.main, [stale], {
      site: h.config.site,
      partition: 0,
      consumer: 'B',
      token: tokenB as number,
    });
    assert.ok(await applied(stale));
  });

  void it("leases a site's own partitions: another site's lease of the same number leaves it free, an earlier build's live one does not", async () => {
    const other = await acquireLease(h.main, 'far-site', 5, 'far-site:8080', 60_000);
    assert.ok(other, "the other site's partition 5");
    // A process of a build from before leases were a site's, still running through the upgrade.
    await h.main.query(
      `INSERT INTO partition_leases (site, partition, owner, token, expires_at, acquired_at)
       VALUES ('', 6, 'earlier-build', 1, clock_timestamp() + interval '1 minute', clock_timestamp())`,
    );
    try {
      const take = (partition: number) =>
        acquireLease(h.main, h.config.site, partition, 'here', 60_000);
      const giveBack = (partition: number, token: number) =>
        releaseLeases(h.main, [{ site: h.config.site, partition, consumer: 'here', token }]);
      const own = await take(5);
      assert.ok(own, "this site's partition 5 beside the other site's");
      // Tokens of one partition number never repeat across sites: an earlier build's check,
      // which does not match the site, must never take another site's lease for its own.
      assert.ok(own > other, `${own} after ${other}`);
      await giveBack(5, own);
      assert.equal(await take(6), undefined);
      await h.main.query(
        "UPDATE partition_leases SET owner = NULL WHERE site = '' AND partition = 6",
      );
      const freed = await take(6);
      assert.ok(freed, 'taken once the earlier build gave it back');
      await giveBack(6, freed);
    } finally {
      await h.main.query("DELETE FROM partition_leases WHERE site IN ('', 'far-site')");
    }
  });

  void it('refuses, writing nothing, a batch whose main database is not where the last one left it', async () => {
    const token = await acquireLease(h.main, h.config.site, 2, 'D', 60_000);
    assert.ok(token);
    const lease = { site: h.config.site, partition: 2, consumer: 'D', token };
    const first = startEntry(6, 2);
    const [done] = await applyBatches(h.main, [{ entries: [first], lease }]);
    const seen = done?.mainPosition;
    assert.ok(seen, 'the batch says where it left the main database');
    assert.equal(seen.lsn, done?.commitLsn);
    assert.match(seen.timeline, /^[0-9A-F]{8}$/);

    // Restored from a backup (WAL behind the last commit), another cluster, another timeline.
    const elsewhere = [
      { ...seen, lsn: '7F/0' },
      { ...seen, system: '1' },
      { ...seen, timeline: 'FFFFFFFF' },
    ];
    for (const mainSeen of elsewhere) {
      const next = startEntry(7, 2);
      await assert.rejects(
        applyBatches(h.main, [{ entries: [next], lease, mainSeen }]),
        MainDatabaseChangedError,
      );
      assert.equal(await applied(next), false, `nothing written for ${JSON.stringify(mainSeen)}`);
    }
    const next = startEntry(8, 2);
    const [went] = await applyBatches(h.main, [{ entries: [next], lease, mainSeen: seen }]);
    assert.deepEqual(went?.applied, [next], 'the same database, further on');
    assert.ok(parseLsn(went?.mainPosition?.lsn ?? '0/0') >= parseLsn(seen.lsn));
    await releaseLeases(h.main, [lease]);
  });

  void it('applies a redelivered creation only once, beside new events of the same batch or twice within it', async () => {
    const token = await acquireLease(h.main, h.config.site, 1, 'C', 60_000);
    assert.ok(token);
    const lease = { site: h.config.site, partition: 1, consumer: 'C', token };
    const [a, b, c] = [startEntry(3), startEntry(4), startEntry(5)];
    const first = await applyBatch(h.main, [a], lease);
    assert.deepEqual(first.applied, [a]);

    const again = await applyBatch(h.main, [a, b], lease);
    assert.deepEqual(again.applied, [b], 'the new event is applied');
    assert.deepEqual(again.duplicates, [a], 'the redelivered one is reported, not applied');
    const counts = await h.mainRows<{ n: number }>(
      'SELECT count(*)::int AS n FROM events WHERE event_id = ANY($1::uuid[]) GROUP BY event_id',
      [[a.event.event_id, b.event.event_id]],
    );
    assert.deepEqual(counts, [{ n: 1 }, { n: 1 }]);

    // A crash between the batch's commit and its LSN stamp: redelivered, the event is stamped.
    await h.main.query('UPDATE events SET commit_lsn = NULL WHERE event_id = $1', [
      b.event.event_id,
    ]);
    const redelivered = await applyBatch(h.main, [b, c], lease);
    assert.deepEqual(redelivered.duplicates, [b]);
    assert.deepEqual(redelivered.applied, [c]);
    const stamps = await h.mainRows<{ stamped: boolean }>(
      'SELECT commit_lsn IS NOT NULL AS stamped FROM events WHERE event_id = ANY($1::uuid[])',
      [[b.event.event_id, c.event.event_id]],
    );
    assert.deepEqual(stamps, [{ stamped: true }, { stamped: true }]);

    // Twice within one batch: applied once, one row, one count, one version.
    const once = startEntry(6, 1);
    // The same event under a second entry id, as a replay appends it while the first is in flight.
    const twice = { ...once, entryId: `${Date.now() + 1}-6` };
    const result = await applyBatch(h.main, [once, twice], lease);
    assert.deepEqual(result.applied, [once]);
    assert.deepEqual(result.duplicates, [twice]);
    // event_id is the events table's key, so a second apply would show in what it maintains.
    const id = once.event.aggregate_id;
    assert.deepEqual(
      await h.mainRows('SELECT event_count FROM aggregate_stats WHERE aggregate_id = $1', [id]),
      [{ event_count: 1 }],
    );
    assert.deepEqual(
      await h.mainRows('SELECT seq FROM aggregate_heads WHERE aggregate_id = $1', [id]),
      [{ seq: 0 }],
    );
    assert.deepEqual(
      await h.mainRows('SELECT version FROM executed_obs_units WHERE id = $1', [id]),
      [{ version: 1 }],
    );

    // Twice within one batch, and the first copy fails: the second waits, it is not "applied".
    const orphan: LogEntry = {
      entryId: `${Date.now() + 2}-7`,
      event: {
        ...startEntry(7, 1).event,
        type: 'ExecutedObsUnitFinished',
        data: { status: 'success', end_time: new Date().toISOString() },
      } as Envelope,
    };
    const orphanAgain = { ...orphan, entryId: `${Date.now() + 3}-7` };
    const failing = await applyBatch(h.main, [orphan, orphanAgain], lease);
    assert.deepEqual(
      failing.failed.map((f) => f.entry),
      [orphan],
    );
    assert.deepEqual(failing.duplicates, [], 'nothing was applied to duplicate');
    assert.deepEqual(failing.deferred, [orphanAgain]);
  });

  void it('keeps the commit-LSN stamp on the events index after the table outgrows its first plan', async () => {
    const pool = projectorPool(h.config);
    try {
      const token = await acquireLease(h.main, h.config.site, 2, 'D', 60_000);
      assert.ok(token);
      const lease = { site: h.config.site, partition: 2, consumer: 'D', token };
      // Past five runs PostgreSQL may keep a generic plan, made here for a nearly empty table.
      for (let n = 0; n < 8; n += 1) {
        await applyBatch(pool, [startEntry(100 + n)], lease);
      }
      await h.main.query(
        `INSERT INTO events (event_id, aggregate_id, seq, type, version, data, site, partition,
                             stream_entry_id, occurred_at, commit_lsn)
         SELECT gen_random_uuid(), gen_random_uuid(), 0, 'ExecutedObsUnitStarted', 1, '{}',
                'fencing', 2, '0-1', now(), '0/1' FROM generate_series(1, 20000)`,
      );
      assert.equal(pool.totalCount, 1, 'one connection prepared and ran every statement');
      const client = await pool.connect();
      try {
        const { rows } = await client.query<{ 'QUERY PLAN': string }>(
          `EXPLAIN EXECUTE outpost_stamp_commit_lsn('{${randomUUID()}}')`,
        );
        const plan = rows.map((row) => row['QUERY PLAN']).join('\n');
        assert.match(plan, /events_pkey/, plan);
        assert.doesNotMatch(plan, /Seq Scan on events/, plan);
      } finally {
        client.release();
      }
    } finally {
      await pool.end();
    }
  });

  void it("stamps each event with an LSN at or past its batch's commit record, so a replica there shows it", async () => {
    // The batch commits without waiting for its flush: the flush position read right after can
    // still lie before its commit record. Read back from the WAL itself.
    await h.main.query('CREATE EXTENSION IF NOT EXISTS pg_walinspect');
    const pool = projectorPool(h.config);
    const token = await acquireLease(h.main, h.config.site, 3, 'W', 60_000);
    assert.ok(token);
    const lease = { site: h.config.site, partition: 3, consumer: 'W', token };
    try {
      for (let n = 0; n < 5; n += 1) {
        const [before] = await h.mainRows<{ lsn: string }>(
          'SELECT pg_current_wal_insert_lsn()::text AS lsn',
        );
        const entry = startEntry(200 + n, 3);
        await applyBatch(pool, [entry], lease);
        // The aggregate's row is written by the batch alone (the stamp rewrites the event's).
        const [stamped] = await h.mainRows<{ xid: string; commit_lsn: string }>(
          `SELECT a.xmin::text AS xid, e.commit_lsn::text AS commit_lsn
             FROM aggregates a JOIN events e ON e.aggregate_id = a.id WHERE a.id = $1`,
          [entry.event.aggregate_id],
        );
        assert.ok(stamped?.commit_lsn, 'stamped');
        const [commit] = await h.mainRows<{ end_lsn: string }>(
          `SELECT end_lsn::text FROM pg_get_wal_records_info($1::pg_lsn, pg_current_wal_flush_lsn())
            WHERE resource_manager = 'Transaction' AND record_type LIKE 'COMMIT%' AND xid = $2::xid`,
          [before?.lsn, stamped.xid],
        );
        assert.ok(commit, "the batch's commit record");
        assert.ok(
          parseLsn(stamped.commit_lsn) >= parseLsn(commit.end_lsn),
          `commit_lsn ${stamped.commit_lsn} is at or past the commit record's end ${commit.end_lsn}`,
        );
      }
    } finally {
      // Partition 3 is taken again by the tests of several partitions.
      await releaseLeases(h.main, [lease]);
      await pool.end();
    }
  });

  void it('commits through a pool whose sessions flush every commit, whatever the server default', async () => {
    const [server] = await h.mainRows<{ synchronous_commit: string }>('SHOW synchronous_commit');
    // The test stack runs with synchronous_commit=off: the pool's own setting must win.
    assert.equal(server?.synchronous_commit, 'off');
    const pool = projectorPool(h.config);
    try {
      const [session] = (
        await pool.query<{ synchronous_commit: string }>('SHOW synchronous_commit')
      ).rows;
      assert.equal(session?.synchronous_commit, 'on');
      // The batch write relaxes it for its own transaction only (the stamp after it flushes both).
      const lease = {
        site: h.config.site,
        partition: 7,
        consumer: 'G',
        token: (await acquireLease(pool, h.config.site, 7, 'G', 60_000)) as number,
      };
      await applyBatch(pool, [startEntry(300, 7)], lease);
      const after = (await pool.query<{ synchronous_commit: string }>('SHOW synchronous_commit'))
        .rows;
      assert.deepEqual(after, [{ synchronous_commit: 'on' }]);
    } finally {
      await pool.end();
    }
  });

  void describe('of several partitions together', () => {
    const lease = async (partition: number, consumer: string) => {
      const token = await acquireLease(h.main, h.config.site, partition, consumer, 60_000);
      assert.ok(token, `lease of partition ${partition}`);
      return { site: h.config.site, partition, consumer, token };
    };
    /** The transactions that wrote these events: one xmin per transaction. */
    const writers = async (entries: LogEntry[]) =>
      (
        await h.mainRows<{ xmin: string }>(
          'SELECT DISTINCT xmin::text FROM events WHERE event_id = ANY($1::uuid[])',
          [entries.map((e) => e.event.event_id)],
        )
      ).length;
    const partitionsOf = async (entries: LogEntry[]) =>
      (
        await h.mainRows<{ partition: number }>(
          'SELECT partition FROM events WHERE event_id = ANY($1::uuid[]) ORDER BY partition',
          [entries.map((e) => e.event.event_id)],
        )
      ).map((r) => r.partition);

    let p3: Lease;
    let p4: Lease;
    before(async () => {
      [p3, p4] = [await lease(3, 'E'), await lease(4, 'E')];
    });

    void it('writes them in one transaction and answers each partition its own result', async () => {
      const earlier = startEntry(200, 3);
      await applyBatch(h.main, [earlier], p3);
      const [a, b] = [startEntry(201, 3), startEntry(202, 4)];
      const [three, four] = (await applyBatches(h.main, [
        { entries: [earlier, a], lease: p3 },
        { entries: [b], lease: p4 },
      ])) as [BatchResult, BatchResult];
      assert.deepEqual(three.applied, [a]);
      assert.deepEqual(three.duplicates, [earlier]);
      assert.deepEqual(four.applied, [b]);
      assert.deepEqual(four.duplicates, []);
      assert.equal(three.commitLsn, four.commitLsn, 'one commit, one LSN to wait for');
      assert.equal(await writers([a, b]), 1, 'one transaction wrote both partitions');
      assert.deepEqual(await partitionsOf([a, b]), [3, 4], 'each event keeps its partition');
    });

    void it('writes nothing of any partition when one of their leases was taken over', async () => {
      const p5 = await lease(5, 'E');
      const p6 = { ...(await lease(6, 'E')), token: 0 };
      const [a, b] = [startEntry(210, 5), startEntry(211, 6)];
      await assert.rejects(
        applyBatches(h.main, [
          { entries: [a], lease: p5 },
          { entries: [b], lease: p6 },
        ]),
        /no longer current/,
      );
      assert.equal(await applied(a), false, 'the partition whose lease holds waits too');
      assert.equal(await applied(b), false);

      // Through the combiner, each partition learns only its own fate.
      const combiner = new BatchCombiner((requests) => applyBatches(h.main, requests), 500);
      const [five, six] = await Promise.allSettled([
        combiner.apply({ entries: [a], lease: p5 }),
        combiner.apply({ entries: [b], lease: p6 }),
      ]);
      assert.equal(five.status, 'fulfilled');
      assert.equal(six.status, 'rejected');
      assert.ok(six.status === 'rejected' && six.reason instanceof FencedError, 'fenced alone');
      assert.ok(await applied(a));
      assert.equal(await applied(b), false);
    });

    void it("combines batches that are ready together, and keeps one partition's refusal its own", async () => {
      const combiner = new BatchCombiner((requests) => applyBatches(h.main, requests), 500);
      const [a, b] = [startEntry(220, 3), startEntry(221, 4)];
      const results = await Promise.all([
        combiner.apply({ entries: [a], lease: p3 }),
        combiner.apply({ entries: [b], lease: p4 }),
      ]);
      assert.deepEqual(
        results.map((r) => r.applied),
        [[a], [b]],
      );
      assert.equal(await writers([a, b]), 1, 'applied in one transaction');

      // A second creation of an existing aggregate: PostgreSQL refuses it (unique key).
      const poison = startEntry(222, 4, b.event.aggregate_id);
      const c = startEntry(223, 3);
      const [three, four] = await Promise.allSettled([
        combiner.apply({ entries: [c], lease: p3 }),
        combiner.apply({ entries: [poison], lease: p4 }),
      ]);
      assert.equal(three.status, 'fulfilled');
      assert.deepEqual(three.status === 'fulfilled' && three.value.applied, [c]);
      assert.equal(four.status, 'rejected');
      assert.match(four.status === 'rejected' ? String(four.reason) : '', /duplicate key/);
      assert.ok(await applied(c));
      assert.equal(await applied(poison), false);
    });
  });
});

void describe('a batch whose commit LSN was returned', () => {
  let h: Harness;
  before(async () => {
    h = await Harness.start({ role: 'none' });
  });
  after(async () => {
    await stackUp(h.stackOptions());
    await h?.close();
  });

  void it('survives a crash of the main database the moment applyBatch returns', async () => {
    const pool = projectorPool(h.config);
    pool.on('error', () => undefined); // its idle connection dies with the server
    const entries = [startEntry(400, 1), startEntry(401, 1)];
    let commitLsn: string;
    try {
      const token = await acquireLease(pool, h.config.site, 1, 'H', 60_000);
      assert.ok(token);
      ({ commitLsn } = await applyBatch(pool, entries, {
        site: h.config.site,
        partition: 1,
        consumer: 'H',
        token,
      }));
      // No pause: the WAL writer, which would flush an asynchronous commit on its own, runs every
      // 200 ms; an immediate stop now loses whatever commit did not wait for its flush.
      await crashMain(h.stack.dir);
    } finally {
      await pool.end().catch(() => undefined);
    }
    await stackUp(h.stackOptions());
    await waitFor(
      async () => (await h.mainRows('SELECT 1')).length === 1,
      'the main database to answer again',
    );
    const rows = await h.mainRows<{ event_id: string; commit_lsn: string | null }>(
      'SELECT event_id, commit_lsn::text FROM events WHERE event_id = ANY($1::uuid[])',
      [entries.map((e) => e.event.event_id)],
    );
    assert.equal(rows.length, 2, 'the batch is there after the crash');
    for (const row of rows) {
      assert.ok(row.commit_lsn, 'and so is its stamp');
      assert.ok(parseLsn(row.commit_lsn) <= parseLsn(commitLsn), 'at or before the LSN returned');
    }
  });
});

void describe('a main database whose time zone had local mean time', () => {
  let h: Harness;
  before(async () => {
    h = await Harness.start({ role: 'none' });
    await h.main.query(`ALTER DATABASE ${h.database} SET timezone TO 'America/Santiago'`);
  });
  after(() => h?.close());

  void it('applies and reads back a unit that started in 1850', async () => {
    const started = startEntry(500, 2);
    (started.event.data as { start_time: string }).start_time = '1850-01-01T00:00:00.000Z';
    const updated: LogEntry = {
      entryId: `${Date.now()}-501`,
      event: {
        ...started.event,
        event_id: newIdInPartition(2, 8),
        type: 'ExecutedObsUnitUpdated',
        data: { notes: 'seeing 0.6' },
      },
    };
    // Why the pools say UTC: in the database's own zone the offset of 1850 has seconds.
    const plain = new pg.Client({ connectionString: h.config.mainDatabaseUrl });
    await plain.connect();
    try {
      const { rows } = await plain.query<{ t: string }>(
        "SELECT to_jsonb('1850-01-01T00:00:00Z'::timestamptz) #>> '{}' AS t",
      );
      assert.match(rows[0]?.t ?? '', /-04:42:4\d$/);
      assert.ok(Number.isNaN(Date.parse(rows[0]?.t ?? '')));
    } finally {
      await plain.end();
    }
    const pool = projectorPool(h.config);
    try {
      const token = await acquireLease(pool, h.config.site, 2, 'tz', 60_000);
      assert.ok(token);
      const lease = { site: h.config.site, partition: 2, consumer: 'tz', token };
      // The update reads the row back to fold onto it: that is what a seconds offset broke.
      await applyBatch(pool, [started], lease);
      await applyBatch(pool, [updated], lease);
    } finally {
      await pool.end();
    }
    const rows = await h.mainRows<{ start_time: Date; notes: string }>(
      'SELECT start_time, notes FROM executed_obs_units WHERE id = $1',
      [started.event.aggregate_id],
    );
    assert.equal(rows[0]?.start_time.toISOString(), '1850-01-01T00:00:00.000Z');
    assert.equal(rows[0]?.notes, 'seeing 0.6');
  });
});

void describe('two logs run under one site name', () => {
  let h: Harness;
  before(async () => {
    h = await Harness.start({ role: 'none' });
  });
  after(() => h?.close());

  // A second site given the first's OUTPOST_SITE (its env file copied): its own Redis log, the
  // same leases in the main database.
  const manager = (consumer: string, logId: () => Promise<string>, site = 'copied-site') =>
    new LeaseManager({
      pool: h.main,
      site,
      logId,
      consumer,
      partitions: h.config.partitions,
      ttlMs: 60_000,
      logger: createLogger('silent'),
      events: { acquired: async () => undefined, stopped: async () => undefined },
    });
  const all = () => [...Array(h.config.partitions).keys()];
  const roster = async (site = 'copied-site') =>
    (
      await h.mainRows<{ consumer: string }>(
        'SELECT consumer FROM projector_members WHERE site = $1 ORDER BY consumer',
        [site],
      )
    ).map((row) => row.consumer);
  const claimedBy = async (site: string) =>
    (await h.mainRows<{ log: string }>('SELECT log FROM site_logs WHERE site = $1', [site]))[0]
      ?.log;

  void it('keeps the site from a log seen while it ran, however long its processes stop, until an operator frees it', async () => {
    const first = manager('summit-a:8080', async () => 'log-a');
    let copyLog = 'log-b';
    const copy = manager('summit-b:8080', async () => copyLog);
    await first.tick();
    assert.deepEqual(first.owned, all());
    await copy.tick();
    assert.deepEqual(copy.owned, []);
    assert.match(
      copy.lastError ?? '',
      /^site copied-site's partitions are applied from another Redis log \(projectors summit-a:8080, last seen [01] s ago\): two sites have OUTPOST_SITE=copied-site, so give each its own/,
    );
    assert.deepEqual(await roster(), ['summit-a:8080'], 'the refused process does not join');
    await first.tick();
    assert.deepEqual(first.owned, all());
    assert.equal(first.lastError, undefined);
    // A second process of the first log shares its partitions as before.
    const second = manager('summit-a:8081', async () => 'log-a');
    await second.tick();
    await first.tick();
    // The partitions it handed over are released once their consumers stop.
    await first.settled();
    await second.tick();
    assert.deepEqual(
      [...first.owned, ...second.owned].sort((a, b) => a - b),
      all(),
    );
    assert.ok(second.owned.length > 0, 'the second process of the first log took its share');
    // Its processes stopped (a rebuild, a long upgrade), the first log keeps the site.
    await first.stop();
    await second.stop();
    // A day later, and the copy was first seen a day before that.
    for (const aged of [
      "UPDATE site_logs SET seen_at = seen_at - interval '1 day' WHERE site = 'copied-site'",
      "UPDATE site_log_sightings SET first_seen_at = first_seen_at - interval '1 day' WHERE site = 'copied-site'",
    ]) {
      await h.main.query(aged);
    }
    await copy.tick();
    assert.deepEqual(copy.owned, []);
    assert.match(
      copy.lastError ?? '',
      /\(last seen 8640\d s ago\): two sites .* DELETE FROM site_logs WHERE site = 'copied-site'\./,
    );
    // An operator frees the name (the first log's Redis was replaced, say): the other log takes it.
    await h.main.query("DELETE FROM site_logs WHERE site = 'copied-site'");
    await copy.tick();
    assert.deepEqual(copy.owned, all());
    assert.equal(copy.lastError, undefined);
    const restarted = manager('summit-a:8080', async () => 'log-a');
    await restarted.tick();
    assert.deepEqual(restarted.owned, []);
    assert.match(
      restarted.lastError ?? '',
      /another Redis log \(projectors summit-b:8080, last seen/,
    );
    // A process of the other log under the holder's own consumer name (both env files set it)
    // neither takes partitions nor overwrites the holder's beat, which would make twins of them.
    const namesake = manager('summit-b:8080', async () => 'log-a');
    await namesake.tick();
    await copy.tick();
    assert.deepEqual(namesake.owned, []);
    assert.equal(copy.lastError, undefined, 'no twin');
    // The holder's Redis lost its data and recorded a new id: its processes keep the site.
    copyLog = 'log-c';
    await copy.tick();
    assert.deepEqual(copy.owned, all());
    const claimed = await h.mainRows(
      "SELECT log, refused_consumer FROM site_logs WHERE site = 'copied-site'",
    );
    assert.deepEqual(
      claimed,
      [{ log: 'log-c', refused_consumer: null }],
      'refusals met by the id it held are not reported against the new one',
    );
    // The namesake stopping leaves the holder's beat in the roster.
    await namesake.stop();
    assert.ok((await roster()).includes('summit-b:8080'));
    for (const process of [copy, restarted]) {
      await process.stop();
    }
  });

  void it("hands the site to a log first seen after the holder's projectors stopped: the site's Redis replaced by an empty one", async () => {
    const site = 'replaced-site';
    const before = manager('summit:8080', async () => 'log-before', site);
    await before.tick();
    assert.deepEqual(before.owned, all());
    // Killed, its Redis replaced by an empty one (a new log id), started again at once: the
    // killed process's beat and leases are still live, so it is refused for now.
    const after = manager('summit:8080', async () => 'log-after', site);
    await after.tick();
    assert.deepEqual(after.owned, []);
    assert.match(
      after.lastError ?? '',
      /this log takes the name once that log's projectors have stopped .* DELETE FROM site_logs WHERE site = 'replaced-site'\./,
    );
    // Still refused a moment later: its claim renewed within three lease TTLs, the killed
    // process might be a live one held up.
    await after.tick();
    assert.deepEqual(after.owned, []);
    // The killed process's claim and leases lapse: nothing of the log that held the name runs.
    for (const lapsed of [
      "UPDATE site_logs SET seen_at = seen_at - interval '1 day' WHERE site = $1",
      "UPDATE partition_leases SET expires_at = clock_timestamp() - interval '1 second' WHERE site = $1",
    ]) {
      await h.main.query(lapsed, [site]);
    }
    await after.tick();
    assert.deepEqual(after.owned, all(), 'taken without an operator');
    assert.equal(after.lastError, undefined);
    assert.equal(await claimedBy(site), 'log-after');
    // The earlier log comes back (its Redis was not lost after all) while the new one runs: refused,
    // and seen, so the new one's stop does not hand the name back.
    const returning = manager('summit-old:8080', async () => 'log-before', site);
    await returning.tick();
    assert.deepEqual(returning.owned, []);
    await after.tick();
    await after.stop();
    assert.deepEqual(await roster(site), [], 'a graceful stop leaves the roster');
    await returning.tick();
    assert.deepEqual(returning.owned, [], 'seen while the holder ran: refused after its stop too');
    assert.equal(await claimedBy(site), 'log-after');
    // A log first seen now takes the name at once: the holder's last process released it.
    const fresh = manager('summit:8080', async () => 'log-fresh', site);
    await fresh.tick();
    assert.deepEqual(fresh.owned, all());
    assert.equal(await claimedBy(site), 'log-fresh');
    for (const process of [before, returning, fresh]) {
      await process.stop();
    }
  });

  void it("releases a name only with the log's last process, and only if none renewed it since", async () => {
    const site = 'paired-site';
    const [one, two] = ['pair:8080', 'pair:8081'].map((consumer) =>
      manager(consumer, async () => 'log-pair', site),
    );
    assert.ok(one && two);
    const released = async () =>
      (
        await h.mainRows<{ released: boolean }>(
          'SELECT released_at IS NOT NULL AS released FROM site_logs WHERE site = $1',
          [site],
        )
      )[0]?.released;
    await one.tick();
    await two.tick();
    await one.tick();
    await one.stop();
    assert.equal(await released(), false, 'the other process still runs');
    // A third process of the log renews the claim (its first round, before its first beat) while
    // the last one stops: the name is not released under it.
    await two.tick();
    await claimSite(
      h.main,
      { site, log: 'log-pair', previousLog: null, consumer: 'pair:8082' },
      60_000,
    );
    await two.stop();
    assert.equal(await released(), false, 'renewed since by a starting process');
    const last = manager('pair:8082', async () => 'log-pair', site);
    await last.tick();
    await last.stop();
    assert.equal(await released(), true, 'released by the last one');
    const fresh = manager('fresh:8080', async () => 'log-fresh', site);
    await fresh.tick();
    assert.deepEqual(fresh.owned, all());
    await fresh.stop();
  });

  void it("measures the holder's silence by its own lease TTL when the claimer's is shorter", async () => {
    const claim = (log: string, ttlMs: number) =>
      claimSite(
        h.main,
        { site: 'slow-site', log, previousLog: null, consumer: `${log}:8080` },
        ttlMs,
      );
    assert.equal((await claim('log-slow', 60_000)).held, true);
    // Its rounds come every 20 s: a second since its last is no stop, whatever the claimer's TTL.
    await h.main.query(
      "UPDATE site_logs SET seen_at = seen_at - interval '1 second' WHERE site = 'slow-site'",
    );
    assert.equal((await claim('log-quick', 100)).held, false);
    assert.equal(await claimedBy('slow-site'), 'log-slow');
  });

  void it('keeps a name with the log that claimed it first when another claims it a moment later, before either beat', async () => {
    const claim = (log: string, consumer: string) =>
      claimSite(h.main, { site: 'raced-site', log, previousLog: null, consumer }, 60_000);
    assert.equal((await claim('log-first', 'first:8080')).held, true);
    assert.equal((await claim('log-second', 'second:8080')).held, false);
    assert.equal(await claimedBy('raced-site'), 'log-first');
    // Released by its last process, the name goes to a log not seen before, which hears from whom.
    await h.main.query(
      "UPDATE site_logs SET released_at = clock_timestamp() WHERE site = 'raced-site'",
    );
    assert.equal((await claim('log-second', 'second:8080')).held, false, 'seen while it ran');
    const third = await claim('log-third', 'third:8080');
    assert.deepEqual([third.held, third.takenFrom], [true, 'log-first']);
    assert.equal((await claim('log-third', 'third:8080')).takenFrom, null, 'said once');
  });

  void it('lets no log take a name by itself where a log was refused before refused logs were recorded', async () => {
    // Migration 0014 bars the sites whose site_logs row shows a refusal under 0013: which log
    // was refused is unknown there, so a stopped holder keeps the name until an operator frees it.
    const site = 'barred-site';
    const holder = manager('barred:8080', async () => 'log-holder', site);
    await holder.tick();
    await holder.stop();
    await h.main.query('UPDATE site_logs SET takeover_barred = true WHERE site = $1', [site]);
    const unknown = manager('barred:8080', async () => 'log-unknown', site);
    await unknown.tick();
    assert.deepEqual(unknown.owned, []);
    assert.match(
      unknown.lastError ?? '',
      /replaced by an empty one, to free it for this log, on the main database: DELETE FROM site_logs WHERE site = 'barred-site'/,
    );
    assert.equal(await claimedBy(site), 'log-holder');
    await h.main.query('DELETE FROM site_logs WHERE site = $1', [site]);
    await unknown.tick();
    assert.deepEqual(unknown.owned, all(), 'freed by the operator');
    await unknown.stop();
  });

  void it('gives its partitions back when its claim of the name has failed for two lease TTLs, though its leases renew', async () => {
    // Long enough for the first failed round to come well within two of them on a loaded machine.
    const ttlMs = 1500;
    const fenced = new LeaseManager({
      pool: h.main,
      site: 'fenced-site',
      logId: async () => 'log-fenced',
      consumer: 'fenced:8080',
      partitions: h.config.partitions,
      ttlMs,
      logger: createLogger('silent'),
      events: { acquired: async () => undefined, stopped: async () => undefined },
    });
    await fenced.tick();
    assert.deepEqual(fenced.owned, all());
    // The claim's statement fails (here: a table it writes is gone), the lease renewal does not.
    await h.main.query('ALTER TABLE site_log_sightings RENAME TO site_log_sightings_away');
    try {
      await assert.rejects(fenced.tick(), /site_log_sightings/);
      assert.deepEqual(fenced.owned, all(), 'kept while the name cannot have gone elsewhere');
      // Unrenewed for three TTLs the name may go to another log: given back a TTL before.
      await waitFor(async () => {
        await fenced.tick().catch(() => undefined);
        return fenced.owned.length === 0;
      }, 'the partitions given back');
    } finally {
      await h.main.query('ALTER TABLE site_log_sightings_away RENAME TO site_log_sightings');
    }
    await fenced.tick();
    assert.deepEqual(fenced.owned, all(), 'taken again once the claim passes');
    await fenced.stop();
  });

  void it('renews the leases it keeps while a partition it hands over or loses is still stopping, and takes a lost one again only once stopped', async () => {
    let finishStop: () => void = () => undefined;
    const stopHangs = new Promise<void>((resolve) => {
      finishStop = resolve;
    });
    const stopping: number[] = [];
    const handing = (consumer: string, stopped: (partition: number) => Promise<void>) =>
      new LeaseManager({
        pool: h.main,
        site: 'handing-site',
        logId: async () => 'log-handing',
        consumer,
        partitions: h.config.partitions,
        ttlMs: 60_000,
        logger: createLogger('silent'),
        events: { acquired: async () => undefined, stopped },
      });
    // Its consumers' stops wait (as for a batch of a poison page applied one event at a time).
    const first = handing('handing-a:8080', async (partition) => {
      stopping.push(partition);
      await stopHangs;
    });
    const second = handing('handing-b:8080', async () => undefined);
    try {
      await first.tick();
      assert.deepEqual(first.owned, all());
      await second.tick();
      assert.deepEqual(second.owned, [], 'all held by the first');
      // The first's next round hands half over to the newcomer.
      let roundDone = false;
      void first.tick().then(() => {
        roundDone = true;
      });
      await waitFor(() => roundDone, 'the round to finish while the stops it began wait', 10_000);
      const kept = first.owned;
      assert.equal(kept.length, h.config.partitions / 2);
      assert.deepEqual(
        stopping,
        all().filter((p) => !kept.includes(p)),
      );
      // The next round renews what it kept, and does not take the stopping ones back.
      const expiries = async () =>
        (
          await h.main.query<{ expires: number }>(
            "SELECT extract(epoch FROM expires_at)::float8 AS expires FROM partition_leases WHERE site = 'handing-site' AND partition = ANY($1) ORDER BY partition",
            [kept],
          )
        ).rows.map((row) => row.expires);
      const before = await expiries();
      await first.tick();
      assert.deepEqual(first.owned, kept);
      const after = await expiries();
      assert.equal(after.length, kept.length);
      assert.ok(
        after.every((expires, i) => expires > (before[i] ?? Number.POSITIVE_INFINITY)),
        'every kept lease renewed',
      );
      // A kept lease lost (its row freed behind this process's back): its stop waits too, and the
      // partition, free in the database, is not taken again while its consumer may still run.
      const lost = kept[0] as number;
      await h.main.query(
        "UPDATE partition_leases SET owner = NULL, expires_at = now() - interval '1 second' WHERE site = 'handing-site' AND partition = $1",
        [lost],
      );
      await first.tick();
      assert.ok(stopping.includes(lost), 'its consumer asked to stop');
      assert.ok(!first.owned.includes(lost), 'not taken again while it stops');
      // Once stopped, the lost one is taken again and the ones handed over are released: the two
      // processes share every partition.
      finishStop();
      await first.settled();
      await waitFor(async () => {
        await first.tick();
        await second.tick();
        return (
          [...first.owned, ...second.owned].sort((a, b) => a - b).join() === all().join() &&
          second.owned.length === h.config.partitions / 2
        );
      }, 'the partitions shared again');
    } finally {
      finishStop();
      await first.stop();
      await second.stop();
    }
  });

  void it("keeps its partitions and refuses nothing when it cannot read its log's id and a peer moved the name to the new one: Redis back without its data", async () => {
    const site = 'emptied-site';
    let idOfA: () => Promise<string> = async () => 'log-before';
    let idOfB = 'log-before';
    const a = manager('emptied-a:8080', () => idOfA(), site);
    const b = manager('emptied-b:8080', async () => idOfB, site);
    try {
      await a.tick();
      await b.tick();
      const refusedConsumer = async () =>
        (
          await h.mainRows<{ refused_consumer: string | null }>(
            'SELECT refused_consumer FROM site_logs WHERE site = $1',
            [site],
          )
        )[0]?.refused_consumer;
      // Redis comes back empty: B reads the new id first and moves the name to it.
      idOfB = 'log-after';
      await b.tick();
      assert.equal(await claimedBy(site), 'log-after');
      // A's read of the id times out this round; it holds the claim under the old one.
      idOfA = () => Promise.reject(new Error('Command timed out'));
      const held = a.owned;
      assert.notDeepEqual(held, [], 'A held partitions');
      await assert.rejects(
        a.tick(),
        /site emptied-site's name is no longer held under the Redis log id this process held it with, and the id cannot be read now/,
      );
      assert.deepEqual(a.owned, held, 'A kept its partitions');
      assert.deepEqual(await roster(site), ['emptied-a:8080', 'emptied-b:8080']);
      assert.equal(
        await refusedConsumer(),
        null,
        "no refusal recorded for B's operators to hear of",
      );
      // Read again, the new id renews the name with B (and A now hands B its share).
      idOfA = async () => 'log-after';
      await a.tick();
      assert.equal(await claimedBy(site), 'log-after');
      assert.equal(await refusedConsumer(), null);
    } finally {
      await a.stop();
      await b.stop();
    }
  });

  void it('stays refused, saying why, when a copy refused the name cannot read its log id', async () => {
    const site = 'copied-unread-site';
    const holder = manager('held-here:8080', async () => 'log-held', site);
    let idOfCopy: () => Promise<string> = async () => 'log-copied';
    const copy = manager('copied-there:8080', () => idOfCopy(), site);
    try {
      await holder.tick();
      await copy.tick();
      const refusal = /applied from another Redis log \(projectors held-here:8080/;
      assert.match(copy.lastError ?? '', refusal);
      idOfCopy = () => Promise.reject(new Error('Command timed out'));
      await copy.tick();
      assert.deepEqual(copy.owned, []);
      assert.match(copy.lastError ?? '', refusal);
    } finally {
      await copy.stop();
      await holder.stop();
    }
  });

  void it('takes no partition while the log id cannot be read or recorded, saying so', async () => {
    const unknown = manager('no-id:8080', () => Promise.reject(new Error('READONLY')));
    await unknown.tick();
    assert.deepEqual(unknown.owned, []);
    assert.match(unknown.lastError ?? '', /id of this site's Redis log cannot be read or recorded/);
    await unknown.stop();
  });
});

void describe('two projector processes sharing one consumer name', () => {
  let h: Harness;
  before(async () => {
    h = await Harness.start({ role: 'none' });
  });
  after(() => h?.close());

  const manager = (
    consumer: string,
    { ttlMs = 60_000, breaker }: Pick<LeaseManagerDeps, 'breaker'> & { ttlMs?: number } = {},
  ) =>
    new LeaseManager({
      pool: h.main,
      site: h.config.site,
      consumer,
      partitions: h.config.partitions,
      ttlMs,
      logger: createLogger('silent'),
      events: { acquired: async () => undefined, stopped: async () => undefined },
      breaker,
    });

  void it('each says so once the other has beaten between its own beats', async () => {
    const a = manager('shared-name');
    const b = manager('shared-name');
    await a.tick();
    // B's first beat meets A's, as a restarted process meets its former self's: not yet a twin.
    await b.tick();
    assert.equal(b.lastError, undefined);
    await a.tick();
    await b.tick();
    for (const twin of [a, b]) {
      assert.match(
        twin.lastError ?? '',
        /another projector process uses the consumer name shared-name: give each process its own OUTPOST_CONSUMER/,
      );
    }
    await a.stop();
    await b.stop();
  });

  void it('closes a breaker whose cool-down is over with a lease round: it may hold no partition to probe with', async () => {
    let closed = 0;
    const breaker = {
      state: 'half_open',
      recordSuccess: () => {
        closed += 1;
      },
      recordFailure: () => undefined,
    };
    const quiet = manager('no-partitions-left', { breaker });
    quiet.start();
    try {
      await waitFor(() => closed > 0, 'a lease round to close the breaker');
    } finally {
      await quiet.stop();
    }
    // A closed breaker is left alone by rounds that pass: batches alone decide while it is.
    breaker.state = 'closed';
    closed = 0;
    const busy = manager('batches-decide', { ttlMs: 300, breaker });
    busy.start();
    try {
      // Rounds counted by the heartbeats they leave (every 100 ms here), not by the clock.
      const beats = new Set<string>();
      await waitFor(async () => {
        const { rows } = await h.main.query<{ at: string }>(
          "SELECT heartbeat_at::text AS at FROM projector_members WHERE consumer = 'batches-decide'",
        );
        for (const { at } of rows) {
          beats.add(at);
        }
        return beats.size >= 4;
      }, 'four rounds to pass');
    } finally {
      await busy.stop();
    }
    assert.equal(closed, 0);
  });

  /**
   * Runs `check` on a partition `lease` took, with the wall clock read through `wallClock` (given
   * the real one), and puts the real clock back whatever happens.
   */
  const withWallClock = async (
    lease: LeaseManager,
    wallClock: (real: () => number) => () => number,
    check: (partition: number) => Promise<void> | void,
  ) => {
    await lease.tick();
    const [partition] = lease.owned;
    assert.ok(partition !== undefined, 'it took a partition');
    assert.equal(lease.isValid(partition), true);
    const real = Date.now;
    Date.now = wallClock(real);
    try {
      await check(partition);
    } finally {
      Date.now = real;
      await lease.stop();
    }
  };

  void it('trusts a lease locally by the monotonic clock: the wall clock stepped back (NTP back after an outage) does not stretch it', async () => {
    const stalled = manager('clock-stepped-back', { ttlMs: 600 });
    await withWallClock(
      stalled,
      (real) => {
        const steppedBack = real() - 3_600_000;
        const since = performance.now();
        return () => steppedBack + (performance.now() - since);
      },
      // No renewal from here on (a frozen or cut-off process): the lease must lapse locally
      // two thirds of the TTL after the last renewal began, whatever the wall clock says.
      (partition) => waitFor(() => !stalled.isValid(partition), 'the local validity to end', 5_000),
    );
  });

  void it('stops trusting a lease when the wall clock passed its end: the monotonic clock stands still while a host is suspended', async () => {
    const suspended = manager('host-suspended', { ttlMs: 60_000 });
    await withWallClock(
      suspended,
      (real) => {
        const wokenAt = real() + 600_000;
        return () => wokenAt;
      },
      (partition) => {
        assert.equal(suspended.isValid(partition), false, 'woken ten minutes later');
      },
    );
  });

  void it('keeps its leases trusted through a round whose heartbeat timed out: renewed first, and tried again soon', async () => {
    const ttlMs = 3_000;
    const pool = leasePool({ ...h.config, claimIdleMs: ttlMs });
    const slowBeat = new LeaseManager({
      pool,
      site: h.config.site,
      consumer: 'slow-beat',
      partitions: h.config.partitions,
      ttlMs,
      logger: createLogger('silent'),
      events: { acquired: async () => undefined, stopped: async () => undefined },
    });
    const lastBeat = async () =>
      (
        await h.main.query<{ at: string }>(
          "SELECT heartbeat_at::text AS at FROM projector_members WHERE consumer = 'slow-beat'",
        )
      ).rows[0]?.at;
    const blocker = await h.main.connect();
    let lapsedAt: number | undefined;
    let watch: NodeJS.Timeout | undefined;
    try {
      await slowBeat.tick();
      const [partition] = slowBeat.owned;
      assert.ok(partition !== undefined, 'it took a partition');
      watch = setInterval(() => {
        if (!slowBeat.isValid(partition)) {
          lapsedAt ??= Date.now();
        }
      }, 5);
      const manual = await lastBeat();
      slowBeat.start();
      await waitFor(async () => (await lastBeat()) !== manual, 'its first round to beat');
      // A row lock on its membership (a long transaction, a lock queue) holds the next heartbeat
      // past the lease pool's timeout.
      await blocker.query('BEGIN');
      await blocker.query(
        "SELECT 1 FROM projector_members WHERE consumer = 'slow-beat' FOR UPDATE",
      );
      await waitFor(() => slowBeat.lastError !== undefined, 'a round to fail on its heartbeat');
      const failedAt = await lastBeat();
      await blocker.query('ROLLBACK');
      await waitFor(async () => (await lastBeat()) !== failedAt, 'a round to beat again');
      const recoveredAt = await lastBeat();
      // One more round: a lapse left behind by the failed one would have shown by its end.
      await waitFor(async () => (await lastBeat()) !== recoveredAt, 'the round after it');
      assert.equal(slowBeat.lastError, undefined);
    } finally {
      clearInterval(watch);
      await blocker.query('ROLLBACK').catch(() => undefined);
      blocker.release();
      await slowBeat.stop();
      await pool.end();
    }
    assert.equal(lapsedAt, undefined, 'the lease was trusted throughout');
  });

  void it("leaves the main database's breaker alone when a partition it took cannot be started (Redis away)", async () => {
    let failures = 0;
    const breaker = {
      state: 'closed',
      recordSuccess: () => undefined,
      recordFailure: () => {
        failures += 1;
      },
    };
    const unstartable = new LeaseManager({
      pool: h.main,
      site: h.config.site,
      consumer: 'redis-away',
      partitions: h.config.partitions,
      ttlMs: 60_000,
      logger: createLogger('silent'),
      events: {
        acquired: () => Promise.reject(new Error('Connection is closed.')),
        stopped: async () => undefined,
      },
      breaker,
    });
    try {
      await assert.rejects(unstartable.tick(), /could not be started: Connection is closed\./);
      assert.deepEqual(unstartable.owned, [], 'the lease was given back');
      unstartable.start();
      await waitFor(
        () => unstartable.lastError !== undefined,
        'a round of its own to fail starting a partition',
      );
      assert.match(unstartable.lastError ?? '', /^partition \d+ could not be started: /);
    } finally {
      await unstartable.stop();
    }
    assert.equal(failures, 0);
  });

  void it('takes the free partitions while one it took cannot be started, and tries that one after them', async () => {
    // A partition whose previous owner's entries cannot be claimed (each claim times out on a
    // link that drops packets, say), tried first again, ended every round before the others were
    // taken: a projector taking over from one that left held none of its partitions for minutes.
    let unstartable: number | undefined;
    const tried: number[] = [];
    const taker = new LeaseManager({
      pool: h.main,
      site: 'one-partition-unstartable',
      consumer: 'taker',
      partitions: h.config.partitions,
      ttlMs: 60_000,
      logger: createLogger('silent'),
      events: {
        acquired: async ({ partition }) => {
          tried.push(partition);
          unstartable ??= partition;
          if (partition === unstartable) {
            throw new Error('Command timed out');
          }
        },
        stopped: async () => undefined,
      },
    });
    try {
      await assert.rejects(taker.tick(), /could not be started: Command timed out/);
      assert.deepEqual(taker.owned, []);
      // The next round takes every other partition, then tries the unstartable one, last.
      await assert.rejects(taker.tick(), /could not be started: Command timed out/);
      const others = [...Array(h.config.partitions).keys()].filter((p) => p !== unstartable);
      assert.deepEqual(taker.owned, others);
      assert.equal(tried.length, h.config.partitions + 1, `tried ${tried.join(', ')}`);
      assert.equal(tried.at(-1), unstartable);
    } finally {
      await taker.stop();
    }
  });

  void it('a process restarted under its name, its former self gone without a word, is no twin', async () => {
    const crashed = manager('restarted-name');
    await crashed.tick();
    // Never stopped: its beat stays, as after kill -9.
    const restarted = manager('restarted-name');
    for (let round = 0; round < 3; round += 1) {
      await restarted.tick();
      assert.equal(restarted.lastError, undefined, `round ${round}`);
    }
    await restarted.stop();
  });
});
