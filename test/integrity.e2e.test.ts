import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import pg from 'pg';
import { runMigrations } from '../src/db/migrate.ts';
import {
  CRON_JOB,
  REFRESH_LOCK,
  scheduleCronJob,
  whyCronMissed,
} from '../src/db/queries/integrity.ts';
import { partitionOf } from '../src/domain/ids.ts';
import { PROBLEMS, type Problem } from '../src/integrity/problems.ts';
import { isValidSchedule, pgCronReadsAlike } from '../src/integrity/schedule.ts';
import { IntegrityScheduler } from '../src/integrity/scheduler.ts';
import { createLogger } from '../src/observability/logger.ts';
import { waitForAllAcknowledged } from './harness/audit.ts';
import { runCli, runCliWith } from './harness/cli.ts';
import { Harness, testStack, waitFor } from './harness/harness.ts';
import { inBatches } from './harness/load.ts';
import { BlackholeProxy } from './harness/proxy.ts';
import { withDatabase } from './harness/services.ts';

const auth = { authorization: 'Bearer test-admin-token' };
const silent = createLogger('silent');

const gauge = (metrics: string, problem: string) =>
  Number(
    new RegExp(`^outpost_integrity_anomalies\\{problem="${problem}"\\} (\\d+)$`, 'm').exec(
      metrics,
    )?.[1],
  );

void describe('integrity invariants', () => {
  let h: Harness;
  const ids = { unit: '', file: '', pkg: '', config: '', finishEvent: '' };
  before(async () => {
    h = await Harness.start();
    ids.config = (
      await h.post('/instrument_configurations', {
        instrument: 'nirspec',
        configuration: { grating: 'G140M' },
      })
    ).body.id;
    const unit = (
      await h.post('/executed_obs_units/start', {
        obs_unit_id: 'i-1',
        instrument: 'nirspec',
        instrument_configuration_id: ids.config,
      })
    ).body;
    ids.unit = unit.id;
    await h.request('PATCH', `/executed_obs_units/${unit.id}`, { notes: 'seeing 0.6"' });
    ids.finishEvent = (
      await h.post(`/executed_obs_units/${unit.id}/finish`, { status: 'success' })
    ).body.event_id;
    const files = await h.post('/raw_data_files', {
      executed_obs_unit_id: unit.id,
      files: [1, 2].map((n) => ({
        path: `/f${n}`,
        size_bytes: n,
        checksum: `${n}`.repeat(16),
        checksum_algorithm: 'xxh64',
      })),
    });
    ids.file = files.body.ids[0];
    ids.pkg = (await h.post('/raw_data_packages', { name: 'p', file_ids: files.body.ids })).body.id;
    await waitForAllAcknowledged(h);
  });
  after(() => h?.close());

  const refresh = async () => {
    const result = await h.request('POST', '/admin/integrity/refresh', undefined, auth);
    assert.equal(result.status, 200, result.text);
    return result.body as { refreshed_at: string; anomalies: Record<Problem, number> };
  };

  const gaugesShow = (expected: Record<string, number>) =>
    waitFor(
      async () => {
        const metrics = (await h.get('/metrics')).text;
        return PROBLEMS.every((p) => gauge(metrics, p) === (expected[p] ?? 0));
      },
      `gauges ${JSON.stringify(expected)}`,
    );

  void it('refreshes a clean site to zero for every problem, each gauge present', async () => {
    const { anomalies } = await refresh();
    assert.deepEqual(Object.keys(anomalies).sort(), [...PROBLEMS].sort());
    assert.ok(
      PROBLEMS.every((p) => anomalies[p] === 0),
      JSON.stringify(anomalies),
    );
    await gaugesShow({});
  });

  void it('answers a refresh once the replica shows it: the next read is that refresh', async () => {
    // Every commit reaches the replica's data half a second late, as over a slow link.
    const delayReplay = async (delay: string) => {
      await h.replica.query(`ALTER SYSTEM SET recovery_min_apply_delay = '${delay}'`);
      await h.replica.query('SELECT pg_reload_conf()');
    };
    await delayReplay('500ms');
    try {
      const refreshed = await refresh();
      const shown = await h.request('GET', '/admin/integrity', undefined, auth);
      assert.equal(shown.status, 200, shown.text);
      assert.equal(shown.body.refreshed_at, refreshed.refreshed_at);
      const cli = await runCli(h, ['integrity', 'refresh', '--json']);
      assert.equal(cli.code, 0, cli.stderr);
      const status = await runCli(h, ['integrity', 'status', '--json']);
      assert.equal(
        JSON.parse(status.stdout).refreshed_at,
        JSON.parse(cli.stdout).refreshed_at,
        status.stdout,
      );
      assert.equal(JSON.parse(cli.stdout).lsn, undefined, 'the output keeps its fields');
      assert.doesNotMatch(cli.stderr, /has not replayed/);
      // Past the wait (2 s): done, but the next status would show the snapshot before it.
      await delayReplay('5s');
      const late = await runCli(h, ['integrity', 'refresh', '--json']);
      assert.equal(late.code, 0, late.stderr);
      assert.match(
        late.stderr,
        /^outpost: the replica has not replayed this refresh yet: integrity status shows it once the replica reaches [0-9A-F]+\/[0-9A-F]+$/m,
      );
    } finally {
      await delayReplay('0');
    }
  });

  const corruptions: Record<Problem, { corrupt: string[]; repair: string[] }> = {
    missing_head: {
      corrupt: [
        "CREATE TEMP TABLE saved AS SELECT * FROM aggregate_heads WHERE aggregate_id = '$unit'",
        "DELETE FROM aggregate_heads WHERE aggregate_id = '$unit'",
      ],
      repair: ['INSERT INTO aggregate_heads SELECT * FROM saved', 'DROP TABLE saved'],
    },
    missing_stats: {
      corrupt: [
        "INSERT INTO aggregate_stats SELECT * FROM aggregate_stats WHERE aggregate_id = '$unit'",
      ],
      repair: [
        "DELETE FROM aggregate_stats WHERE ctid = (SELECT max(ctid) FROM aggregate_stats WHERE aggregate_id = '$unit')",
      ],
    },
    missing_events: {
      corrupt: [
        "CREATE TEMP TABLE saved AS SELECT * FROM events WHERE aggregate_id = '$config'",
        "DELETE FROM events WHERE aggregate_id = '$config'",
      ],
      repair: ['INSERT INTO events SELECT * FROM saved', 'DROP TABLE saved'],
    },
    bad_first_event: {
      // A creation event, but another type's: seq 0 must create this aggregate.
      corrupt: [
        "UPDATE events SET type = 'RawDataFileRegistered' WHERE aggregate_id = '$unit' AND seq = 0",
      ],
      repair: [
        "UPDATE events SET type = 'ExecutedObsUnitStarted' WHERE aggregate_id = '$unit' AND seq = 0",
      ],
    },
    seq_gap: {
      corrupt: [
        "UPDATE events SET seq = 3 WHERE aggregate_id = '$unit' AND seq = 2",
        "UPDATE aggregate_heads SET seq = 3 WHERE aggregate_id = '$unit'",
      ],
      repair: [
        "UPDATE events SET seq = 2 WHERE aggregate_id = '$unit' AND seq = 3",
        "UPDATE aggregate_heads SET seq = 2 WHERE aggregate_id = '$unit'",
      ],
    },
    head_mismatch: {
      corrupt: ["UPDATE aggregate_heads SET seq = 1 WHERE aggregate_id = '$unit'"],
      repair: ["UPDATE aggregate_heads SET seq = 2 WHERE aggregate_id = '$unit'"],
    },
    missing_link: {
      corrupt: [
        "CREATE TEMP TABLE saved AS SELECT * FROM aggregate_links WHERE downstream_id = '$file'",
        "DELETE FROM aggregate_links WHERE downstream_id = '$file'",
      ],
      repair: ['INSERT INTO aggregate_links SELECT * FROM saved', 'DROP TABLE saved'],
    },
    orphan_projection: {
      corrupt: [
        "CREATE TEMP TABLE saved AS SELECT * FROM raw_data_packages WHERE id = '$pkg'",
        "DELETE FROM raw_data_packages WHERE id = '$pkg'",
      ],
      repair: ['INSERT INTO raw_data_packages SELECT * FROM saved', 'DROP TABLE saved'],
    },
    missing_commit_lsn: {
      corrupt: [
        "CREATE TEMP TABLE saved AS SELECT event_id, commit_lsn, applied_at FROM events WHERE event_id = '$finishEvent'",
        "UPDATE events SET commit_lsn = NULL, applied_at = now() - interval '10 minutes' WHERE event_id = '$finishEvent'",
      ],
      repair: [
        'UPDATE events e SET commit_lsn = s.commit_lsn, applied_at = s.applied_at FROM saved s WHERE e.event_id = s.event_id',
        'DROP TABLE saved',
      ],
    },
  };

  for (const problem of PROBLEMS) {
    void it(`detects ${problem} and nothing else, and clears it after the repair`, async () => {
      const client = await h.main.connect();
      const run = async (statements: string[]) => {
        for (const statement of statements) {
          await client.query(
            statement.replace(
              /\$(unit|file|pkg|config|finishEvent)/g,
              (_, k: keyof typeof ids) => ids[k],
            ),
          );
        }
      };
      try {
        await run(corruptions[problem].corrupt);
        const { anomalies } = await refresh();
        const moved = PROBLEMS.filter((p) => anomalies[p] > 0);
        assert.deepEqual(moved, [problem], JSON.stringify(anomalies));
        await gaugesShow({ [problem]: anomalies[problem] });
        const detail = await h.request('GET', '/admin/integrity', undefined, auth);
        assert.equal(detail.body.samples[problem].length, anomalies[problem]);
        if (problem === 'missing_commit_lsn') {
          // Several sites share the main database: the row says which site's link to look at.
          const [row] = detail.body.samples[problem];
          assert.equal(row.site, h.config.site);
          assert.equal(row.partition, partitionOf(ids.unit, h.config.partitions));
          assert.match(row.stream_entry_id, /^\d+-\d+$/);
        }
        await run(corruptions[problem].repair);
      } finally {
        client.release();
      }
      const { anomalies } = await refresh();
      assert.ok(
        PROBLEMS.every((p) => anomalies[p] === 0),
        JSON.stringify(anomalies),
      );
      await gaugesShow({});
    });
  }

  void it('names a missing edge once when a package row names a file twice, and the refresh still succeeds', async () => {
    const client = await h.main.connect();
    try {
      await client.query(
        'CREATE TEMP TABLE saved_links AS SELECT * FROM aggregate_links WHERE downstream_id = $1',
        [ids.pkg],
      );
      await client.query('DELETE FROM aggregate_links WHERE downstream_id = $1', [ids.pkg]);
      // Written past the API, which refuses a file named twice.
      await client.query(
        'UPDATE raw_data_packages SET file_ids = file_ids || file_ids[1] WHERE id = $1',
        [ids.pkg],
      );
      const { anomalies } = await refresh();
      assert.equal(anomalies.missing_link, 2, "each of the package's two files, once");
    } finally {
      await client.query('UPDATE raw_data_packages SET file_ids = file_ids[1:2] WHERE id = $1', [
        ids.pkg,
      ]);
      await client.query('INSERT INTO aggregate_links SELECT * FROM saved_links');
      await client.query('DROP TABLE saved_links');
      client.release();
    }
    const { anomalies } = await refresh();
    assert.ok(
      PROBLEMS.every((p) => anomalies[p] === 0),
      JSON.stringify(anomalies),
    );
  });

  void it('answers a refresh PostgreSQL refuses with what it said, and keeps the last snapshot', async () => {
    const kept = await refresh();
    await h.main.query(
      'ALTER MATERIALIZED VIEW integrity_seq_gap RENAME TO integrity_seq_gap_away',
    );
    try {
      const failed = await h.request('POST', '/admin/integrity/refresh', undefined, auth);
      assert.equal(failed.status, 500, failed.text);
      assert.equal(failed.body.error.code, 'internal');
      assert.match(
        failed.body.error.message,
        /^the main database refused the integrity refresh: .*integrity_seq_gap.* \(SQLSTATE 42P01\); the last snapshot stands/,
      );
      const cli = await runCli(h, ['integrity', 'refresh']);
      assert.equal(cli.code, 1);
      assert.match(cli.stderr, /integrity_seq_gap/);
    } finally {
      await h.main.query(
        'ALTER MATERIALIZED VIEW integrity_seq_gap_away RENAME TO integrity_seq_gap',
      );
    }
    // Its samples come from the views on the replica, once it has replayed the rename back.
    let shown = await h.request('GET', '/admin/integrity', undefined, auth);
    await waitFor(async () => {
      shown = await h.request('GET', '/admin/integrity', undefined, auth);
      return shown.status === 200;
    }, 'the replica to have the view back');
    assert.equal(shown.body.refreshed_at, kept.refreshed_at);
  });

  void it('dates the commit LSN cutoff from the refresh itself, not from the start of a transaction that waited for it', async () => {
    const client = await h.main.connect();
    try {
      await client.query('BEGIN');
      // Applied a second after the cutoff as it stood when the transaction began.
      await client.query(
        "UPDATE events SET commit_lsn = NULL, applied_at = now() - interval '5 minutes' + interval '1 second' WHERE event_id = $1",
        [ids.finishEvent],
      );
      // As a refresh that waited for the lock behind another: once it runs, the event has been
      // applied for over 5 minutes.
      await waitFor(
        async () =>
          (
            await client.query<{ past: boolean }>(
              "SELECT clock_timestamp() > now() + interval '1.5 seconds' AS past",
            )
          ).rows[0]?.past === true,
        'the transaction to outlast the second',
      );
      const { rows } = await client.query<{ counts: Record<Problem, number> }>(
        "SELECT outpost_refresh_integrity('manual', true) AS counts",
      );
      assert.equal(rows[0]?.counts.missing_commit_lsn, 1, JSON.stringify(rows[0]?.counts));
    } finally {
      // Nothing of it stays: the event's LSN, the views and the snapshot row go with the rollback.
      await client.query('ROLLBACK');
      client.release();
    }
  });

  void it('takes the commit LSN cutoff once per refresh, not again for each row its scan reaches', async () => {
    // A scan longer than the 5 minutes cannot be waited for here; the plan shows the cutoff is
    // computed once (an InitPlan) and compared as a constant, not called per row in the filter.
    const query = readFileSync(
      new URL('../sql/integrity/missing_commit_lsn.sql', import.meta.url),
      'utf8',
    );
    const plan = (await h.main.query<{ 'QUERY PLAN': string }>(`EXPLAIN (COSTS OFF) ${query}`)).rows
      .map((row) => row['QUERY PLAN'])
      .join('\n');
    assert.match(plan, /InitPlan/, plan);
    assert.doesNotMatch(plan, /Filter: .*clock_timestamp\(\)/, plan);
  });

  void it('counts a head at the newest seq that names another event, and stats ending at another time, as head_mismatch, as --verify does', async () => {
    for (const [corrupt, repair] of [
      [
        `UPDATE aggregate_heads SET event_id = (SELECT event_id FROM events WHERE aggregate_id = $1 AND seq = 1)
          WHERE aggregate_id = $1 AND ref = 'head'`,
        `UPDATE aggregate_heads SET event_id = (SELECT event_id FROM events WHERE aggregate_id = $1 AND seq = 2)
          WHERE aggregate_id = $1 AND ref = 'head'`,
      ],
      [
        "UPDATE aggregate_stats SET last_event_at = last_event_at - interval '1 hour' WHERE aggregate_id = $1",
        "UPDATE aggregate_stats SET last_event_at = last_event_at + interval '1 hour' WHERE aggregate_id = $1",
      ],
    ] as const) {
      await h.main.query(corrupt, [ids.unit]);
      try {
        const { anomalies } = await refresh();
        const moved = PROBLEMS.filter((p) => anomalies[p] > 0);
        assert.deepEqual(moved, ['head_mismatch'], `${corrupt}: ${JSON.stringify(anomalies)}`);
        const verify = await runCli(h, ['rebuild-projections', '--verify']);
        assert.match(verify.stdout, new RegExp(ids.unit), 'the rebuild would repair it');
      } finally {
        await h.main.query(repair, [ids.unit]);
      }
    }
    const { anomalies } = await refresh();
    assert.equal(anomalies.head_mismatch, 0);
  });

  void it('says in `outpost integrity status` when the snapshot has outlived three scheduled refreshes', async () => {
    const fresh = await runCli(h, ['integrity', 'status', '--json']);
    assert.equal(fresh.code, 0, fresh.stderr);
    assert.equal(JSON.parse(fresh.stdout).stale, false);
    // The latest snapshot, as one taken before the refresh stopped running 2 hours ago: the
    // watchdog's, in place of a pg_cron run that did not come.
    const [old] = await h.mainRows<{ id: string }>(
      `INSERT INTO integrity_refreshes (started_at, finished_at, duration_ms, mode, counts)
       VALUES (now() - interval '2 hours', now() - interval '2 hours', 1, 'watchdog', '{}')
       RETURNING id::text`,
    );
    try {
      await waitFor(
        async () =>
          (await h.replica.query('SELECT 1 FROM integrity_refreshes WHERE id = $1', [old?.id])).rows
            .length === 1,
        'the replica to hold the snapshot',
      );
      const json = await runCli(h, ['integrity', 'status', '--json']);
      assert.equal(JSON.parse(json.stdout).stale, true, 'the schedule is every 30 minutes');
      assert.equal(JSON.parse(json.stdout).refreshed_by, 'watchdog');
      const text = await runCli(h, ['integrity', 'status']);
      assert.equal(text.code, 0, text.stderr);
      assert.match(text.stdout, /^stale: three scheduled refreshes have come and gone/m);
      assert.match(
        text.stdout,
        /^refreshed at \S+ in 1 ms, by the projector's watchdog: pg_cron did not run the refresh due before it/m,
      );
    } finally {
      await h.main.query('DELETE FROM integrity_refreshes WHERE id = $1', [old?.id]);
    }
  });

  void it('tells an operator through `outpost integrity status` which problem, how many, and a sample row', async () => {
    await h.main.query('UPDATE aggregate_heads SET seq = 1 WHERE aggregate_id = $1', [ids.unit]);
    try {
      const { anomalies } = await refresh();
      assert.equal(anomalies.head_mismatch, 1);
      // The CLI reads the snapshot where the alert's operator can reach it: on the replica.
      const latest = 'SELECT max(id)::text AS id FROM integrity_refreshes';
      const [onMain] = await h.mainRows<{ id: string }>(latest);
      await waitFor(
        async () => (await h.replica.query<{ id: string }>(latest)).rows[0]?.id === onMain?.id,
        'the replica to hold the snapshot',
      );
      const json = await runCli(h, ['integrity', 'status', '--json']);
      assert.equal(json.code, 0, json.stderr);
      const status = JSON.parse(json.stdout);
      assert.equal(status.anomalies.head_mismatch, 1);
      assert.ok(
        PROBLEMS.every((p) => p === 'head_mismatch' || status.anomalies[p] === 0),
        JSON.stringify(status.anomalies),
      );
      assert.equal(status.samples.head_mismatch.length, 1);
      assert.equal(status.samples.head_mismatch[0].aggregate_id, ids.unit);
      assert.equal(status.schedule, h.config.integritySchedule);
      assert.ok(['pg_cron', 'scheduler'].includes(status.mode), status.mode);
      assert.equal(status.refreshed_by, 'manual', 'the admin endpoint ran it');

      const text = await runCli(h, ['integrity', 'status']);
      assert.equal(text.code, 0, text.stderr);
      assert.match(text.stdout, /^head_mismatch\s+1\s*$/m);
      assert.match(text.stdout, /^seq_gap\s+0\s*$/m);
      assert.match(text.stdout, new RegExp(`^head_mismatch: \\[.*"${ids.unit}"`, 'm'));
      assert.match(text.stdout, /^mode (pg_cron|scheduler), schedule \*\/30 \* \* \* \*$/m);
      assert.match(
        text.stdout,
        /^refreshed at \S+ in \d+ ms, on request \(outpost integrity refresh/m,
      );

      // They read only the databases: with Redis out of reach (an incident they may be helping
      // with), they answer all the same.
      const redisDown = { ...h.envOf(), REDIS_URL: 'redis://127.0.0.1:1' };
      const withoutRedis = await runCliWith(redisDown, ['integrity', 'status', '--json']);
      assert.equal(withoutRedis.code, 0, withoutRedis.stderr);
      assert.equal(JSON.parse(withoutRedis.stdout).anomalies.head_mismatch, 1);
      const verify = await runCliWith(redisDown, ['rebuild-projections', '--verify', '--json']);
      assert.match(verify.stdout, /"mode":"verify"/, verify.stderr);
      assert.doesNotMatch(verify.stderr, /Redis/);
      const usage = await runCliWith(redisDown, ['integrity', 'rebuild']);
      assert.equal(usage.code, 1);
      assert.match(usage.stderr, /usage: outpost integrity refresh\|status/);
    } finally {
      await h.main.query('UPDATE aggregate_heads SET seq = 2 WHERE aggregate_id = $1', [ids.unit]);
    }
    const { anomalies } = await refresh();
    assert.equal(anomalies.head_mismatch, 0);
  });

  void it('counts seqs that are contiguous but start past 0 as a seq_gap, and as a bad first event', async () => {
    // Two steps, so no row meets another's (aggregate_id, seq) on the way: 0,1,2 -> 100.. -> 1,2,3.
    const shift = async (by: number) => {
      await h.main.query('UPDATE events SET seq = seq + 100 WHERE aggregate_id = $1', [ids.unit]);
      await h.main.query('UPDATE events SET seq = seq - 100 + $2 WHERE aggregate_id = $1', [
        ids.unit,
        by,
      ]);
      await h.main.query('UPDATE aggregate_heads SET seq = seq + $2 WHERE aggregate_id = $1', [
        ids.unit,
        by,
      ]);
    };
    await shift(1);
    try {
      const { anomalies } = await refresh();
      assert.deepEqual(
        PROBLEMS.filter((p) => anomalies[p] > 0),
        ['bad_first_event', 'seq_gap'],
        JSON.stringify(anomalies),
      );
    } finally {
      await shift(-1);
    }
    const { anomalies } = await refresh();
    assert.ok(
      PROBLEMS.every((p) => anomalies[p] === 0),
      JSON.stringify(anomalies),
    );
  });

  void it('counts a seq at the top of its type as a seq_gap, instead of failing the refresh', async () => {
    const top = 2_147_483_647;
    // The unit's last event (seq 2) given the largest seq an integer holds, as a hand might.
    await h.main.query('UPDATE events SET seq = $2 WHERE aggregate_id = $1 AND seq = 2', [
      ids.unit,
      top,
    ]);
    try {
      const { anomalies } = await refresh();
      assert.equal(anomalies.seq_gap, 1, JSON.stringify(anomalies));
    } finally {
      await h.main.query('UPDATE events SET seq = 2 WHERE aggregate_id = $1 AND seq = $2', [
        ids.unit,
        top,
      ]);
    }
    const { anomalies } = await refresh();
    assert.equal(anomalies.seq_gap, 0, JSON.stringify(anomalies));
  });

  void it('refreshes thousands of events from the full pipeline to all zeros', async () => {
    const units = await inBatches(
      Array.from({ length: 150 }, (_, i) => i),
      16,
      (i) => h.post('/executed_obs_units/start', { obs_unit_id: `clean-${i}`, instrument: 'miri' }),
    );
    await inBatches(units, 16, async (unit) => {
      const files = await h.post('/raw_data_files', {
        executed_obs_unit_id: unit.body.id,
        files: Array.from({ length: 15 }, (_, f) => ({
          path: `/c/${f}`,
          size_bytes: f,
          checksum: 'ab'.repeat(32),
          checksum_algorithm: 'sha256',
        })),
      });
      await h.post('/raw_data_packages', { name: `pkg-${unit.body.id}`, file_ids: files.body.ids });
      await h.post(`/executed_obs_units/${unit.body.id}/finish`, { status: 'success' });
    });
    await waitForAllAcknowledged(h);
    const events = await h.mainRows<{ n: number }>('SELECT count(*)::int AS n FROM events');
    assert.ok((events[0]?.n ?? 0) > 2500);
    const { anomalies } = await refresh();
    assert.ok(
      PROBLEMS.every((p) => anomalies[p] === 0),
      JSON.stringify(anomalies),
    );
  });

  void it('says which session a manual refresh waits for, instead of looking hung', async () => {
    const holder = new pg.Client({
      connectionString: h.config.mainDatabaseUrl,
      application_name: 'operator-psql',
    });
    await holder.connect();
    try {
      const pid = (await holder.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0]
        ?.pid;
      await holder.query('SELECT pg_advisory_lock(7246002)');
      const cli = runCli(h, ['integrity', 'refresh', '--json']);
      await waitFor(
        async () =>
          (
            await h.mainRows(
              "SELECT 1 FROM pg_stat_activity WHERE query LIKE '%outpost_refresh_integrity%' AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()",
            )
          ).length > 0,
        'the refresh to wait for the lock',
      );
      await holder.query('SELECT pg_advisory_unlock(7246002)');
      const done = await cli;
      assert.equal(done.code, 0, done.stderr);
      assert.match(
        done.stderr,
        new RegExp(
          `^outpost: waiting for the integrity refresh already running \\(pid ${pid}, operator-psql[,)]`,
        ),
      );
      assert.equal(typeof JSON.parse(done.stdout).anomalies, 'object', 'it then refreshed');
    } finally {
      await holder.end();
    }
  });

  void describe('refreshes asked together', () => {
    /**
     * Refreshes asked for by a test: the site's own schedule (pg_cron's job, every half hour)
     * may add one at any moment, and is not counted.
     */
    const refreshes = async () =>
      (
        await h.mainRows<{ n: number }>(
          "SELECT count(*)::int AS n FROM integrity_refreshes WHERE mode NOT IN ('pg_cron', 'scheduler')",
        )
      )[0]?.n ?? 0;
    const waitingForTheLock = (n: number) =>
      waitFor(
        async () =>
          (
            await h.mainRows(
              "SELECT 1 FROM pg_stat_activity WHERE query LIKE '%outpost_refresh_integrity%' AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()",
            )
          ).length >= n,
        `${n} refreshes to wait for the lock`,
      );

    void it('answers requests that waited behind a refresh with one refresh, not one each', async () => {
      const before = await refreshes();
      const holder = new pg.Client({ connectionString: h.config.mainDatabaseUrl });
      await holder.connect();
      try {
        await holder.query('SELECT pg_advisory_lock(7246002)');
        const asked = [1, 2, 3].map(() =>
          h.request('POST', '/admin/integrity/refresh', undefined, auth),
        );
        await waitingForTheLock(3);
        await holder.query('SELECT pg_advisory_unlock(7246002)');
        const answers = await Promise.all(asked);
        assert.deepEqual(
          answers.map((a) => a.status),
          [200, 200, 200],
        );
        assert.equal(await refreshes(), before + 1, 'one refresh for the three');
        assert.equal(new Set(answers.map((a) => a.body.refreshed_at)).size, 1);
      } finally {
        await holder.end();
      }
    });

    void it('runs the post-deploy refresh once the projector is healthy, not answered by one during the delay', async () => {
      const snapshots: string[] = [];
      let healthy = false;
      let asked = 0;
      const scheduler = new IntegrityScheduler({
        main: h.main,
        mainUrl: h.config.mainDatabaseUrl,
        schedule: '0 0 1 1 *',
        postDeployDelayMs: 500,
        projectorHealthy: () => {
          asked += 1;
          return healthy;
        },
        logger: silent,
        onRefreshed: (snapshot) => snapshots.push(snapshot.refreshed_at),
      });
      await scheduler.start();
      try {
        // An operator (or another process's schedule) refreshes while the new build catches up.
        const manual = await h.request('POST', '/admin/integrity/refresh', undefined, auth);
        assert.equal(manual.status, 200);
        const before = await refreshes();
        // Past the delay, it waits for the projector, refreshing nothing meanwhile.
        await waitFor(async () => asked >= 2, 'the scheduler to wait for a healthy projector');
        assert.equal(snapshots.length, 0, 'no refresh before the projector is healthy');
        healthy = true;
        await waitFor(async () => snapshots.length > 0, 'the post-deploy refresh');
        assert.equal(snapshots.length, 1);
        assert.ok(
          Date.parse(snapshots[0] as string) > Date.parse(manual.body.refreshed_at),
          'a refresh of its own, after the one during the delay',
        );
        assert.equal(await refreshes(), before + 1);
      } finally {
        await scheduler.stop();
      }
    });
  });

  void describe('with a refresh that takes a while', () => {
    before(async () => {
      // Weight that makes the refresh slow: 300,000 events of one synthetic aggregate.
      await h.main.query(
        `INSERT INTO events (event_id, aggregate_id, seq, type, version, data, site, partition, stream_entry_id, occurred_at, commit_lsn)
         SELECT gen_random_uuid(), '00000000-0000-7000-8000-00000000beef', g, 'ExecutedObsUnitUpdated', 1, '{}', 'x', 0, '0-' || g, now(), '0/1'
           FROM generate_series(1, 300000) g`,
      );
    });
    after(async () => {
      await h.main.query(
        "DELETE FROM events WHERE aggregate_id = '00000000-0000-7000-8000-00000000beef'",
      );
    });

    void it('keeps the scrape and projection reads answering during a concurrent refresh', async () => {
      const refreshing = h.request('POST', '/admin/integrity/refresh', undefined, auth);
      const active = async () =>
        (
          await h.mainRows(
            "SELECT 1 FROM pg_stat_activity WHERE query LIKE '%outpost_refresh_integrity%' AND state = 'active' AND pid <> pg_backend_pid()",
          )
        ).length > 0;
      await waitFor(active, 'the refresh to be running');
      const scrape = await h.get('/metrics');
      const read = await h.get(`/executed_obs_units/${ids.unit}`);
      const stillRefreshing = await active();
      assert.equal(scrape.status, 200);
      assert.match(
        scrape.text,
        /^outpost_integrity_refresh_interval_seconds 1800$/m,
        'the default schedule, every 30 minutes: the stale alert allows three',
      );
      assert.equal(read.status, 200);
      assert.ok(
        stillRefreshing,
        'the scrape and the read answered while the refresh was still running',
      );
      assert.equal((await refreshing).status, 200);
    });

    void it('never runs two scheduled refreshes at once, across processes', async () => {
      const before =
        (await h.mainRows<{ n: number }>('SELECT count(*)::int AS n FROM integrity_refreshes'))[0]
          ?.n ?? 0;
      const schedulers = [1, 2].map(
        () =>
          new IntegrityScheduler({
            main: h.main,
            mainUrl: h.config.mainDatabaseUrl,
            // Every two seconds (a seconds field): the same instant in both, as two processes would.
            schedule: '*/2 * * * * *',
            postDeployDelayMs: 3_600_000,
            projectorHealthy: () => true,
            logger: silent,
          }),
      );
      await Promise.all(schedulers.map((s) => s.start()));
      try {
        assert.ok(
          schedulers.every((s) => s.mode === 'scheduler'),
          'no pg_cron in a test database',
        );
        await waitFor(
          async () =>
            ((
              await h.mainRows<{ n: number }>(
                "SELECT count(*)::int AS n FROM integrity_refreshes WHERE mode = 'scheduler'",
              )
            )[0]?.n ?? 0) >= 3,
          'three scheduled refreshes',
          60_000,
        );
      } finally {
        await Promise.all(schedulers.map((s) => s.stop()));
      }
      const runs = await h.mainRows<{ started_at: Date; finished_at: Date }>(
        'SELECT started_at, finished_at FROM integrity_refreshes WHERE id > $1 ORDER BY started_at',
        [before],
      );
      for (let i = 1; i < runs.length; i += 1) {
        const previous = runs[i - 1];
        const current = runs[i];
        assert.ok(
          previous && current && previous.finished_at <= current.started_at,
          `refreshes ${i - 1} and ${i} overlap`,
        );
      }
      const health = await h.get('/health');
      assert.equal(health.body.integrity.mode, 'scheduler');
    });
  });
});

void describe('pg_cron', () => {
  const stack = testStack();
  const url = withDatabase(stack.mainUrl, 'outpost');
  const client = new pg.Client({ connectionString: url });
  before(async () => {
    await runMigrations(url);
    await client.connect();
  });
  after(async () => {
    await client.query('SELECT cron.unschedule($1)', [CRON_JOB]).catch(() => undefined);
    await client.end();
  });

  /** The mode a scheduler given `schedule` settles on at start (it is stopped again at once). */
  const modeAfterStart = async (schedule: string) => {
    const pool = new pg.Pool({ connectionString: url, max: 1 });
    const scheduler = new IntegrityScheduler({
      main: pool,
      mainUrl: url,
      schedule,
      postDeployDelayMs: 3_600_000,
      projectorHealthy: () => true,
      logger: silent,
    });
    try {
      await scheduler.start();
    } finally {
      await scheduler.stop();
      await pool.end();
    }
    return scheduler.mode;
  };
  const jobSchedules = async () =>
    (
      await client.query<{ schedule: string }>('SELECT schedule FROM cron.job WHERE jobname = $1', [
        CRON_JOB,
      ])
    ).rows;

  void it('really fires the refresh job on its schedule, and re-scheduling never duplicates it', async (t) => {
    const cron = await client.query("SELECT 1 FROM pg_extension WHERE extname = 'pg_cron'");
    if (cron.rows.length === 0) {
      t.skip('pg_cron is not installed on this machine');
      return;
    }
    assert.equal(await modeAfterStart('* * * * *'), 'pg_cron');
    assert.deepEqual(await jobSchedules(), [{ schedule: '* * * * *' }]);
    const since = new Date();
    await waitFor(
      async () =>
        (
          await client.query(
            `SELECT 1 FROM cron.job_run_details d JOIN cron.job j ON j.jobid = d.jobid
              WHERE j.jobname = $1 AND d.status = 'succeeded' AND d.start_time >= $2`,
            [CRON_JOB, since],
          )
        ).rows.length > 0,
      'pg_cron to run the job successfully',
      150_000,
    );
    const snapshots = await client.query(
      "SELECT finished_at FROM integrity_refreshes WHERE mode = 'pg_cron' AND finished_at >= $1",
      [since],
    );
    assert.ok(snapshots.rows.length >= 1, 'the snapshot time moved');
  });

  void it('gives pg_cron only schedules it reads as the service does', async (t) => {
    const cron = await client.query("SELECT 1 FROM pg_extension WHERE extname = 'pg_cron'");
    if (cron.rows.length === 0) {
      t.skip('pg_cron is not installed on this machine');
      return;
    }
    const checkJob = 'outpost-schedule-check';
    t.after(() => client.query('SELECT cron.unschedule($1)', [checkJob]).catch(() => undefined));
    const takes = (schedule: string) =>
      client.query('SELECT cron.schedule($1, $2, $3)', [checkJob, schedule, 'SELECT 1']).then(
        () => true,
        () => false,
      );
    const valid = ['*/30 * * * *', '0 3 * * *', '0 9-17 * * mon-fri', '0,30 * 1-15 jan-mar 1-5'];
    // Each read by cron-parser, which computes the in-process scheduler's runs, but not by pg_cron.
    const pgCronRefuses = ['0 3 L * *', '0 3 ? * *', '5/10 * * * *'];
    for (const schedule of valid) {
      assert.equal(pgCronReadsAlike(schedule), true, schedule);
      assert.equal(await takes(schedule), true, `pg_cron takes ${schedule}`);
    }
    for (const schedule of pgCronRefuses) {
      assert.equal(await takes(schedule), false, `pg_cron refuses ${schedule}`);
      assert.equal(pgCronReadsAlike(schedule), false, schedule);
      assert.equal(isValidSchedule(schedule), true, `the in-process scheduler runs ${schedule}`);
    }
    // pg_cron takes these, but reads them otherwise: without the `#` (cron-parser's "second
    // Friday"), and with both day fields to match where one is a step of `*`.
    for (const schedule of ['0 3 * * 5#2', '0 3 */2 * mon']) {
      assert.equal(await takes(schedule), true, `pg_cron takes ${schedule}`);
      assert.equal(pgCronReadsAlike(schedule), false, schedule);
    }
  });

  void it('leaves the refresh to pg_cron when its job would not take the configured schedule', async (t) => {
    const cron = await client.query("SELECT 1 FROM pg_extension WHERE extname = 'pg_cron'");
    if (cron.rows.length === 0) {
      t.skip('pg_cron is not installed on this machine');
      return;
    }
    await scheduleCronJob(client, '*/30 * * * *');
    // Read by the in-process scheduler's parser, refused by pg_cron: as a refusal to schedule.
    assert.equal(await modeAfterStart('0 3 L * *'), 'pg_cron', 'not refreshing beside the job');
    assert.deepEqual(await jobSchedules(), [{ schedule: '*/30 * * * *' }]);
  });

  void it('gives the job OUTPOST_INTEGRITY_SCHEDULE on outpost migrate, before any process starts', async (t) => {
    const cron = await client.query("SELECT 1 FROM pg_extension WHERE extname = 'pg_cron'");
    if (cron.rows.length === 0) {
      t.skip('pg_cron is not installed on this machine');
      return;
    }
    await scheduleCronJob(client, '*/30 * * * *');
    const migrate = (schedule?: string) =>
      runCliWith(
        {
          PATH: process.env.PATH,
          HOME: process.env.HOME,
          MAIN_DATABASE_URL: url,
          ...(schedule && { OUTPOST_INTEGRITY_SCHEDULE: schedule }),
        },
        ['migrate', '--json'],
      );
    const scheduleNow = async () =>
      (
        await client.query<{ schedule: string }>(
          'SELECT schedule FROM cron.job WHERE jobname = $1',
          [CRON_JOB],
        )
      ).rows;
    const moved = await migrate('*/7 * * * *');
    assert.equal(moved.code, 0, moved.stderr);
    assert.deepEqual(JSON.parse(moved.stdout), {
      migrated: true,
      integrity_schedule: '*/7 * * * *',
    });
    assert.deepEqual(await scheduleNow(), [{ schedule: '*/7 * * * *' }], 'one job, rescheduled');
    const again = await migrate('*/7 * * * *');
    assert.deepEqual(JSON.parse(again.stdout), { migrated: true }, 'nothing to change');
    assert.deepEqual(await scheduleNow(), [{ schedule: '*/7 * * * *' }]);
    // From a shell without the variable, the schedule the projectors were given stays.
    const unset = await migrate();
    assert.deepEqual(JSON.parse(unset.stdout), { migrated: true }, unset.stderr);
    assert.deepEqual(await scheduleNow(), [{ schedule: '*/7 * * * *' }], 'not put back to */30');
  });

  void it('finds pg_cron once the main database answers, when it could not tell at start', async (t) => {
    const cron = await client.query("SELECT 1 FROM pg_extension WHERE extname = 'pg_cron'");
    if (cron.rows.length === 0) {
      t.skip('pg_cron is not installed on this machine');
      return;
    }
    await scheduleCronJob(client, '*/30 * * * *');
    // The site's link down as the process starts: nothing reaches the main database.
    const proxy = await BlackholeProxy.start(stack.mainPort);
    proxy.blackhole();
    const viaProxy = new URL(url);
    viaProxy.port = String(proxy.port);
    const main = new pg.Pool({
      connectionString: viaProxy.toString(),
      max: 1,
      connectionTimeoutMillis: 300,
    });
    main.on('error', () => undefined);
    const scheduler = new IntegrityScheduler({
      main,
      mainUrl: viaProxy.toString(),
      schedule: '0 0 1 1 *',
      postDeployDelayMs: 3_600_000,
      projectorHealthy: () => true,
      logger: silent,
      detectRetryMs: 200,
    });
    try {
      await scheduler.start();
      assert.equal(scheduler.mode, 'scheduler', 'refreshing in-process while it cannot tell');
      proxy.heal();
      await waitFor(() => scheduler.mode === 'pg_cron', 'the scheduler to find the pg_cron job');
      const jobs = await client.query<{ schedule: string }>(
        'SELECT schedule FROM cron.job WHERE jobname = $1',
        [CRON_JOB],
      );
      assert.deepEqual(jobs.rows, [{ schedule: '0 0 1 1 *' }], 'the job given the schedule');
    } finally {
      await scheduler.stop();
      await main.end();
      await proxy.close();
    }
  });

  void it('runs a scheduled refresh pg_cron missed, says why, and takes the refresh over when the job is gone', async (t) => {
    const cron = await client.query("SELECT 1 FROM pg_extension WHERE extname = 'pg_cron'");
    if (cron.rows.length === 0) {
      t.skip('pg_cron is not installed on this machine');
      return;
    }
    const missed: string[] = [];
    const jobSchedules: string[] = [];
    const main = new pg.Pool({ connectionString: url, max: 1 });
    const scheduler = new IntegrityScheduler({
      main,
      mainUrl: url,
      schedule: '0 0 1 1 *',
      postDeployDelayMs: 3_600_000,
      projectorHealthy: () => true,
      logger: silent,
      onMissedCronRun: (why) => missed.push(why),
      onJobSchedule: (schedule) => jobSchedules.push(schedule),
    });
    const holder = new pg.Client({ connectionString: url });
    try {
      await scheduler.start();
      assert.equal(scheduler.mode, 'pg_cron');
      const { rows: jobs } = await client.query<{ jobid: string }>(
        'SELECT jobid::text FROM cron.job WHERE jobname = $1',
        [CRON_JOB],
      );
      await client.query('SELECT cron.alter_job($1, active := false)', [jobs[0]?.jobid]);
      // A due time later than every snapshot so far: none of them is its run.
      const due = new Date(Date.now() + 60_000);
      await holder.connect();
      await holder.query('SELECT pg_advisory_lock($1)', [REFRESH_LOCK]);
      assert.equal(await scheduler.catchUpCronRun(due), 'running', 'a refresh holds the lock');
      await holder.query('SELECT pg_advisory_unlock($1)', [REFRESH_LOCK]);
      assert.deepEqual(missed, []);

      assert.equal(await scheduler.catchUpCronRun(due), 'refreshed');
      assert.match(
        missed[0] ?? '',
        new RegExp(`inactive; SELECT cron\\.alter_job\\(${jobs[0]?.jobid}, active := true\\)`),
      );
      const latest = await client.query<{ mode: string }>(
        'SELECT mode FROM integrity_refreshes ORDER BY id DESC LIMIT 1',
      );
      assert.equal(latest.rows[0]?.mode, 'watchdog');
      assert.equal(await scheduler.catchUpCronRun(new Date()), 'ran', 'the refresh just made');
      assert.equal(missed.length, 1);

      await client.query('SELECT cron.alter_job($1, active := true)', [jobs[0]?.jobid]);
      assert.doesNotMatch(
        await whyCronMissed(client),
        /inactive|launcher/,
        'an active job, its launcher running',
      );

      // Another process of the site (a rolling change) gave the job another schedule: this one
      // checks its runs by the job's, and a run it finds missed does not set the schedule back.
      await client.query('SELECT cron.alter_job($1, schedule := $2, active := false)', [
        jobs[0]?.jobid,
        '*/5 * * * *',
      ]);
      assert.equal(
        (await scheduler.cronDueAfter(new Date('2026-06-01T00:01:00Z'))).toISOString(),
        '2026-06-01T00:05:00.000Z',
      );
      assert.equal(jobSchedules.at(-1), '*/5 * * * *', "the stale alert's gap follows the job's");
      assert.equal(await scheduler.catchUpCronRun(new Date(Date.now() + 60_000)), 'refreshed');
      const { rows: kept } = await client.query(
        'SELECT schedule FROM cron.job WHERE jobname = $1',
        [CRON_JOB],
      );
      assert.deepEqual(kept, [{ schedule: '*/5 * * * *' }], "the site's schedule kept");

      await client.query('SELECT cron.unschedule($1)', [CRON_JOB]);
      assert.equal(await scheduler.catchUpCronRun(new Date(Date.now() + 120_000)), 'refreshed');
      assert.match(missed[2] ?? '', new RegExp(`the pg_cron job ${CRON_JOB} is gone`));
      assert.equal(scheduler.mode, 'scheduler', 'refreshing in-process from now on');
    } finally {
      await holder.end().catch(() => undefined);
      await scheduler.stop();
      await main.end();
    }
  });

  void it('creates the refresh job at start where pg_cron runs but has no job: preloaded after the migrations ran', async (t) => {
    const cron = await client.query("SELECT 1 FROM pg_extension WHERE extname = 'pg_cron'");
    if (cron.rows.length === 0) {
      t.skip('pg_cron is not installed on this machine');
      return;
    }
    // As a database migrated before pg_cron was preloaded is: no extension, so no job.
    await client.query('DROP EXTENSION pg_cron');
    t.after(() => client.query('CREATE EXTENSION IF NOT EXISTS pg_cron'));
    const since = new Date();
    assert.equal(await modeAfterStart('* * * * *'), 'pg_cron');
    assert.deepEqual(await jobSchedules(), [{ schedule: '* * * * *' }]);
    // And pg_cron's launcher takes the new job up and runs it.
    await waitFor(
      async () =>
        (
          await client.query(
            "SELECT 1 FROM integrity_refreshes WHERE mode = 'pg_cron' AND finished_at >= $1",
            [since],
          )
        ).rows.length > 0,
      'pg_cron to run the job it was given',
      150_000,
    );
  });
});

void describe('the integrity SQL', () => {
  void it('defines each view, as its latest migration leaves it, with exactly the query under sql/integrity', () => {
    const migrationsDir = new URL('../migrations/', import.meta.url);
    const migrations = readdirSync(migrationsDir)
      .filter((f) => f.endsWith('.sql'))
      .sort()
      .map((f) => readFileSync(new URL(f, migrationsDir), 'utf8'))
      .join('\n');
    // Comments are the file's to keep: a later migration redefining a view need not repeat them.
    const code = (sql: string) =>
      sql
        .split('\n')
        .filter((line) => !line.startsWith('--'))
        .join('\n')
        .trim();
    for (const problem of PROBLEMS) {
      const query = readFileSync(
        new URL(`../sql/integrity/${problem}.sql`, import.meta.url),
        'utf8',
      );
      const definitions = [
        ...migrations.matchAll(
          new RegExp(`CREATE MATERIALIZED VIEW integrity_${problem} AS\\n([^;]*);`, 'g'),
        ),
      ];
      assert.ok(definitions.length > 0, `${problem} is defined`);
      assert.equal(code(definitions.at(-1)?.[1] ?? ''), code(query), problem);
    }
  });
});
