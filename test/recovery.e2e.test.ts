import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, afterEach, before, beforeEach, describe, it } from 'node:test';
import { promisify } from 'node:util';
import pg from 'pg';
import { Acker } from '../src/acker/acker.ts';
import { acquireLease, releaseLeases } from '../src/db/queries/leases.ts';
import { replicaPosition, replicaReached } from '../src/db/queries/replica.ts';
import type { Envelope } from '../src/domain/events.ts';
import { newIdInPartition, partitionOf } from '../src/domain/ids.ts';
import { decodeEntry, encodeEntryFields, type RawEntry } from '../src/log/codec.ts';
import { CONSUMER_GROUP } from '../src/log/keys.ts';
import { trimPartition } from '../src/log/retention.ts';
import { createLogger } from '../src/observability/logger.ts';
import { createMetrics } from '../src/observability/metrics.ts';
import {
  holdPartitions,
  RebuildLeaseError,
  rebuildProjections,
  releasePartitions,
} from '../src/ops/rebuild.ts';
import { replay } from '../src/ops/replay.ts';
import { isDatabaseUnreachable } from '../src/projector/errors.ts';
import { PartWayError } from '../src/reason.ts';
import type { Service } from '../src/service.ts';
import { findPgBinDir } from '../src/stack/processes.ts';
import { crashMain, stackPaths, stackUp } from '../src/stack/stack.ts';
import { audit, eventLogOf, streamEventIds, waitForAllAcknowledged } from './harness/audit.ts';
import { runCli } from './harness/cli.ts';
import { Harness, waitFor } from './harness/harness.ts';
import { SseClient } from './harness/live-client.ts';
import { inBatches } from './harness/load.ts';
import { withDatabase } from './harness/services.ts';

const run = promisify(execFile);
const auth = { authorization: 'Bearer test-admin-token' };

const startMany = (h: Harness, label: string, n: number) =>
  inBatches(
    Array.from({ length: n }, (_, i) => i),
    32,
    (i) =>
      h.post('/executed_obs_units/start', { obs_unit_id: `${label}-${i}`, instrument: 'nircam' }),
  );

/** A new instrument configuration's event in `partition`, as the API would have accepted it. */
const configurationCreated = (h: Harness, partition: number): Envelope => ({
  event_id: newIdInPartition(partition, h.config.partitions),
  aggregate_id: newIdInPartition(partition, h.config.partitions),
  aggregate_type: 'instrument_configuration',
  type: 'InstrumentConfigurationCreated',
  version: 1,
  site: 's',
  accepted_at: Date.now(),
  data: { instrument: 'x', configuration: {} },
});

/** Removes aggregates from the main database entirely, as a restore from an older backup would. */
const forget = async (h: Harness, ids: string[]) => {
  // In one transaction, as a restore is to the projector: one that looked between the statements
  // would find an aggregate without its events, which no restore leaves.
  const client = await h.main.connect();
  try {
    await client.query('BEGIN');
    for (const statement of [
      'DELETE FROM events WHERE aggregate_id = ANY($1)',
      'DELETE FROM aggregate_heads WHERE aggregate_id = ANY($1)',
      'DELETE FROM aggregate_stats WHERE aggregate_id = ANY($1)',
      'DELETE FROM aggregate_links WHERE downstream_id = ANY($1)',
      'DELETE FROM executed_obs_units WHERE id = ANY($1)',
      'DELETE FROM raw_data_files WHERE id = ANY($1)',
      'DELETE FROM raw_data_packages WHERE id = ANY($1)',
      'DELETE FROM aggregates WHERE id = ANY($1)',
    ]) {
      await client.query(statement, [ids]);
    }
    await client.query('COMMIT');
  } catch (err) {
    await client.query('ROLLBACK').catch(() => undefined);
    throw err;
  } finally {
    client.release();
  }
};

/** Registers one file of `unitId`, as a client would; its id. */
const registeredFile = async (h: Harness, unitId: string, path: string): Promise<string> => {
  const files = await h.post('/raw_data_files', {
    executed_obs_unit_id: unitId,
    files: [{ path, size_bytes: 1, checksum: 'ab'.repeat(8), checksum_algorithm: 'xxh64' }],
  });
  assert.equal(files.status, 201, files.text);
  return (files.body.ids as string[])[0] as string;
};

/**
 * A unit started and updated with `notes`, both applied and acknowledged, and then the main
 * database restored from a backup taken between the two (loseUpdateAfterStart).
 */
const unitWithLostUpdate = async (h: Harness, obsUnitId: string, notes: string) => {
  const started = await h.post('/executed_obs_units/start', {
    obs_unit_id: obsUnitId,
    instrument: 'x',
  });
  const unit = started.body as { id: string; event_id: string; accepted_at: string };
  const update = await h.request('PATCH', `/executed_obs_units/${unit.id}`, { notes });
  assert.equal(update.status, 202, update.text);
  await waitForAllAcknowledged(h);
  const lost = update.body as { event_id: string };
  await loseUpdateAfterStart(h, unit, lost.event_id);
  return { unit, lost };
};

/**
 * The main database restored from a backup taken between a unit's start and `lostEventId`, an
 * update of it: the update is gone, the head, stats and projection as they were after the start.
 */
const loseUpdateAfterStart = async (
  h: Harness,
  unit: { id: string; event_id: string },
  lostEventId: string,
) => {
  const statements: [string, ...string[]][] = [
    ['DELETE FROM events WHERE event_id = $1', lostEventId],
    [
      `UPDATE aggregate_heads SET seq = 0, event_id = $2 WHERE aggregate_id = $1 AND ref = 'head'`,
      unit.id,
      unit.event_id,
    ],
    [
      `UPDATE aggregate_stats SET event_count = 1,
              last_event_at = (SELECT occurred_at FROM events WHERE event_id = $2)
        WHERE aggregate_id = $1`,
      unit.id,
      unit.event_id,
    ],
    ['UPDATE executed_obs_units SET notes = NULL WHERE id = $1', unit.id],
  ];
  for (const [statement, ...params] of statements) {
    await h.main.query(statement, params);
  }
};

void describe('recovery', () => {
  void describe('restore of the main database from a dump, then replay', () => {
    let h: Harness;
    const dir = mkdtempSync(join(tmpdir(), 'outpost-dump-'));
    after(async () => {
      await h?.close();
      rmSync(dir, { recursive: true, force: true });
    });

    void it('brings back every event the restored database lost, exactly once', async () => {
      h = await Harness.start();
      const bin = findPgBinDir(stackPaths(h.stack.dir).main);
      assert.ok(bin, 'PostgreSQL client binaries');
      const earlier = await startMany(h, 'before', 200);
      await waitForAllAcknowledged(h);
      const dumpFile = join(dir, 'main.dump');
      const dumpTime = new Date().toISOString();
      await run(join(bin, 'pg_dump'), ['-Fc', '-d', h.config.mainDatabaseUrl, '-f', dumpFile]);

      const lost = await startMany(h, 'after', 5000);
      assert.ok(lost.every((r) => r.status === 201));
      await waitForAllAcknowledged(h, 120_000);

      const [service] = h.services;
      assert.ok(service);
      await h.stopService(service);
      const admin = new pg.Client({ connectionString: withDatabase(h.stack.mainUrl, 'postgres') });
      await admin.connect();
      await admin.query(`DROP DATABASE ${h.database} WITH (FORCE)`);
      await admin.query(`CREATE DATABASE ${h.database}`);
      await admin.end();
      await run(join(bin, 'pg_restore'), ['-d', h.config.mainDatabaseUrl, dumpFile]);
      const afterRestore = await h.mainRows<{ n: number }>('SELECT count(*)::int AS n FROM events');
      assert.equal(afterRestore[0]?.n, 200, 'the restore lost the later events');
      await h.startService();
      // A cluster restored whole writes its WAL again from below what the log acknowledged, and
      // a replica re-made from it is behind that; here the cluster's WAL went on (one database
      // was restored), so the log is told it acknowledged past where the main database is.
      const marks = () =>
        Promise.all(
          eventLogOf(h)
            .allKeys()
            .map((k) => h.redis.get(k.acknowledgedThrough)),
        );
      for (const keys of eventLogOf(h).allKeys()) {
        await h.redis.set(keys.acknowledgedThrough, 'FFFFFFFF00000000');
      }
      const read = await h.get(`/executed_obs_units/${earlier[0]?.body.id}`);
      assert.equal(read.status, 200, 'a mark past the main database is not waited for');
      assert.deepEqual(
        await marks(),
        eventLogOf(h)
          .allKeys()
          .map(() => null),
        "forgotten, as the main database's WAL is below it",
      );

      const dry = await runCli(h, ['replay', '--from', dumpTime, '--dry-run', '--json']);
      assert.equal(dry.code, 0, dry.stderr);
      const dryReport = JSON.parse(dry.stdout);
      assert.equal(dryReport.applied, 5000);
      assert.equal(dryReport.dry_run, true);
      assert.equal(
        (await h.mainRows<{ n: number }>('SELECT count(*)::int AS n FROM events'))[0]?.n,
        200,
        'a dry run changes nothing',
      );

      const watcher = await SseClient.open(`${h.url}/events/live?state=accepted`);
      const replayed = await runCli(h, ['replay', '--from', dumpTime, '--json']);
      assert.equal(replayed.code, 0, replayed.stderr);
      const report = JSON.parse(replayed.stdout);
      assert.equal(report.applied, 5000);
      assert.equal(report.failed, 0);
      assert.match(replayed.stderr, /"progress"/, 'JSON progress lines on long runs');
      const lostIds = new Set(lost.map((r) => r.body.event_id as string));
      await waitFor(
        () => watcher.messages().filter((m) => lostIds.has(m.message.event_id)).length === 5000,
        'every replayed event announced on the live feed as accepted again',
      );
      await watcher.close();

      await audit(h, await streamEventIds(h));
      const again = await h.request('POST', '/admin/replay', { from: dumpTime }, auth);
      assert.equal(again.status, 200);
      assert.equal(again.body.applied, 0, 'a second replay changes nothing');
      assert.ok(again.body.already_applied >= 5000);
    });
  });

  void describe('on a running site', () => {
    let h: Harness;
    before(async () => {
      h = await Harness.start();
    });
    after(async () => {
      await h.main.query('ALTER TABLE executed_obs_units DROP CONSTRAINT IF EXISTS no_poison');
      await h?.close();
    });

    /** Runs `work` with the site's service stopped (projectors give their leases back), then starts it again. */
    const withoutProjector = async <T>(work: () => Promise<T>): Promise<T> => {
      for (const service of [...h.services]) {
        await h.stopService(service);
      }
      try {
        return await work();
      } finally {
        await h.startService();
      }
    };

    void it('reports a fully applied range as such and changes nothing', async () => {
      await startMany(h, 'applied', 300);
      await waitForAllAcknowledged(h);
      const events = await h.mainRows(
        'SELECT event_id, commit_lsn::text FROM events ORDER BY event_id',
      );
      const report = await h.request('POST', '/admin/replay', { from: '0' }, auth);
      assert.equal(report.status, 200, report.text);
      assert.deepEqual(
        {
          scanned: report.body.scanned,
          already_applied: report.body.already_applied,
          applied: report.body.applied,
          failed: report.body.failed,
        },
        { scanned: 300, already_applied: 300, applied: 0, failed: 0 },
      );
      assert.deepEqual(
        await h.mainRows('SELECT event_id, commit_lsn::text FROM events ORDER BY event_id'),
        events,
      );
      // Ids Redis would refuse (past 2^64 - 1) are the caller's mistake, not a 500.
      for (const body of [
        { from: 'yesterday' },
        { from: '99999999999999999999' },
        { from: '0', to: '1-18446744073709551616' },
      ]) {
        const bad = await h.request('POST', '/admin/replay', body, auth);
        assert.equal(bad.status, 400, `${JSON.stringify(body)}: ${bad.text}`);
        assert.equal(bad.body.error.code, 'validation_failed');
      }
    });

    void it('dead-letters a poison event met during a replay and applies the rest', async () => {
      const units = await startMany(h, 'replay-poison', 20);
      const poison = (
        await h.post('/executed_obs_units/start', {
          obs_unit_id: 'replay-poison-x',
          instrument: 'poison',
        })
      ).body;
      await waitForAllAcknowledged(h);
      const lostIds = [...units.slice(0, 10).map((u) => u.body.id as string), poison.id as string];
      await forget(h, lostIds);
      await h.main.query(
        "ALTER TABLE executed_obs_units ADD CONSTRAINT no_poison CHECK (instrument <> 'poison') NOT VALID",
      );
      let entries = 0;
      for (const keys of eventLogOf(h).allKeys()) {
        entries += await h.redis.xlen(keys.stream);
      }
      const report = await h.request('POST', '/admin/replay', { from: '0' }, auth);
      assert.equal(report.status, 200, report.text);
      assert.equal(report.body.applied, 10);
      assert.equal(report.body.failed, 1);
      assert.equal(report.body.scanned, entries, 'what the log held as it began, not its appends');
      assert.equal((await h.get(`/events/${poison.event_id}`)).body.state, 'dead');
      const back = await h.mainRows<{ n: number }>(
        'SELECT count(*)::int AS n FROM executed_obs_units WHERE id = ANY($1)',
        [lostIds],
      );
      assert.equal(back[0]?.n, 10);
      // The CLI fails the same replay with its reason on stderr, its whole report on stdout.
      const cli = await runCli(h, ['replay', '--from', '0', '--json']);
      assert.equal(cli.code, 1, cli.stderr);
      assert.equal(JSON.parse(cli.stdout).failed, 1);
      assert.match(
        cli.stderr,
        /^outpost: replay left 1 event\(s\) that cannot apply .*outpost dead list/m,
      );
      const dry = await runCli(h, ['replay', '--from', '0', '--dry-run', '--json']);
      assert.equal(dry.code, 0, 'a dry run succeeds when it reports, saying what cannot apply');
      assert.equal(JSON.parse(dry.stdout).failed, 1);
      assert.match(dry.stderr, /^outpost: replay --dry-run found 1 event\(s\) that cannot apply/m);
    });

    void it('counts an undecodable entry an operator discarded as discarded, not as failing', async () => {
      const keys = eventLogOf(h).keys(1);
      const entryId = (await h.redis.xadd(keys.stream, '*', 'raw', 'not an event')) as string;
      const letter = `undecodable-${entryId}`;
      await waitFor(
        async () => (await h.redis.hget(keys.deadIndex, letter)) !== null,
        'the projector to dead-letter the entry',
      );
      const discard = await h.request(
        'DELETE',
        `/admin/dead-letters/${letter}?reason=garbage`,
        undefined,
        auth,
      );
      assert.equal(discard.status, 200, discard.text);
      const report = await h.request('POST', '/admin/replay', { from: entryId }, auth);
      assert.equal(report.status, 200, report.text);
      assert.equal(report.body.failed, 0, report.text);
      assert.equal(report.body.discarded, 1, report.text);
      const cli = await runCli(h, ['replay', '--from', entryId, '--json']);
      assert.equal(cli.code, 0, cli.stderr);
    });

    /**
     * Runs `work` with `unit` blocked: a later update of it, which the main database refuses, is
     * dead-lettered first. Then the refusal is lifted, and the update and the letters `work`
     * answers (those filed behind it) are discarded.
     */
    const whileBlocked = async (unit: { id: string }, work: () => Promise<string[]>) => {
      await h.main.query(
        "ALTER TABLE executed_obs_units ADD CONSTRAINT no_poison_notes CHECK (notes IS DISTINCT FROM 'poison') NOT VALID",
      );
      const letters: string[] = [];
      try {
        const poison = await h.request('PATCH', `/executed_obs_units/${unit.id}`, {
          notes: 'poison',
        });
        assert.equal(poison.status, 202, poison.text);
        letters.push(poison.body.event_id);
        await waitFor(
          async () => (await h.get(`/events/${poison.body.event_id}`)).body?.state === 'dead',
          'the poison update to be dead-lettered',
        );
        letters.push(...(await work()));
      } finally {
        await h.main.query(
          'ALTER TABLE executed_obs_units DROP CONSTRAINT IF EXISTS no_poison_notes',
        );
        for (const id of letters) {
          await h.request('DELETE', `/admin/dead-letters/${id}?reason=test`, undefined, auth);
        }
      }
    };

    /** The reports of a dry run and then a run of `outpost replay` from just before `unit`. */
    const dryRunThenReplay = async (unit: { accepted_at: string }) => {
      const from = new Date(Date.parse(unit.accepted_at) - 1000).toISOString();
      const dry = await runCli(h, ['replay', '--from', from, '--dry-run', '--json']);
      assert.equal(dry.code, 0, dry.stderr);
      const given = await runCli(h, ['replay', '--from', from, '--json']);
      return { planned: JSON.parse(dry.stdout), report: JSON.parse(given.stdout), dry, given };
    };

    void it('counts, in a dry run, a lost event of an aggregate blocked by a dead letter as one that would fail, as the run does', async () => {
      const { unit, lost } = await unitWithLostUpdate(h, 'blocked-lost', 'lost');
      await whileBlocked(unit, async () => {
        const { planned, report, dry, given } = await dryRunThenReplay(unit);
        // Failed: the poison update, dead in the range, and the lost one, which would follow it.
        assert.deepEqual([planned.applied, planned.failed], [0, 2], dry.stdout);
        assert.deepEqual([report.applied, report.failed], [0, 2], given.stdout);
        return [lost.event_id];
      });
      // The restore left the unit's row as the lost update made it: rewritten from its events,
      // the database is clean for the next test.
      const rebuilt = await withoutProjector(() => runCli(h, ['rebuild-projections', '--json']));
      assert.equal(rebuilt.code, 0, rebuilt.stderr);
    });

    void it('counts, in a dry run, a lost file of a unit blocked by a dead letter, and a package of that file, as ones that would fail, as the run does', async () => {
      const unit = (
        await h.post('/executed_obs_units/start', { obs_unit_id: 'blocked-file', instrument: 'x' })
      ).body as { id: string; event_id: string; accepted_at: string };
      const files = await h.post('/raw_data_files', {
        executed_obs_unit_id: unit.id,
        files: [
          {
            path: '/blocked',
            size_bytes: 1,
            checksum: 'cd'.repeat(8),
            checksum_algorithm: 'xxh64',
          },
        ],
      });
      assert.equal(files.status, 201, files.text);
      const [file] = files.body.ids as string[];
      const bundle = await h.post('/raw_data_packages', {
        name: 'blocked-bundle',
        file_ids: [file],
      });
      assert.equal(bundle.status, 201, bundle.text);
      await whileBlocked(unit, async () => {
        // Then the main database restored from a backup older than the unit and its file.
        await forget(h, [unit.id, file as string, bundle.body.id]);
        const { planned, report, dry, given } = await dryRunThenReplay(unit);
        // Failed: the poison update, dead; the start, which would follow it; the file, whose unit
        // would not be there to link it to; and the package, whose file would not be.
        assert.deepEqual([planned.applied, planned.failed], [0, 4], dry.stdout);
        assert.deepEqual([report.applied, report.failed], [0, 4], given.stdout);
        return [unit.event_id, ...(files.body.event_ids as string[]), bundle.body.event_id];
      });
    });

    void it('names the aggregates whose lost events a later event overtook, and still gives the events back', async () => {
      const { unit, lost: older } = await unitWithLostUpdate(h, 'overtaken', 'older');
      const newer = await h.request('PATCH', `/executed_obs_units/${unit.id}`, { notes: 'newer' });
      assert.equal(newer.status, 202, newer.text);
      await waitForAllAcknowledged(h);
      const from = new Date(Date.parse(unit.accepted_at) - 1000).toISOString();

      const dry = await runCli(h, ['replay', '--from', from, '--dry-run', '--json']);
      assert.equal(dry.code, 0, dry.stderr);
      assert.deepEqual(
        [JSON.parse(dry.stdout).overtaken, JSON.parse(dry.stdout).overtaken_aggregates],
        [1, [unit.id]],
      );
      assert.match(
        dry.stderr,
        /^outpost: replay --dry-run would give back 1 event\(s\) older than an event of the same aggregate/m,
      );
      const given = await runCli(h, ['replay', '--from', from, '--json']);
      assert.equal(given.code, 1, 'the operator must check the aggregate');
      const report = JSON.parse(given.stdout);
      assert.deepEqual([report.applied, report.overtaken], [1, 1]);
      assert.match(
        given.stderr,
        new RegExp(`gave back 1 event.* check ${unit.id} with GET /aggregates`),
      );
      // Never dropped: the older update is back in the history, after the newer one.
      const history = await h.mainRows<{ event_id: string }>(
        'SELECT event_id::text FROM events WHERE aggregate_id = $1 ORDER BY seq',
        [unit.id],
      );
      assert.deepEqual(
        history.map((e) => e.event_id),
        [unit.event_id, newer.body.event_id, older.event_id],
      );
      // The rows the late update left differ only for this unit; the rebuild rewrites them from
      // the events in that order, leaving a clean database for the next test.
      const rebuilt = await withoutProjector(() => runCli(h, ['rebuild-projections', '--json']));
      assert.equal(rebuilt.code, 0, rebuilt.stderr);
      const { differences } = JSON.parse(rebuilt.stdout);
      assert.ok(differences.length > 0, `the late update left rows to rewrite: ${rebuilt.stdout}`);
      assert.ok(
        differences.every((d: { aggregate_id: string }) => d.aggregate_id === unit.id),
        rebuilt.stdout,
      );
    });

    void it('finds a hand-corrupted projection row with --verify, and rebuild fixes it', async () => {
      const unit = (
        await h.post('/executed_obs_units/start', { obs_unit_id: 'tamper', instrument: 'nirspec' })
      ).body;
      await waitForAllAcknowledged(h);
      await h.main.query(
        "UPDATE executed_obs_units SET notes = 'tampered', status = 'failed' WHERE id = $1",
        [unit.id],
      );
      const verify = await runCli(h, ['rebuild-projections', '--verify', '--json']);
      assert.equal(verify.code, 1, 'verify fails while rows differ');
      assert.match(
        verify.stderr,
        /^outpost: rebuild-projections --verify found 1 projection row\(s\) that differ/m,
        'with its one-line reason',
      );
      const found = JSON.parse(verify.stdout);
      assert.equal(found.differing, 1);
      assert.equal(found.differences[0].aggregate_id, unit.id);
      assert.deepEqual(found.differences[0].fields.sort(), ['notes', 'status']);
      assert.equal(
        (await h.mainRows('SELECT notes FROM executed_obs_units WHERE id = $1', [unit.id]))[0]
          ?.notes,
        'tampered',
      );

      // Not beside a projector: it would overwrite what the projector writes meanwhile.
      const refused = await runCli(h, ['rebuild-projections', '--json']);
      assert.equal(refused.code, 1);
      assert.match(
        refused.stderr,
        new RegExp(
          `^outpost: projectors are applying events \\(site ${h.config.site} \\(this one\\): partitions 0-${h.config.partitions - 1} by ${h.config.consumer}\\): stop them before rebuild-projections`,
          'm',
        ),
      );
      // Stopped here, but another site's projector on the same main database still holds a
      // partition: that one is named, and this site's stopped ones are not asked to start.
      await withoutProjector(async () => {
        const lease = {
          site: 'far-site',
          partition: 2,
          consumer: 'far-site:8080',
        };
        const token = await acquireLease(h.main, lease.site, 2, lease.consumer, 30_000);
        assert.ok(token);
        try {
          const beside = await runCli(h, ['rebuild-projections', '--json']);
          assert.equal(beside.code, 1);
          assert.match(
            beside.stderr,
            /^outpost: projectors are applying events \(site far-site: partitions 2 by far-site:8080\): stop them/m,
          );
          assert.doesNotMatch(beside.stderr, /no projector holds/);
        } finally {
          await releaseLeases(h.main, [{ ...lease, token }]);
        }
      });
      const rebuilt = await withoutProjector(() => runCli(h, ['rebuild-projections', '--json']));
      assert.equal(rebuilt.code, 0, rebuilt.stderr);
      assert.equal(JSON.parse(rebuilt.stdout).fixed, 1);
      const row = (
        await h.mainRows<{ notes: string | null; status: string }>(
          'SELECT notes, status FROM executed_obs_units WHERE id = $1',
          [unit.id],
        )
      )[0];
      assert.deepEqual(row, { notes: null, status: 'running' });
      const clean = await runCli(h, ['rebuild-projections', '--verify', '--json']);
      assert.equal(clean.code, 0);
      assert.equal(JSON.parse(clean.stdout).differing, 0);
    });

    void it('holds every partition lease while it rewrites, and writes no page once one of them is taken', async () => {
      const unit = (
        await h.post('/executed_obs_units/start', { obs_unit_id: 'fenced', instrument: 'nirspec' })
      ).body;
      await waitForAllAcknowledged(h);
      await h.main.query("UPDATE executed_obs_units SET notes = 'tampered' WHERE id = $1", [
        unit.id,
      ]);
      const notes = async () =>
        (await h.mainRows('SELECT notes FROM executed_obs_units WHERE id = $1', [unit.id]))[0]
          ?.notes;
      await withoutProjector(async () => {
        // All or none: with one partition held, it takes none of the others.
        const token = await acquireLease(
          h.main,
          h.config.site,
          1,
          'projector-started-meanwhile',
          30_000,
        );
        assert.ok(token);
        await assert.rejects(
          holdPartitions(h.main, h.config.partitions, 30_000),
          RebuildLeaseError,
        );
        const rebuilding = () =>
          h.mainRows("SELECT partition FROM partition_leases WHERE owner = 'rebuild-projections'");
        assert.deepEqual(await rebuilding(), []);
        await releaseLeases(h.main, [
          {
            site: h.config.site,
            partition: 1,
            consumer: 'projector-started-meanwhile',
            token,
          },
        ]);
        const leases = await holdPartitions(h.main, h.config.partitions, 30_000);
        try {
          // Each partition number for every site, a site that never leased one included.
          assert.deepEqual(
            leases.filter((lease) => lease.site === '').map((lease) => lease.partition),
            [...Array(h.config.partitions).keys()],
          );
          assert.equal(
            await acquireLease(h.main, 'a-site-new-since', 2, 'its-projector', 30_000),
            undefined,
            "another site's projector waits for the rebuild too",
          );
          const second = await runCli(h, ['rebuild-projections']);
          assert.equal(second.code, 1);
          assert.match(second.stderr, /^outpost: another rebuild-projections is running/m);
          // A replay meanwhile would wait in silence for what only the rebuild's end lets apply
          // (told before it looks: here at a range that holds nothing, earlier tests' dead
          // letters left out).
          const replaying = await runCli(h, ['replay', '--from', new Date().toISOString()]);
          assert.equal(replaying.code, 0, replaying.stderr);
          assert.match(
            replaying.stderr,
            new RegExp(
              `^outpost: rebuild-projections holds partitions 0-${h.config.partitions - 1}: nothing applies their events until it ends; the replay waits up to 10 minutes for them$`,
              'm',
            ),
          );
          assert.equal(
            await acquireLease(h.main, h.config.site, 0, 'projector-started-meanwhile', 30_000),
            undefined,
            'a projector started during the rebuild waits for the partition',
          );
          // The rebuild stalled past its lease, and a projector took partition 0.
          await h.main.query(
            "UPDATE partition_leases SET expires_at = clock_timestamp() - interval '1 second' WHERE partition = 0",
          );
          assert.ok(
            await acquireLease(h.main, h.config.site, 0, 'projector-started-meanwhile', 30_000),
          );
          await assert.rejects(
            rebuildProjections(h.main, 'apply', { fence: { leases, ttlMs: 30_000 } }),
            RebuildLeaseError,
          );
          assert.equal(await notes(), 'tampered', 'no page written');
        } finally {
          await releasePartitions(h.main, leases);
          await h.main.query(
            "UPDATE partition_leases SET owner = NULL, expires_at = '-infinity' WHERE owner = 'projector-started-meanwhile'",
          );
        }
        const rebuilt = await runCli(h, ['rebuild-projections', '--json']);
        assert.equal(rebuilt.code, 0, rebuilt.stderr);
        assert.equal(await notes(), null);
        const holders = await h.mainRows<{ n: number }>(
          'SELECT count(*)::int AS n FROM partition_leases WHERE owner IS NOT NULL',
        );
        assert.deepEqual(holders, [{ n: 0 }], 'the rebuild gave its leases back');
      });
    });

    void it('reports an aggregate whose events do not fold, and verifies the others all the same', async () => {
      const units = await startMany(h, 'unfoldable', 3);
      await waitForAllAcknowledged(h);
      const [broken] = units.map((u) => u.body.id as string);
      const corrupt = (type: string) =>
        h.main.query('UPDATE events SET type = $2 WHERE aggregate_id = $1 AND seq = 0', [
          broken,
          type,
        ]);
      await corrupt('ExecutedObsUnitFinished');
      try {
        const verify = await runCli(h, ['rebuild-projections', '--verify', '--json']);
        assert.equal(verify.code, 1);
        const report = JSON.parse(verify.stdout);
        const aggregates = await h.mainRows<{ n: number }>(
          'SELECT count(*)::int AS n FROM aggregates',
        );
        assert.equal(report.aggregates, aggregates[0]?.n, 'every aggregate folded or reported');
        assert.equal(report.unfoldable, 1);
        const listed = report.differences.filter(
          (d: { aggregate_id: string }) => d.aggregate_id === broken,
        );
        assert.equal(listed.length, 1, verify.stdout);
        assert.match(listed[0].fields[0], /^unfoldable: /);
        assert.match(
          verify.stderr,
          /^outpost: rebuild-projections found 1 aggregate\(s\) whose events do not fold/m,
        );
      } finally {
        await corrupt('ExecutedObsUnitStarted');
      }
    });

    void it('lists an aggregate whose events do not fold behind a thousand rows that differ', async () => {
      // Folded by id, 500 aggregates a page, an unfoldable one listed as its page is folded and
      // the page's differing rows after it: 1500 drifted units before it put over a thousand of
      // them in earlier pages, whatever this describe's other tests left before them.
      const units = await startMany(h, 'drifted', 1500);
      const last = await h.post('/executed_obs_units/start', {
        obs_unit_id: 'unfoldable-after-them',
        instrument: 'nircam',
      });
      assert.equal(last.status, 201, last.text);
      await waitForAllAcknowledged(h);
      const ids = units.map((u) => u.body.id as string);
      // UUIDv7 sorts by creation: created after them all, it is folded after them all.
      const broken = last.body.id as string;
      assert.ok(ids.every((id) => id < broken));
      const drift = (notes: string | null) =>
        h.main.query('UPDATE executed_obs_units SET notes = $2 WHERE id = ANY($1)', [
          [...ids, broken],
          notes,
        ]);
      const corrupt = (type: string) =>
        h.main.query('UPDATE events SET type = $2 WHERE aggregate_id = $1 AND seq = 0', [
          broken,
          type,
        ]);
      await drift('drifted');
      await corrupt('ExecutedObsUnitFinished');
      try {
        const verify = await runCli(h, ['rebuild-projections', '--verify', '--json']);
        assert.equal(verify.code, 1);
        const report = JSON.parse(verify.stdout);
        assert.equal(report.unfoldable, 1);
        assert.ok(report.differences.length < report.differing, String(report.differing));
        const listed = report.differences.filter(
          (d: { aggregate_id: string }) => d.aggregate_id === broken,
        );
        assert.equal(listed.length, 1, 'the unfoldable aggregate is listed');
        assert.match(listed[0].fields[0], /^unfoldable: /);
        const human = await runCli(h, ['rebuild-projections', '--verify']);
        assert.match(
          human.stdout,
          new RegExp(
            `${report.differing} rows differ from their events \\(${report.differences.length} listed\\)`,
          ),
        );
      } finally {
        await corrupt('ExecutedObsUnitStarted');
        await drift(null);
      }
    });

    void it('finds heads, stats and links that are not what the events say with --verify, and rebuild rewrites them', async () => {
      const headless = (
        await h.post('/executed_obs_units/start', { obs_unit_id: 'headless', instrument: 'miri' })
      ).body;
      const miscounted = (
        await h.post('/executed_obs_units/start', { obs_unit_id: 'miscounted', instrument: 'miri' })
      ).body;
      const finished = await h.post(`/executed_obs_units/${miscounted.id}/finish`, {
        status: 'success',
      });
      assert.equal(finished.status, 202, finished.text);
      const misdated = (
        await h.post('/executed_obs_units/start', { obs_unit_id: 'misdated', instrument: 'miri' })
      ).body;
      const file = await registeredFile(h, miscounted.id, '/unlinked');
      await waitForAllAcknowledged(h);
      await h.main.query('DELETE FROM aggregate_heads WHERE aggregate_id = $1', [headless.id]);
      await h.main.query(
        'UPDATE aggregate_stats SET event_count = 7, last_event_at = now() WHERE aggregate_id = $1',
        [miscounted.id],
      );
      // A date alone wrong: head_mismatch sees it (0009), as the comparison with the events does.
      await h.main.query(
        "UPDATE aggregate_stats SET last_event_at = last_event_at - interval '1 day' WHERE aggregate_id = $1",
        [misdated.id],
      );
      await h.main.query('DELETE FROM aggregate_links WHERE downstream_id = $1', [file]);
      // Rows outside the damage keep their identity (ctid): the repair rewrites only what differs.
      const untouched = async () =>
        h.mainRows(
          `SELECT 'head' AS row, ctid::text FROM aggregate_heads WHERE aggregate_id = ANY($1)
           UNION ALL SELECT 'stats', ctid::text FROM aggregate_stats WHERE aggregate_id = $2
           ORDER BY 1, 2`,
          [[misdated.id, file], file],
        );
      const before = await untouched();
      const problems = async () =>
        (await h.request('POST', '/admin/integrity/refresh', undefined, auth)).body.anomalies;
      const seen = await problems();
      assert.deepEqual(
        [seen.missing_head, seen.head_mismatch, seen.missing_link],
        [1, 2, 1],
        'the integrity views see the damage',
      );

      const verify = await runCli(h, ['rebuild-projections', '--verify', '--json']);
      assert.equal(verify.code, 1, 'verify fails while bookkeeping differs');
      const found = JSON.parse(verify.stdout);
      assert.deepEqual(
        found.differences
          .map((d: { aggregate_id: string; table: string }) => `${d.table} ${d.aggregate_id}`)
          .sort(),
        [
          `aggregate_heads ${headless.id}`,
          `aggregate_links ${file}`,
          `aggregate_stats ${miscounted.id}`,
          `aggregate_stats ${misdated.id}`,
        ].sort(),
      );

      const rebuilt = await withoutProjector(() => runCli(h, ['rebuild-projections', '--json']));
      assert.equal(rebuilt.code, 0, rebuilt.stderr);
      assert.equal(JSON.parse(rebuilt.stdout).fixed, 4);
      assert.deepEqual(await untouched(), before, 'the rows that were sound were left alone');
      const clean = await runCli(h, ['rebuild-projections', '--verify', '--json']);
      assert.equal(clean.code, 0, clean.stdout);
      const after = await problems();
      assert.deepEqual(
        [after.missing_head, after.missing_stats, after.head_mismatch, after.missing_link],
        [0, 0, 0, 0],
      );
      const stats = await h.mainRows<{ event_count: number }>(
        'SELECT event_count FROM aggregate_stats WHERE aggregate_id = $1',
        [miscounted.id],
      );
      assert.deepEqual(stats, [{ event_count: 2 }], 'start and finish, counted again');
    });

    void it('reports with --dry-run and --verify the links a missing projection row no longer names, as the rebuild fixes them', async () => {
      const unit = (
        await h.post('/executed_obs_units/start', { obs_unit_id: 'rowless', instrument: 'miri' })
      ).body;
      const file = await registeredFile(h, unit.id, '/rowless');
      await waitForAllAcknowledged(h);
      // Its projection row and its link both gone: the row named the link the rebuild checked.
      await h.main.query('DELETE FROM raw_data_files WHERE id = $1', [file]);
      await h.main.query('DELETE FROM aggregate_links WHERE downstream_id = $1', [file]);
      const damage = [`aggregate_links ${file}`, `raw_data_files ${file}`];
      const differences = (report: { differences: { aggregate_id: string; table: string }[] }) =>
        report.differences.map((d) => `${d.table} ${d.aggregate_id}`).sort();

      for (const flag of ['--verify', '--dry-run']) {
        const looked = await runCli(h, ['rebuild-projections', flag, '--json']);
        const report = JSON.parse(looked.stdout);
        assert.deepEqual(differences(report), damage, `${flag}: ${looked.stdout}`);
        assert.equal(report.differing, 2);
      }
      const rebuilt = await withoutProjector(() => runCli(h, ['rebuild-projections', '--json']));
      assert.equal(rebuilt.code, 0, rebuilt.stderr);
      assert.equal(JSON.parse(rebuilt.stdout).fixed, 2, 'as many as the dry run said');
      const links = await h.mainRows(
        'SELECT upstream_id::text, kind FROM aggregate_links WHERE downstream_id = $1',
        [file],
      );
      assert.deepEqual(links, [{ upstream_id: unit.id, kind: 'recorded_in' }]);
      const clean = await runCli(h, ['rebuild-projections', '--verify', '--json']);
      assert.equal(clean.code, 0, clean.stdout);
    });

    void it('answers 404 to a finish or a change of a unit another site started, naming that site', async () => {
      const started = await h.post('/executed_obs_units/start', {
        obs_unit_id: 'elsewhere',
        instrument: 'nircam',
      });
      assert.equal(started.status, 201);
      const id: string = started.body.id;
      await waitForAllAcknowledged(h);
      // As a unit of another site sharing the main database shows here: on the replica, and
      // unknown to this site's Redis.
      await h.redis.del(eventLogOf(h).keys(partitionOf(id, h.config.partitions)).unitState(id));
      const setSite = async (site: string) => {
        await h.main.query('UPDATE executed_obs_units SET site = $2 WHERE id = $1', [id, site]);
        await waitFor(
          async () =>
            (
              await h.replicaRows<{ site: string }>(
                'SELECT site FROM executed_obs_units WHERE id = $1',
                [id],
              )
            )[0]?.site === site,
          'the replica to show the site',
        );
      };
      await setSite('summit-b');
      // Files of that unit are taken here, but do not make its status this site's to change.
      await registeredFile(h, id, '/elsewhere');
      const before = await streamEventIds(h);
      const finish = await h.post(`/executed_obs_units/${id}/finish`, { status: 'success' });
      assert.equal(finish.status, 404, finish.text);
      assert.equal(finish.body.error.code, 'not_found');
      assert.match(finish.body.error.message, /started at site summit-b/);
      const patch = await h.request('PATCH', `/executed_obs_units/${id}`, { notes: 'x' });
      assert.equal(patch.status, 404, patch.text);
      assert.deepEqual(await streamEventIds(h), before, 'nothing appended');
      await setSite(h.config.site);
      const own = await h.post(`/executed_obs_units/${id}/finish`, { status: 'success' });
      assert.equal(own.status, 202, own.text);
    });

    void it('names the streams past the partition count that hold events of the range the main database lacks', async () => {
      // Left by a higher OUTPOST_PARTITIONS before the count was lowered: an event applied then,
      // and one the main database lost since (restored from a backup).
      const past = h.config.partitions;
      const stream = eventLogOf(h).keys(past).stream;
      const from = new Date(Date.now() - 1_000).toISOString();
      const applied = await h.post('/executed_obs_units/start', {
        obs_unit_id: 'past-the-count',
        instrument: 'miri',
      });
      await waitForAllAcknowledged(h);
      const { partition, entry_id } = (await h.get(`/events/${applied.body.event_id}`)).body;
      const [[, fields] = ['', []]] = (await h.redis.xrange(
        eventLogOf(h).keys(partition).stream,
        entry_id,
        entry_id,
      )) as RawEntry[];
      await h.redis.xadd(stream, '*', ...fields);
      // A unit start as an earlier build wrote it, never applied here.
      const unitStart = (obsUnitId: string) =>
        ({
          event_id: newIdInPartition(0, h.config.partitions),
          aggregate_id: newIdInPartition(0, h.config.partitions),
          aggregate_type: 'executed_obs_unit',
          type: 'ExecutedObsUnitStarted',
          version: 1,
          site: h.config.site,
          accepted_at: Date.now(),
          data: { obs_unit_id: obsUnitId, instrument: 'miri', start_time: from },
        }) as unknown as Envelope;
      const replayPast = (args: string[]) =>
        runCli(h, ['replay', '--from', from, '--json', ...args]);
      // And one an operator discarded from the dead letters before the count was lowered.
      const dropped = unitStart('dropped-past-the-count');
      await h.redis.xadd(stream, '*', ...encodeEntryFields(dropped));
      const audit = eventLogOf(h).keys(past).discarded;
      await h.redis.xadd(audit, '*', 'event_id', dropped.event_id, 'reason', 'poison');
      try {
        const whole = await replayPast(['--dry-run']);
        assert.deepEqual(
          JSON.parse(whole.stdout).unscanned_partitions,
          [],
          'its events are applied or discarded',
        );
        const lost = unitStart('lost-past-the-count');
        await h.redis.xadd(stream, '*', ...encodeEntryFields(lost));
        const dry = await replayPast(['--dry-run']);
        assert.deepEqual(JSON.parse(dry.stdout).unscanned_partitions, [past], dry.stderr);
        const warning = new RegExp(
          `^outpost: partition stream\\(s\\) ${past} hold events of the range that the main database lacks, but lie past the site's ${past} partitions`,
          'm',
        );
        assert.match(dry.stderr, warning);
        const replayed = await replayPast([]);
        assert.equal(replayed.code, 1, 'not reported whole');
        assert.deepEqual(JSON.parse(replayed.stdout).unscanned_partitions, [past]);
        assert.match(replayed.stderr, warning);
        // Entries older than the range are none of its concern.
        const later = await runCli(h, [
          'replay',
          '--from',
          new Date().toISOString(),
          '--dry-run',
          '--json',
        ]);
        assert.deepEqual(JSON.parse(later.stdout).unscanned_partitions, []);
      } finally {
        await h.redis.del(stream, audit);
      }
    });

    void it('gives an event written under an earlier partition count back where its aggregate maps now, ahead of its later events there', async () => {
      // The site had half its partitions when the unit started: its start lies in stream
      // `earlier`. Its finish, after the count doubled, lies in `current`, where the unit maps
      // now. The main database lost both (restored from a backup since).
      const count = h.config.partitions;
      const earlier = 1;
      const current = earlier + count / 2;
      const unitId = newIdInPartition(current, count);
      assert.equal(partitionOf(unitId, count / 2), earlier);
      const from = new Date(Date.now() - 1_000).toISOString();
      const event = (type: string, minted: [number, number], data: object) =>
        ({
          event_id: newIdInPartition(...minted),
          aggregate_id: unitId,
          aggregate_type: 'executed_obs_unit',
          type,
          version: 1,
          site: h.config.site,
          accepted_at: Date.now(),
          data,
        }) as unknown as Envelope;
      const start = event('ExecutedObsUnitStarted', [earlier, count / 2], {
        obs_unit_id: 'across-the-count',
        instrument: 'miri',
        start_time: from,
      });
      const finish = event('ExecutedObsUnitFinished', [current, count], {
        status: 'success',
        end_time: new Date().toISOString(),
      });
      await waitForAllAcknowledged(h);
      await withoutProjector(async () => {
        for (const [partition, written] of [
          [earlier, start],
          [current, finish],
        ] as const) {
          const { stream } = eventLogOf(h).keys(partition);
          await h.redis.xadd(stream, '*', ...encodeEntryFields(written));
          // History, delivered and acknowledged long ago: the projector does not read it again.
          await h.redis.xgroup('SETID', stream, CONSUMER_GROUP, '$');
        }
      });

      const dry = await runCli(h, ['replay', '--from', from, '--dry-run', '--json']);
      assert.equal(dry.code, 0, dry.stderr);
      const planned = JSON.parse(dry.stdout);
      assert.deepEqual([planned.applied, planned.moved, planned.overtaken], [2, 1, 0], dry.stdout);
      const given = await runCli(h, ['replay', '--from', from, '--json']);
      assert.equal(given.code, 0, given.stderr);
      const report = JSON.parse(given.stdout);
      assert.deepEqual(
        [report.applied, report.moved, report.overtaken, report.failed, report.unfinished],
        [2, 1, 0, 0, 0],
        given.stdout,
      );
      // The start given back to `current` lies in that partition's range when it is read: it is
      // not counted again.
      assert.equal(report.scanned, planned.scanned, given.stdout);
      await waitForAllAcknowledged(h);
      // Both applied from the unit's partition now, the start first.
      const history = await h.mainRows<{ event_id: string; partition: number }>(
        'SELECT event_id::text, partition FROM events WHERE aggregate_id = $1 ORDER BY seq',
        [unitId],
      );
      assert.deepEqual(history, [
        { event_id: start.event_id, partition: current },
        { event_id: finish.event_id, partition: current },
      ]);
      const unit = await h.get(`/executed_obs_units/${unitId}`);
      assert.equal(unit.body.status, 'success', unit.text);
      // The entries left where they lay and the copies given back are all applied now.
      const again = JSON.parse(
        (await runCli(h, ['replay', '--from', from, '--dry-run', '--json'])).stdout,
      );
      assert.deepEqual(
        [again.applied, again.moved, again.failed],
        [0, 0, 0],
        JSON.stringify(again),
      );
      assert.ok(again.already_applied >= 2, JSON.stringify(again));
    });

    void it('does not give back again an event it moved that an operator then discarded from the dead letters', async () => {
      const count = h.config.partitions;
      const earlier = 1;
      const current = earlier + count / 2;
      const from = new Date(Date.now() - 1_000).toISOString();
      // A start the main database refuses, written before the count doubled, lost since.
      const poison = {
        event_id: newIdInPartition(earlier, count / 2),
        aggregate_id: newIdInPartition(current, count),
        aggregate_type: 'executed_obs_unit',
        type: 'ExecutedObsUnitStarted',
        version: 1,
        site: h.config.site,
        accepted_at: Date.now(),
        data: { obs_unit_id: 'moved-poison', instrument: 'poison', start_time: from },
      } as unknown as Envelope;
      await h.main
        .query(
          "ALTER TABLE executed_obs_units ADD CONSTRAINT no_poison CHECK (instrument <> 'poison') NOT VALID",
        )
        .catch((err: { code?: string }) => {
          // Added by the poison test before this one.
          if (err.code !== '42710') {
            throw err;
          }
        });
      await waitForAllAcknowledged(h);
      await withoutProjector(async () => {
        const { stream } = eventLogOf(h).keys(earlier);
        await h.redis.xadd(stream, '*', ...encodeEntryFields(poison));
        await h.redis.xgroup('SETID', stream, CONSUMER_GROUP, '$');
      });
      const first = JSON.parse((await runCli(h, ['replay', '--from', from, '--json'])).stdout);
      assert.deepEqual([first.moved, first.failed], [1, 1], JSON.stringify(first));
      // Its letter is filed in the partition it was given back to, and discarded there.
      const discard = await h.request(
        'DELETE',
        `/admin/dead-letters/${poison.event_id}?reason=poison`,
        undefined,
        auth,
      );
      assert.equal(discard.status, 200, discard.text);
      const again = JSON.parse(
        (await runCli(h, ['replay', '--from', from, '--dry-run', '--json'])).stdout,
      );
      // Both the entry where it lay and the copy given back are the discarded event.
      assert.deepEqual(
        [again.applied, again.moved, again.discarded, again.failed],
        [0, 0, 2, 0],
        JSON.stringify(again),
      );
    });

    void it('folds a stored v1 event through its upcaster', async () => {
      const id = newIdInPartition(0, h.config.partitions);
      const v1: Envelope = {
        event_id: newIdInPartition(0, h.config.partitions),
        aggregate_id: id,
        aggregate_type: 'executed_obs_unit',
        type: 'ExecutedObsUnitStarted',
        version: 1,
        site: 'old-site',
        accepted_at: Date.now(),
        data: {
          obs_unit_id: 'from-v1',
          instrument: 'nirspec',
          start_time: new Date().toISOString(),
        },
      } as unknown as Envelope;
      await eventLogOf(h).append({ partition: 0, events: [v1] });
      await waitForAllAcknowledged(h);
      const unit = await h.get(`/executed_obs_units/${id}`);
      assert.equal(unit.status, 200);
      assert.deepEqual(
        [unit.body.metadata, unit.body.notes, unit.body.instrument_configuration_id],
        [{}, null, null],
      );
      const stored = await h.mainRows<{ version: number }>(
        'SELECT version FROM events WHERE event_id = $1',
        [v1.event_id],
      );
      assert.equal(stored[0]?.version, 2, 'applied in its upcast form');
      const verify = await runCli(h, ['rebuild-projections', '--verify', '--json']);
      assert.equal(JSON.parse(verify.stdout).differing, 0);
    });

    void it('takes the whole millisecond of a --to time, every entry of it', async () => {
      // One append call writes its events back to back: some millisecond holds several of them,
      // <ms>-0, <ms>-1, and so on.
      const events = Array.from({ length: 50 }, () => configurationCreated(h, 0));
      const appended = await eventLogOf(h).append({ partition: 0, events });
      assert.equal(appended.kind, 'appended');
      const entryIds = appended.kind === 'appended' ? appended.entryIds : [];
      const shared = entryIds.find((id) => !id.endsWith('-0'))?.split('-')[0];
      assert.ok(shared, 'a millisecond with more than one entry');
      const inIt = await h.redis.xrange(eventLogOf(h).keys(0).stream, shared, shared);
      assert.ok(inIt.length >= 2);
      await waitForAllAcknowledged(h);
      const at = new Date(Number(shared)).toISOString();
      const cli = await runCli(h, [
        'replay',
        '--from',
        at,
        '--to',
        at,
        '--partition',
        '0',
        '--dry-run',
        '--json',
      ]);
      assert.equal(cli.code, 0, cli.stderr);
      assert.equal(JSON.parse(cli.stdout).scanned, inIt.length, cli.stdout);
    });

    /**
     * A unit the main database lost, replayed with no projector running: the replay appends its
     * event and then waits for it, asking the main database every 200 ms.
     */
    const replayWaitingForLostUnit = async (obsUnitId: string) => {
      const unit = (
        await h.post('/executed_obs_units/start', { obs_unit_id: obsUnitId, instrument: 'x' })
      ).body;
      await waitForAllAcknowledged(h);
      await forget(h, [unit.id]);
      const [service] = h.services;
      assert.ok(service);
      await h.stopService(service);
      // From just before the unit: earlier tests left a dead letter further back.
      const from = new Date(Date.parse(unit.accepted_at) - 1000).toISOString();
      let stderrSoFar = '';
      const replaying = runCli(h, ['replay', '--from', from, '--json'], {
        stderr: (soFar) => {
          stderrSoFar = soFar;
        },
      });
      const partition = partitionOf(unit.id, h.config.partitions);
      await waitFor(
        async () => (await eventLogOf(h).unacknowledged([unit.event_id], partition))[0] === true,
        'the replay to append the lost event',
      );
      return { unit, replaying, stderrSoFar: () => stderrSoFar };
    };

    void it('waits out a database connection lost while a replay waits for the projector', async () => {
      // The pooled connection the replay asks on sits idle between its questions.
      const { unit, replaying, stderrSoFar } = await replayWaitingForLostUnit('lost-link');
      const idleCliSessions = () =>
        h.mainRows<{ pid: number }>(
          "SELECT pid FROM pg_stat_activity WHERE application_name = 'outpost-cli' AND state = 'idle'",
        );
      await waitFor(async () => (await idleCliSessions()).length > 0, 'an idle replay session');
      const terminated = await h.mainRows<{ ended: boolean }>(
        "SELECT pg_terminate_backend(pid) AS ended FROM pg_stat_activity WHERE application_name = 'outpost-cli' AND state = 'idle'",
      );
      assert.ok(
        terminated.some((row) => row.ended),
        'a replay session was ended',
      );
      // A wait the operator can watch: what it waits for, every 5 s.
      await waitFor(
        async () =>
          stderrSoFar().includes('{"progress":{"waiting_for":1,"applied":0,"failed":0}}\n'),
        'the replay to say what it waits for',
      );
      await h.startService();
      const replayed = await replaying;
      assert.equal(replayed.code, 0, replayed.stderr);
      assert.equal(JSON.parse(replayed.stdout).applied, 1, replayed.stdout);
      assert.doesNotMatch(replayed.stderr, /Unhandled|\n\s+at /);
      // Nothing projected when it began: the operator was told at once, not left waiting.
      assert.match(
        replayed.stderr,
        /^outpost: no projector holds partitions? .*; the replay waits up to 10 minutes for them$/m,
      );
      const back = await h.mainRows('SELECT 1 FROM executed_obs_units WHERE id = $1', [unit.id]);
      assert.equal(back.length, 1, 'the lost unit is back');
    });

    void it('waits out a main database that stops while a replay waits, saying why, and still reports', async () => {
      const { unit, replaying, stderrSoFar } = await replayWaitingForLostUnit('main-away');
      try {
        await crashMain(h.stack.dir);
        await waitFor(
          () => /"main_database_error":"[^"]*ECONNREFUSED[^"]*"/.test(stderrSoFar()),
          'the replay to say why it cannot ask the main database',
        );
      } finally {
        await stackUp(h.stackOptions());
      }
      await h.startService();
      const replayed = await replaying;
      assert.equal(replayed.code, 0, replayed.stderr);
      assert.equal(JSON.parse(replayed.stdout).applied, 1, replayed.stdout);
      const back = await h.mainRows('SELECT 1 FROM executed_obs_units WHERE id = $1', [unit.id]);
      assert.equal(back.length, 1, 'the lost unit is back');
    });

    void it('says how many events it had given back when the main database stops during its scan, and a second run gives back the rest', async () => {
      const lost = (await startMany(h, 'part-way', 24)).map(
        (r) => r.body as { id: string; accepted_at: string },
      );
      await waitForAllAcknowledged(h);
      await forget(
        h,
        lost.map((unit) => unit.id),
      );
      // Written out before the crash below: the test stack commits without waiting for its WAL.
      await h.main.query('CHECKPOINT');
      const partitionsOf = lost.map((unit) => partitionOf(unit.id, h.config.partitions));
      // The main database stops once the first partition holding a lost unit is scanned.
      const first = Math.min(...partitionsOf);
      assert.ok(
        partitionsOf.some((p) => p > first),
        'lost units lie in more than one partition',
      );
      const from = new Date(
        Math.min(...lost.map((u) => Date.parse(u.accepted_at))) - 1000,
      ).toISOString();
      let stopped: unknown;
      try {
        await replay(
          { eventLog: eventLogOf(h), main: h.main },
          { from, dryRun: false },
          {
            onProgress: async ({ partition }) => {
              if (partition === first) {
                await crashMain(h.stack.dir);
              }
            },
          },
        );
      } catch (err) {
        stopped = err;
      } finally {
        await stackUp(h.stackOptions());
      }
      assert.ok(stopped instanceof PartWayError, String(stopped));
      const givenBack = partitionsOf.filter((p) => p === first).length;
      assert.match(
        stopped.message,
        new RegExp(`ECONNREFUSED.*the replay stopped after giving back ${givenBack} event\\(s\\)`),
      );
      assert.ok(isDatabaseUnreachable(stopped.met), 'the error met is the main database away');
      const rerun = await runCli(h, ['replay', '--from', from, '--json']);
      assert.equal(rerun.code, 0, rerun.stderr);
      const report = JSON.parse(rerun.stdout);
      // The first run's appends are applied, or still pending, by now: never given back twice.
      assert.equal(report.applied, lost.length - givenBack, rerun.stdout);
      const back = await h.mainRows('SELECT 1 FROM executed_obs_units WHERE id = ANY($1)', [
        lost.map((unit) => unit.id),
      ]);
      assert.equal(back.length, lost.length, 'every lost unit is back');
    });
  });

  void describe('a main database that lost events the replica had not confirmed yet', () => {
    /** `outpost_events_reapplied_total` of a service, by who found the events lost. */
    const reappliedBy = async (service: Service) => {
      const { values } = await service.metrics.eventsReapplied.get();
      const by = (foundBy: string) => values.find((v) => v.labels.found_by === foundBy)?.value ?? 0;
      return { projector: by('projector'), acker: by('acker') };
    };
    /**
     * What a projector leaves when the main database then loses its last commits: every entry
     * delivered to it and recorded as applied at `lsn`, though no event of them is in the database.
     */
    const recordDeliveredAsApplied = async (h: Harness, lsn: string) => {
      const log = eventLogOf(h);
      for (let partition = 0; partition < h.config.partitions; partition += 1) {
        const read = (await h.redis.xreadgroup(
          'GROUP',
          CONSUMER_GROUP,
          h.config.consumer,
          'COUNT',
          100,
          'STREAMS',
          log.keys(partition).stream,
          '>',
        )) as [string, RawEntry[]][] | null;
        const records = (read?.[0]?.[1] ?? []).map(decodeEntry).map(({ entryId, event }) => ({
          lsn,
          entryId,
          eventId: event.event_id,
          aggregateId: event.aggregate_id,
          aggregateType: event.aggregate_type,
          type: event.type,
        }));
        await log.recordApplied(partition, records);
      }
    };

    let h: Harness;
    beforeEach(async () => {
      h = await Harness.start({ role: 'api' });
    });
    afterEach(() => h.close());

    void it('applies them again instead of acknowledging them once the replica passes their LSNs', async () => {
      const lost = await startMany(h, 'lost', 8);
      // What a projector leaves when the main database then loses its last commits (restored
      // from an earlier backup, or a failover to a standby that never received them): each entry
      // delivered to it and recorded as applied, at a commit LSN that the WAL written since has
      // carried the replica past, though no event of them is in the database.
      const [position] = await h.mainRows<{ lsn: string }>(
        'SELECT pg_current_wal_flush_lsn()::text AS lsn',
      );
      await recordDeliveredAsApplied(h, position?.lsn ?? '0/0');
      assert.equal(await h.mainRows('SELECT 1 FROM events').then((r) => r.length), 0);

      const projector = await h.startService('projector');
      const accepted = new Set(lost.map((unit) => unit.body.event_id as string));
      await audit(h, accepted);
      // Whichever met them first: the projector's first re-read, or the acker's first pass.
      const reapplied = await reappliedBy(projector);
      assert.ok(
        reapplied.projector + reapplied.acker >= lost.length,
        `handed back to be applied again: ${JSON.stringify(reapplied)}`,
      );
      for (const unit of lost) {
        const read = await h.get(`/executed_obs_units/${unit.body.id}`);
        assert.equal(read.status, 200);
        assert.deepEqual(read.body.consistency, { source: 'replica', pending_events: 0 });
      }
    });

    void it('lets them wait, naming the replica, while its WAL receiver does not stream: it may be on another history', async () => {
      const lost = await startMany(h, 'diverged', 4);
      const [position] = await h.mainRows<{ lsn: string }>(
        'SELECT pg_current_wal_flush_lsn()::text AS lsn',
      );
      const lsn = position?.lsn ?? '0/0';
      assert.ok(await replicaReached(h.replica, false, lsn, 30_000), 'the replica is past them');
      await recordDeliveredAsApplied(h, lsn);
      const metrics = createMetrics();
      const acker = new Acker({
        replica: h.replica,
        replicaIsMain: false,
        eventLog: eventLogOf(h),
        intervalMs: 20,
        logger: createLogger('silent'),
        metrics,
      });
      const handedBack = async () =>
        (await metrics.eventsReapplied.get()).values.find((v) => v.labels.found_by === 'acker')
          ?.value ?? 0;
      const receiver = async () =>
        (
          await h.replica.query<{ n: number }>(
            'SELECT count(*)::int AS n FROM pg_stat_wal_receiver',
          )
        ).rows[0]?.n;
      // As a replica left on the old timeline after a failover: it no longer streams.
      const { rows } = await h.replica.query<{ primary_conninfo: string }>('SHOW primary_conninfo');
      const conninfo = rows[0]?.primary_conninfo ?? '';
      const setConninfo = async (value: string) => {
        await h.replica.query(
          `ALTER SYSTEM SET primary_conninfo = '${value.replaceAll("'", "''")}'`,
        );
        await h.replica.query('SELECT pg_reload_conf()');
      };
      await setConninfo('');
      try {
        await waitFor(async () => (await receiver()) === 0, 'the WAL receiver to stop');
        assert.equal(await acker.ackOnce(), 0);
        assert.equal(await handedBack(), 0, 'nothing handed back to be applied again');
        assert.match(acker.stuck ?? '', /WAL receiver is stopped: it may be on another history/);
        // The next pass, within the second, does not look again, and still says why.
        assert.equal(await acker.ackOnce(), 0);
        assert.match(acker.stuck ?? '', /WAL receiver is stopped/);
        // All it received is replayed, yet it falls behind: the lag says so, not 0.
        assert.ok((await replicaPosition(h.replica, false)).lagSeconds > 0);
      } finally {
        await setConninfo(conninfo);
      }
      await waitFor(async () => (await receiver()) === 1, 'the WAL receiver to stream again');
      // Streaming again, the replica follows the main database: what it lacks, the main lost.
      await waitFor(async () => {
        await acker.ackOnce();
        return (await handedBack()) >= lost.length;
      }, 'the acker to hand the lost events back');
      assert.equal(acker.stuck, undefined);
    });

    void it('outpost pending says the acknowledgement is stuck when the replica has replayed what entries wait for', async () => {
      const units = await startMany(h, 'unacknowledged', 2);
      // Recorded as applied at an LSN the replica passed long ago, with no projector running to
      // acknowledge them.
      await recordDeliveredAsApplied(h, '0/1');
      const cli = await runCli(h, ['pending']);
      assert.equal(cli.code, 0, cli.stderr);
      for (const unit of units) {
        assert.match(cli.stdout, new RegExp(`${unit.body.event_id}\\s+acknowledgement`));
      }
      assert.match(
        cli.stdout,
        /2 of these entries are applied and replayed by the replica, yet not acknowledged: no projector process is acknowledging/,
      );
      const json = JSON.parse((await runCli(h, ['pending', '--json'])).stdout);
      assert.deepEqual(
        json.entries.map((e: { waiting_for: string }) => e.waiting_for),
        ['replica', 'replica'],
        'the API keeps its two values',
      );
    });

    void it('notices a main database rolled back on its own timeline by the last event a partition applied, and applies the lost ones before newer events', async () => {
      await h.startService('projector');
      // Nothing is acknowledged meanwhile: the lost starts stay in the log, recorded as applied.
      await h.replica.query('SELECT pg_wal_replay_pause()');
      try {
        const lost = await startMany(h, 'rolled-back', 8);
        const ids = lost.map((unit) => unit.body.id as string);
        /** How many events of `type` the main database holds for these units. */
        const applied = async (type: string) =>
          (
            await h.mainRows<{ n: number }>(
              'SELECT count(*)::int AS n FROM events WHERE aggregate_id = ANY($1) AND type = $2',
              [ids, type],
            )
          )[0]?.n;
        await waitFor(
          async () => (await applied('ExecutedObsUnitStarted')) === ids.length,
          'the starts to be applied',
        );
        // What the log acknowledged before, past where the rolled-back WAL is (as for a restore).
        const everyPartition = eventLogOf(h).allKeys();
        const marks = () =>
          Promise.all(everyPartition.map((k) => h.redis.get(k.acknowledgedThrough)));
        for (const keys of everyPartition) {
          await h.redis.set(keys.acknowledgedThrough, 'FFFFFFFF00000000');
        }
        // A filesystem snapshot of the main database restored from before them: same system, same
        // timeline, and its WAL soon past their commits again (these deletes take it there).
        await forget(h, ids);
        const patched = await inBatches(lost, 32, (unit) =>
          h.request('PATCH', `/executed_obs_units/${unit.body.id}`, {
            notes: 'after the rollback',
          }),
        );
        assert.deepEqual(
          patched.map((p) => p.status),
          lost.map(() => 202),
        );
        await waitFor(
          async () => (await applied('ExecutedObsUnitUpdated')) === ids.length,
          'the patches to be applied',
        );
        for (const id of ids) {
          const events = await h.mainRows<{ type: string; seq: number }>(
            'SELECT type, seq FROM events WHERE aggregate_id = $1 ORDER BY seq',
            [id],
          );
          assert.deepEqual(
            events.map((e) => `${e.seq} ${e.type}`),
            ['0 ExecutedObsUnitStarted', '1 ExecutedObsUnitUpdated'],
          );
        }
        const dead = await runCli(h, ['dead', 'list', '--json']);
        assert.deepEqual(JSON.parse(dead.stdout).items, []);
        assert.deepEqual(
          await marks(),
          everyPartition.map(() => null),
          'the projector that found the main database changed forgot how far events were acknowledged',
        );
      } finally {
        await h.replica.query('SELECT pg_wal_replay_resume()');
      }
    });

    void it('notices the rollback on a partition left idle after it, and applies the lost events again without waiting for the replica', async () => {
      const projector = await h.startService('projector');
      // The replica replays nothing: only the projector can find the lost events.
      await h.replica.query('SELECT pg_wal_replay_pause()');
      const lost = await startMany(h, 'idle-after-rollback', 8);
      try {
        const ids = lost.map((unit) => unit.body.id as string);
        const applied = async () =>
          (
            await h.mainRows<{ n: number }>(
              'SELECT count(*)::int AS n FROM events WHERE aggregate_id = ANY($1)',
              [ids],
            )
          )[0]?.n;
        await waitFor(async () => (await applied()) === ids.length, 'the starts to be applied');
        // Restored from before them, as above; and then no write comes to any partition.
        await forget(h, ids);
        assert.equal(await applied(), 0);
        await waitFor(
          async () => (await applied()) === ids.length,
          'the lost starts to be applied again',
        );
        // Counted after the batch that applied them again commits, once their records are moved.
        let reapplied = await reappliedBy(projector);
        await waitFor(async () => {
          reapplied = await reappliedBy(projector);
          return reapplied.projector >= ids.length;
        }, 'the projector to count the lost starts as applied again').catch((err: Error) => {
          throw new Error(`${err.message}: ${JSON.stringify(reapplied)}`);
        });
        for (const id of ids) {
          const events = await h.mainRows<{ type: string; seq: number }>(
            'SELECT type, seq FROM events WHERE aggregate_id = $1 ORDER BY seq',
            [id],
          );
          assert.deepEqual(
            events.map((e) => `${e.seq} ${e.type}`),
            ['0 ExecutedObsUnitStarted'],
          );
        }
      } finally {
        await h.replica.query('SELECT pg_wal_replay_resume()');
      }
      await audit(h, new Set(lost.map((unit) => unit.body.event_id as string)));
    });

    void it('applies them again on start, before newer events of their aggregates, without waiting for the replica to pass their LSNs', async () => {
      const lost = await startMany(h, 'restored', 6);
      // As above, but the main database was restored to a point before these commits: the
      // replica, a standby of it, is far from reaching their recorded LSNs (1 TiB of WAL ahead).
      await recordDeliveredAsApplied(h, 'FF/0');
      const patched = await inBatches(lost, 32, (unit) =>
        h.request('PATCH', `/executed_obs_units/${unit.body.id}`, { notes: 'after the restore' }),
      );
      assert.deepEqual(
        patched.map((p) => p.status),
        lost.map(() => 202),
      );

      const projector = await h.startService('projector');
      await audit(h, new Set([...lost, ...patched].map((r) => r.body.event_id as string)));
      const reapplied = await reappliedBy(projector);
      assert.equal(reapplied.acker, 0, 'found by the projector, not the acker');
      assert.ok(reapplied.projector >= lost.length, JSON.stringify(reapplied));
      for (const unit of lost) {
        const events = await h.mainRows<{ type: string; seq: number }>(
          'SELECT type, seq FROM events WHERE aggregate_id = $1 ORDER BY seq',
          [unit.body.id],
        );
        assert.deepEqual(
          events.map((e) => `${e.seq} ${e.type}`),
          ['0 ExecutedObsUnitStarted', '1 ExecutedObsUnitUpdated'],
        );
        const read = await h.get(`/executed_obs_units/${unit.body.id}`);
        assert.equal(read.body.notes, 'after the restore');
      }
      const dead = await runCli(h, ['dead', 'list', '--json']);
      assert.equal(dead.code, 0, dead.stderr);
      assert.deepEqual(JSON.parse(dead.stdout).items, []);
    });
  });

  void describe('retention', () => {
    let h: Harness;
    before(async () => {
      h = await Harness.start({ role: 'none' });
    });
    after(() => h?.close());

    /** Appends `n` configurations to `partition`, one call each; their entry ids in order. */
    const appendConfigurations = async (partition: number, n: number): Promise<string[]> => {
      const log = eventLogOf(h);
      const ids: string[] = [];
      for (let i = 0; i < n; i += 1) {
        const result = await log.append({
          partition,
          events: [configurationCreated(h, partition)],
        });
        assert.equal(result.kind, 'appended');
        ids.push(...(result.kind === 'appended' ? result.entryIds : []));
      }
      return ids;
    };
    const entryIdsOf = async (stream: string) =>
      ((await h.redis.xrange(stream, '-', '+')) as [string, string[]][]).map(([id]) => id);

    void it('trims acknowledged entries past the retention, never a pending one or anything after it', async () => {
      const log = eventLogOf(h);
      await log.ensureGroups();
      const stream = log.keys(0).stream;
      const ids = await appendConfigurations(0, 5);
      await h.redis.xreadgroup('GROUP', CONSUMER_GROUP, 'c', 'COUNT', 10, 'STREAMS', stream, '>');
      await h.redis.xack(
        stream,
        CONSUMER_GROUP,
        ids[0] as string,
        ids[1] as string,
        ids[3] as string,
        ids[4] as string,
      );
      const future = Date.now() + 3_600_000;
      // Everything is older than a zero retention an hour from now; only ids[2] is still pending.
      assert.equal(await trimPartition(log, 0, 0, future), 2);
      assert.deepEqual(await entryIdsOf(stream), ids.slice(2));

      await h.redis.xack(stream, CONSUMER_GROUP, ids[2] as string);
      await trimPartition(log, 0, 0, future);
      assert.deepEqual(
        await entryIdsOf(stream),
        [ids[4]],
        'the last delivered entry stays as the group position',
      );
      // A replay reaching back before what is left says where the history now begins: the
      // trimmed part of its range was never looked at.
      const deps = { eventLog: log, main: h.main };
      const fromTrimmed = await replay(deps, {
        from: ids[0] as string,
        partition: 0,
        dryRun: true,
      });
      assert.equal(fromTrimmed.history_starts_at, ids[4]);
      const fromKept = await replay(deps, { from: ids[4] as string, partition: 0, dryRun: true });
      assert.equal(fromKept.history_starts_at, null);
      assert.equal(fromKept.scanned, 1);
      // From just after the last entry trimmed: nothing of that range is gone.
      const [lastTrimmedMs, lastTrimmedSeq] = (ids[3] as string).split('-');
      const justAfter = `${lastTrimmedMs}-${Number(lastTrimmedSeq) + 1}`;
      const fromUntrimmed = await replay(deps, { from: justAfter, partition: 0, dryRun: true });
      assert.equal(fromUntrimmed.history_starts_at, null);
      // The operator's command: a replay that could not look at all it was asked to fails, saying
      // why; its dry run reports the same and succeeds.
      const trimmedRange = ['replay', '--from', ids[0] as string, '--to', ids[3] as string];
      const cliDry = await runCli(h, [...trimmedRange, '--dry-run', '--json']);
      assert.equal(cliDry.code, 0, cliDry.stderr);
      assert.equal(JSON.parse(cliDry.stdout).history_starts_at, ids[4]);
      assert.match(cliDry.stderr, /reaches back before the log's history/);
      const cliReplay = await runCli(h, [...trimmedRange, '--json']);
      assert.equal(cliReplay.code, 1, cliReplay.stderr);
      assert.equal(JSON.parse(cliReplay.stdout).scanned, 0);
      assert.match(cliReplay.stderr, /the main database may lack some of them for good$/m);
      assert.equal(
        await trimPartition(log, 0, 7 * 86_400_000),
        0,
        'nothing within the retention is trimmed',
      );
    });

    void it('keeps acknowledged entries younger than the retention and entries never delivered', async () => {
      const log = eventLogOf(h);
      await log.ensureGroups();
      const stream = log.keys(1).stream;
      const old = await appendConfigurations(1, 2);
      // The retention's edge falls between the old and the young entries: wait until Redis's
      // clock, which names the entries, has moved past the old ones.
      const lastOldMs = Number((old[1] as string).split('-')[0]);
      await waitFor(() => Date.now() > lastOldMs, 'the clock to pass the old entries');
      const edge = Date.now();
      const young = await appendConfigurations(1, 2);
      assert.ok(
        Number((young[0] as string).split('-')[0]) >= edge,
        'young entries are past the edge',
      );
      const undelivered = await appendConfigurations(1, 2);
      // Deliver and acknowledge the old and the young ones; the last two are never delivered.
      await h.redis.xreadgroup('GROUP', CONSUMER_GROUP, 'c', 'COUNT', 4, 'STREAMS', stream, '>');
      await h.redis.xack(stream, CONSUMER_GROUP, ...old, ...young);

      // A retention that ends at the edge: the old entries go, the young acknowledged ones stay.
      assert.equal(await trimPartition(log, 1, 0, edge), 2);
      assert.deepEqual(await entryIdsOf(stream), [...young, ...undelivered]);

      // Every entry is past a zero retention an hour from now, yet what the group has not been
      // delivered stays, and so does the last delivered entry, its position.
      await trimPartition(log, 1, 0, Date.now() + 3_600_000);
      assert.deepEqual(await entryIdsOf(stream), [young[1], ...undelivered]);
      const read = (await h.redis.xreadgroup(
        'GROUP',
        CONSUMER_GROUP,
        'c',
        'COUNT',
        10,
        'STREAMS',
        stream,
        '>',
      )) as [string, [string, string[]][]][];
      assert.deepEqual(
        read[0]?.[1].map(([id]) => id),
        undelivered,
        'the never-delivered entries are still delivered after the trim',
      );
    });

    void it('tells a replay that a trim took entries of its range while it was scanning', async () => {
      const log = eventLogOf(h);
      await log.ensureGroups();
      const stream = log.keys(2).stream;
      // More than a replay's page (500), all delivered and acknowledged.
      const ids = await appendConfigurations(2, 502);
      await h.redis.xreadgroup('GROUP', CONSUMER_GROUP, 'c', 'COUNT', 600, 'STREAMS', stream, '>');
      assert.equal(await h.redis.xack(stream, CONSUMER_GROUP, ...ids), ids.length);
      let trimmed = 0;
      const report = await replay(
        { eventLog: log, main: h.main },
        { from: ids[0] as string, partition: 2, dryRun: true },
        {
          onProgress: async () => {
            if (trimmed === 0) {
              // Memory pressure between two pages: all but the group's position goes.
              trimmed = await trimPartition(log, 2, 0, Date.now() + 3_600_000);
            }
          },
        },
      );
      assert.equal(trimmed, 501);
      assert.equal(report.scanned, 501, 'the first page, and the one entry the trim left');
      assert.equal(report.history_starts_at, ids[501]);
    });
  });

  void describe('rebuild-projections --verify beside a running projector', () => {
    let h: Harness | undefined;
    after(() => h?.close());

    void it('reads each page in one snapshot, so a commit between its reads is no difference', async () => {
      // A site of its own: its few units are all on the first page, the one held below.
      const site = await Harness.start();
      h = site;
      const unit = (
        await site.post('/executed_obs_units/start', { obs_unit_id: 'mid-verify', instrument: 'x' })
      ).body;
      const patch = await site.request('PATCH', `/executed_obs_units/${unit.id}`, {
        notes: 'before',
      });
      assert.equal(patch.status, 202, patch.text);
      await waitForAllAcknowledged(site);

      // A commit as a projector's would be, changing an event and its projection row together,
      // held to land after the verify has read the page's events and before it reads its rows.
      const writer = await site.main.connect();
      try {
        await writer.query('BEGIN');
        await writer.query('LOCK TABLE executed_obs_units IN ACCESS EXCLUSIVE MODE');
        const verifying = runCli(site, ['rebuild-projections', '--verify', '--json']);
        await waitFor(
          async () =>
            (
              await site.main.query(
                "SELECT 1 FROM pg_locks WHERE relation = 'executed_obs_units'::regclass AND NOT granted",
              )
            ).rows.length > 0,
          "the verify to wait for the units' rows, the page's events read",
        );
        await writer.query(
          `UPDATE events SET data = jsonb_set(data, '{notes}', '"after"') WHERE event_id = $1`,
          [patch.body.event_id],
        );
        await writer.query("UPDATE executed_obs_units SET notes = 'after' WHERE id = $1", [
          unit.id,
        ]);
        await writer.query('COMMIT');
        const verify = await verifying;
        assert.equal(verify.code, 0, verify.stdout);
        assert.equal(JSON.parse(verify.stdout).differing, 0);
      } finally {
        await writer.query('ROLLBACK').catch(() => undefined);
        writer.release();
      }
      const settled = await runCli(site, ['rebuild-projections', '--verify', '--json']);
      assert.equal(settled.code, 0, `the committed change is consistent: ${settled.stdout}`);
    });
  });
});
