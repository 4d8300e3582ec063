import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import {
  chmodSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after, before, describe, it, type TestContext } from 'node:test';
import { promisify } from 'node:util';
import pg from 'pg';
import { runMigrations } from '../src/db/migrate.ts';
import { createMissingCronJob, refreshIntegrity } from '../src/db/queries/integrity.ts';
import { PROJECT_ROOT } from '../src/paths.ts';
import { isPortOpen } from '../src/stack/processes.ts';
import { stackDown, stackPaths, stackStatus, stackUp } from '../src/stack/stack.ts';
import { runCliWith } from './harness/cli.ts';
import { testStack } from './harness/harness.ts';
import { freePort, freeStackPorts, withDatabase } from './harness/services.ts';

const run = promisify(execFile);

/** When the journal says a migration was made: drizzle records it as the migration's created_at. */
const migrationWhen = (tag: string) => {
  const journal = JSON.parse(
    readFileSync(join(PROJECT_ROOT, 'migrations', 'meta', '_journal.json'), 'utf8'),
  ) as { entries: { tag: string; when: number }[] };
  const entry = journal.entries.find((e) => e.tag === tag);
  assert.ok(entry, `${tag} in the journal`);
  return entry.when;
};

const schemaOf = async (client: pg.Client) =>
  (
    await client.query<{ t: string }>(
      `SELECT table_name || '.' || column_name || ':' || data_type AS t FROM information_schema.columns
        WHERE table_schema IN ('public', 'drizzle') ORDER BY 1`,
    )
  ).rows.map((r) => r.t);

/** Skips `t`, saying why, where the test needs root and this is not it. */
const skippedUnlessRoot = (t: TestContext, why: string): boolean => {
  if (process.getuid?.() === 0) {
    return false;
  }
  t.skip(why);
  return true;
};

void describe('outpost migrate', () => {
  const stack = testStack();
  const database = `m_${randomUUID().replaceAll('-', '').slice(0, 12)}`;
  const admin = new pg.Client({ connectionString: withDatabase(stack.mainUrl, 'postgres') });
  before(async () => {
    await admin.connect();
    await admin.query(`CREATE DATABASE ${database}`);
  });
  after(async () => {
    await admin.query(`DROP DATABASE IF EXISTS ${database} WITH (FORCE)`);
    await admin.end();
  });

  void it('applies every migration once and changes nothing when run again', async () => {
    const url = withDatabase(stack.mainUrl, database);
    await runMigrations(url);
    const client = new pg.Client({ connectionString: url });
    await client.connect();
    try {
      const first = await schemaOf(client);
      const applied = (await client.query('SELECT hash FROM drizzle.__drizzle_migrations')).rows
        .length;
      assert.ok(
        first.some((c) => c.startsWith('events.commit_lsn:')),
        'events.commit_lsn exists',
      );
      assert.ok(applied > 0);
      await runMigrations(url);
      await Promise.all([runMigrations(url), runMigrations(url)]);
      assert.deepEqual(await schemaOf(client), first);
      assert.equal(
        (await client.query('SELECT hash FROM drizzle.__drizzle_migrations')).rows.length,
        applied,
      );
    } finally {
      await client.end();
    }
  });

  void it('migrates as a role that is not a superuser on a server with pg_cron installed', async (t) => {
    const { rows } = await admin.query(
      "SELECT 1 FROM pg_available_extensions WHERE name = 'pg_cron'",
    );
    if (rows.length === 0) {
      t.skip('pg_cron is not installed here: the migration never looks for it');
      return;
    }
    // A site's DBA migrates as the database's owner, not as a superuser.
    const role = `r_${randomUUID().replaceAll('-', '').slice(0, 12)}`;
    const owned = `${role}_db`;
    await admin.query(`CREATE ROLE ${role} LOGIN`);
    await admin.query(`CREATE DATABASE ${owned} OWNER ${role}`);
    try {
      const url = new URL(withDatabase(stack.mainUrl, owned));
      url.username = role;
      await runMigrations(url.toString());
      const client = new pg.Client({ connectionString: url.toString() });
      await client.connect();
      try {
        const columns = await schemaOf(client);
        assert.ok(columns.some((c) => c.startsWith('events.commit_lsn:')));
        const { rows: superuser } = await client.query<{ rolsuper: boolean }>(
          'SELECT rolsuper FROM pg_roles WHERE rolname = current_user',
        );
        assert.deepEqual(superuser, [{ rolsuper: false }], 'migrated as that role');
        // The service's start asks the same, and hands the refresh to its own scheduler.
        assert.deepEqual(await createMissingCronJob(client), { created: false });
      } finally {
        await client.end();
      }
    } finally {
      await admin.query(`DROP DATABASE IF EXISTS ${owned} WITH (FORCE)`);
      await admin.query(`DROP ROLE IF EXISTS ${role}`);
    }
  });

  void it('lets the new build refresh the integrity views of a database not yet migrated past 0005', async () => {
    const url = withDatabase(stack.mainUrl, database);
    await runMigrations(url);
    const client = new pg.Client({ connectionString: url });
    await client.connect();
    try {
      // The function as 0005 left it: 0006 undone, and it and every later migration unrecorded
      // so that migrating redoes them (drizzle applies what is newer than the last it recorded;
      // those after 0006 can run again as they are).
      await client.query(
        'DROP FUNCTION outpost_refresh_integrity(text, boolean, timestamptz); ALTER FUNCTION outpost_refresh_integrity_views(text, boolean) RENAME TO outpost_refresh_integrity',
      );
      await client.query('DELETE FROM drizzle.__drizzle_migrations WHERE created_at >= $1', [
        migrationWhen('0006_coalesced-integrity-refresh'),
      ]);
      const refreshes = async () =>
        (await client.query<{ n: number }>('SELECT count(*)::int AS n FROM integrity_refreshes'))
          .rows[0]?.n;
      const before = await refreshes();
      const manual = await refreshIntegrity(url, 'manual', true);
      assert.equal(manual?.mode, 'manual');
      const scheduled = await refreshIntegrity(url, 'scheduler', false);
      assert.equal(scheduled?.mode, 'scheduler');
      assert.equal(await refreshes(), (before ?? 0) + 2);

      await runMigrations(url);
      const { rows } = await client.query<{ args: string }>(
        "SELECT pg_get_function_identity_arguments('outpost_refresh_integrity'::regproc) AS args",
      );
      assert.match(rows[0]?.args ?? '', /p_fresh_since timestamp with time zone/);
    } finally {
      await client.end();
    }
  });

  void it('applies a migration added since to a database migrated up to 0007', async () => {
    const url = withDatabase(stack.mainUrl, database);
    await runMigrations(url);
    const client = new pg.Client({ connectionString: url });
    await client.connect();
    const hasInstance = async () =>
      (
        await client.query(
          "SELECT 1 FROM information_schema.columns WHERE table_name = 'projector_members' AND column_name = 'instance'",
        )
      ).rows.length === 1;
    try {
      // The database as a site migrated while 0007 was the newest left it: nothing after it
      // applied or recorded (0008 under its first journal date, too: it was dated before 0006
      // and 0007).
      await client.query('ALTER TABLE projector_members DROP COLUMN instance');
      await client.query(
        'DELETE FROM drizzle.__drizzle_migrations WHERE created_at >= $1 OR created_at = $2',
        [migrationWhen('0008_projector-instance'), 1796421052278],
      );
      assert.equal(await hasInstance(), false);
      await runMigrations(url);
      assert.equal(await hasInstance(), true, '0008 applied on upgrade');
      const { rows } = await client.query<{ query: string }>(
        "SELECT pg_get_viewdef('integrity_head_mismatch') AS query",
      );
      assert.match(rows[0]?.query ?? '', /last_event_at/, '0009 applied on upgrade');
    } finally {
      await client.end();
    }
  });

  void it('bars the takeover of a site name where a log was refused before 0014 recorded which', async () => {
    const url = withDatabase(stack.mainUrl, database);
    await runMigrations(url);
    const client = new pg.Client({ connectionString: url });
    await client.connect();
    try {
      // The database as the 0013 build left it: one site with a log refused, one without.
      await client.query('ALTER TABLE site_logs DROP COLUMN takeover_barred');
      await client.query('DELETE FROM drizzle.__drizzle_migrations WHERE created_at >= $1', [
        migrationWhen('0014_site-log-sightings'),
      ]);
      await client.query(
        `INSERT INTO site_logs (site, log, seen_at, refused_consumer, refused_at) VALUES
           ('copied', 'log-a', now(), 'copy:8080', now()), ('alone', 'log-b', now(), NULL, NULL)`,
      );
      await runMigrations(url);
      const barred = async () =>
        (
          await client.query<{ site: string; takeover_barred: boolean }>(
            'SELECT site, takeover_barred FROM site_logs ORDER BY site',
          )
        ).rows;
      assert.deepEqual(await barred(), [
        { site: 'alone', takeover_barred: false },
        { site: 'copied', takeover_barred: true },
      ]);
      // Run again (the column there), it bars nothing more.
      await client.query("UPDATE site_logs SET refused_at = now() WHERE site = 'alone'");
      await client.query('DELETE FROM drizzle.__drizzle_migrations WHERE created_at >= $1', [
        migrationWhen('0014_site-log-sightings'),
      ]);
      await runMigrations(url);
      assert.deepEqual(await barred(), [
        { site: 'alone', takeover_barred: false },
        { site: 'copied', takeover_barred: true },
      ]);
    } finally {
      await client.query("DELETE FROM site_logs WHERE site IN ('copied', 'alone')");
      await client.end();
    }
  });

  void it('gives up, saying why, on a table lock it would wait behind, rather than queue writes behind it', async () => {
    const url = withDatabase(stack.mainUrl, database);
    await runMigrations(url);
    const holder = new pg.Client({ connectionString: url });
    await holder.connect();
    try {
      // 0005 and what follows it unrecorded, so they run again: 0005 drops and creates
      // integrity_seq_gap.
      await holder.query(
        'DELETE FROM drizzle.__drizzle_migrations WHERE created_at >= (SELECT created_at FROM drizzle.__drizzle_migrations ORDER BY created_at OFFSET 5 LIMIT 1)',
      );
      // A long reader of the view, as an integrity refresh holds its tables.
      await holder.query('BEGIN');
      await holder.query('SELECT count(*) FROM integrity_seq_gap');
      await assert.rejects(
        runMigrations(url, { lockTimeoutMs: 300 }),
        /waited 0\.3 s for a table lock and gave up.*run the migration again/,
      );
      await holder.query('ROLLBACK');
      await runMigrations(url, { lockTimeoutMs: 300 });
      const { rows } = await holder.query('SELECT count(*)::int AS n FROM integrity_seq_gap');
      assert.equal(rows[0]?.n, 0, 'applied once the lock was gone');
    } finally {
      await holder.end();
    }
  });
});

void describe('outpost stack up', () => {
  void it('is idempotent: a second up leaves the running stack as it is', async () => {
    const stack = testStack();
    const options = {
      dir: stack.dir,
      mainPort: stack.mainPort,
      replicaPort: stack.replicaPort,
      redisPort: stack.redisPort,
      pgCron: 'auto' as const,
      appendfsync: 'always' as const,
      fastUnsafePostgres: true,
    };
    const pidBefore = await backendStart(stack.mainUrl);
    const urls = await stackUp(options);
    assert.equal(urls.main.url, stack.mainUrl);
    assert.equal(await backendStart(stack.mainUrl), pidBefore, 'the primary was not restarted');
    const status = await stackStatus(stack.dir, options);
    assert.equal(status.running, true);
    assert.deepEqual(
      [status.main.state, status.replica.state, status.redis.state],
      ['running', 'running', 'running'],
    );
  });

  void it('says which folder the postgres user cannot enter, as root, before starting anything', async (t) => {
    if (skippedUnlessRoot(t, 'runs PostgreSQL as itself when not root')) {
      return;
    }
    // A checkout under a folder closed to others, as /root is.
    const closed = mkdtempSync(join(tmpdir(), 'outpost-closed-'));
    chmodSync(closed, 0o700);
    try {
      const ports = await freeStackPorts();
      await assert.rejects(
        stackUp({
          dir: join(closed, 'project', '.outpost'),
          ...ports,
          pgCron: false,
          appendfsync: 'always',
        }),
        new RegExp(
          `postgres cannot enter ${closed} on the way to .*: let it \\(chmod o\\+x ${closed}\\)`,
        ),
      );
      assert.equal(await isPortOpen(ports.redisPort), false, 'Redis was not started');
    } finally {
      rmSync(closed, { recursive: true, force: true });
    }
  });

  void it('refuses a Redis older than 7 by its version, before starting anything', async () => {
    // A redis-server first on PATH that says it is 6.2, as Debian 11's does.
    const fakeBin = mkdtempSync(join(tmpdir(), 'outpost-old-redis-'));
    writeFileSync(
      join(fakeBin, 'redis-server'),
      '#!/bin/sh\necho "Redis server v=6.2.14 sha=00000000:0 malloc=jemalloc-5.2.1 bits=64 build=1"\n',
      { mode: 0o755 },
    );
    const dir = join(fakeBin, '.outpost');
    const path = process.env.PATH;
    process.env.PATH = `${fakeBin}:${path}`;
    try {
      const ports = await freeStackPorts();
      await assert.rejects(
        stackUp({ dir, ...ports, pgCron: false, appendfsync: 'always' }),
        new RegExp(`Redis 7 or later is needed, and ${fakeBin}/redis-server is Redis 6; install`),
      );
      assert.equal(await isPortOpen(ports.mainPort), false, 'PostgreSQL was not started');
    } finally {
      process.env.PATH = path;
      // Only should the refusal have failed: a stack it started is stopped, not left running.
      await stackDown(dir).catch(() => undefined);
      rmSync(fakeBin, { recursive: true, force: true });
    }
  });

  void it("runs its cluster with the cluster's own PostgreSQL version, and says so when that one is missing", async () => {
    // A cluster made by a PostgreSQL this machine does not have (as after upgrading the package):
    // the newest installed server would refuse its data directory with a line in its own log.
    const dir = mkdtempSync(join(tmpdir(), 'outpost-other-version-'));
    const main = stackPaths(dir).main;
    mkdirSync(main, { recursive: true });
    writeFileSync(join(main, 'PG_VERSION'), '99\n');
    try {
      const ports = await freeStackPorts();
      await assert.rejects(
        stackUp({ dir, ...ports, pgCron: false, appendfsync: 'always' }),
        new RegExp(
          `PostgreSQL data in ${main} is of version 99, whose server is not installed \\(found \\d+ in .+\\): install it with: apt-get install -y postgresql-99; or start over on the installed one with: outpost stack reset`,
        ),
      );
      assert.equal(await isPortOpen(ports.redisPort), false, 'Redis was not started');
    } finally {
      await stackDown(dir).catch(() => undefined);
      rmSync(dir, { recursive: true, force: true });
    }
  });

  void it("says why its Redis did not start, in Redis's words, at once and before PostgreSQL", async () => {
    // An append-only file damaged on disk: Redis forks, then exits as it reads it.
    const dir = join(mkdtempSync(join(tmpdir(), 'outpost-bad-aof-')), '.outpost');
    chmodSync(dirname(dir), 0o755);
    mkdirSync(join(dir, 'redis', 'appendonlydir'), { recursive: true });
    writeFileSync(join(dir, 'redis', 'appendonlydir', 'appendonly.aof.manifest'), 'garbage\n');
    try {
      const ports = await freeStackPorts();
      await assert.rejects(
        stackUp({ dir, ...ports, pgCron: false, appendfsync: 'always' }),
        /^Error: Redis in .*\/redis did not start; its log \(.*redis\.log\) ends:\n(.*\n)*.*Invalid AOF manifest file format/,
      );
      assert.equal(await isPortOpen(ports.mainPort), false, 'PostgreSQL was not started');
    } finally {
      await stackDown(dir).catch(() => undefined);
      rmSync(dirname(dir), { recursive: true, force: true });
    }
  });

  void it('waits while its Redis reads its append-only file, and says so when Redis then refuses it', async () => {
    // Damaged far from its start: Redis answers LOADING for a while, then exits (drill 163, where
    // `stack up` said "redis running" and exited 0).
    const dir = join(mkdtempSync(join(tmpdir(), 'outpost-late-bad-aof-')), '.outpost');
    chmodSync(dirname(dir), 0o755);
    const aofDir = join(dir, 'redis', 'appendonlydir');
    mkdirSync(aofDir, { recursive: true });
    writeFileSync(
      join(aofDir, 'appendonly.aof.manifest'),
      'file appendonly.aof.1.base.aof seq 1 type b\n',
    );
    const value = 'v'.repeat(200);
    const set = (i: number) =>
      `*3\r\n$3\r\nSET\r\n$${String(i).length + 2}\r\nk:${i}\r\n$${value.length}\r\n${value}\r\n`;
    const chunks: string[] = [];
    for (let i = 0; i < 150_000; i += 1) {
      chunks.push(set(i));
    }
    chunks.push('*1\r\nnot a command\r\n');
    writeFileSync(join(aofDir, 'appendonly.aof.1.base.aof'), chunks.join(''));
    try {
      const ports = await freeStackPorts();
      await assert.rejects(
        stackUp({ dir, ...ports, pgCron: false, appendfsync: 'always' }),
        /^Error: Redis in .*\/redis did not start; its log \(.*redis\.log\) ends:\n(.*\n)*.*(Bad file format|Unrecoverable error) reading the append only file/,
      );
      assert.equal(await isPortOpen(ports.mainPort), false, 'PostgreSQL was not started');
    } finally {
      await stackDown(dir).catch(() => undefined);
      rmSync(dirname(dir), { recursive: true, force: true });
    }
  });

  void it('refuses ports held by something that is not its own stack', async () => {
    const stack = testStack();
    await assert.rejects(
      stackUp({
        dir: `${stack.dir}-foreign`,
        mainPort: stack.mainPort,
        replicaPort: stack.replicaPort,
        redisPort: stack.redisPort,
        pgCron: false,
        appendfsync: 'always',
      }),
      /is taken by something that is not this stack/,
    );
  });
});

void describe('outpost stack status', () => {
  /** `outpost stack <action>` run by an operator in `cwd`, whose `.outpost` is the stack it means. */
  const stackCommand = (action: string, cwd: string, json: boolean) =>
    run(
      process.execPath,
      [join(PROJECT_ROOT, 'bin/outpost.js'), 'stack', action, ...(json ? ['--json'] : [])],
      {
        cwd,
        env: { PATH: process.env.PATH, HOME: process.env.HOME },
      },
    );
  const status = (cwd: string, json: boolean) => stackCommand('status', cwd, json);
  let cwd: string;
  before(() => {
    cwd = mkdtempSync(join(tmpdir(), 'outpost-status-'));
  });
  after(() => rmSync(cwd, { recursive: true, force: true }));

  void it('prints each server of a stopped stack as stopped, at the local stack URLs', async () => {
    const printed = JSON.parse((await status(cwd, true)).stdout);
    assert.deepEqual(printed, {
      running: false,
      main: { url: 'postgres://postgres@127.0.0.1:55432/outpost', state: 'stopped' },
      replica: { url: 'postgres://postgres@127.0.0.1:55433/outpost', state: 'stopped' },
      redis: { url: 'redis://127.0.0.1:56379', state: 'stopped' },
      pg_cron: false,
    });
  });

  void it('reports stopped a stack whose pid files name processes that are not its servers', async () => {
    // As after a reboot: the pid files are still there, and their numbers now belong to others
    // (here, this test's own process, which is alive but neither PostgreSQL nor Redis).
    const stale = mkdtempSync(join(tmpdir(), 'outpost-stale-'));
    try {
      const files = [
        ['pg-main', 'postmaster.pid'],
        ['pg-replica', 'postmaster.pid'],
        ['redis', 'redis.pid'],
      ] as const;
      const pidFilesNaming = (pidOf: (dir: string, file: string) => string) => {
        for (const [dir, file] of files) {
          mkdirSync(join(stale, '.outpost', dir), { recursive: true });
          writeFileSync(join(stale, '.outpost', dir, file), `${pidOf(dir, file)}\n`);
        }
      };
      pidFilesNaming(() => String(process.pid));
      const printed = JSON.parse((await status(stale, true)).stdout);
      assert.deepEqual(
        [printed.running, printed.main.state, printed.replica.state, printed.redis.state],
        [false, 'stopped', 'stopped', 'stopped'],
      );
      // Or to another stack's own servers (this test's), which `down` must not stop.
      const running = testStack().dir;
      pidFilesNaming(
        (dir, file) =>
          readFileSync(join(running, dir, file), 'utf8')
            .split('\n')[0]
            ?.trim() ?? '',
      );
      const others = JSON.parse((await status(stale, true)).stdout);
      assert.deepEqual(
        [others.running, others.main.state, others.replica.state, others.redis.state],
        [false, 'stopped', 'stopped', 'stopped'],
      );
    } finally {
      rmSync(stale, { recursive: true, force: true });
    }
  });

  void it('prints the URLs and state of the running stack in .outpost, as JSON and as a table', async () => {
    const stack = testStack();
    symlinkSync(stack.dir, join(cwd, '.outpost'));
    const printed = JSON.parse((await status(cwd, true)).stdout);
    assert.deepEqual(
      {
        main: printed.main,
        replica: printed.replica,
        redis: printed.redis,
        running: printed.running,
      },
      {
        main: { url: stack.mainUrl, state: 'running' },
        replica: { url: stack.replicaUrl, state: 'running' },
        redis: { url: stack.redisUrl, state: 'running' },
        running: true,
      },
    );
    const text = (await status(cwd, false)).stdout;
    for (const [service, url] of [
      ['main', stack.mainUrl],
      ['replica', stack.replicaUrl],
      ['redis', stack.redisUrl],
    ]) {
      assert.match(text, new RegExp(`^${service}\\s+running\\s+${url}\\s*$`, 'm'));
    }
    // From a subfolder of the project, as git finds its repository.
    const subfolder = join(cwd, 'src', 'deeper');
    mkdirSync(subfolder, { recursive: true });
    const fromSubfolder = JSON.parse((await status(subfolder, true)).stdout);
    assert.deepEqual(
      [fromSubfolder.running, fromSubfolder.main.url, fromSubfolder.redis.url],
      [true, stack.mainUrl, stack.redisUrl],
    );
  });

  void it('says that no stack was running where `down` finds none, instead of reporting it stopped', async () => {
    const empty = mkdtempSync(join(tmpdir(), 'outpost-empty-'));
    try {
      assert.deepEqual(JSON.parse((await stackCommand('down', empty, true)).stdout), {
        stopped: false,
      });
      assert.match(
        (await stackCommand('down', empty, false)).stdout,
        /^no local stack was running in .*outpost-empty-.*\/\.outpost$/m,
      );
    } finally {
      rmSync(empty, { recursive: true, force: true });
    }
  });

  void it('says a stack root started belongs to root when another user asks, instead of reporting it stopped', async (t) => {
    if (skippedUnlessRoot(t, 'needs root, to start a stack as one user and ask as another')) {
      return;
    }
    // A stack's state as root's `up` leaves it; its servers' pid files are closed to others.
    const project = mkdtempSync(join(tmpdir(), 'outpost-roots-'));
    chmodSync(project, 0o755);
    const dir = join(project, '.outpost');
    mkdirSync(dir, { mode: 0o755 });
    writeFileSync(stackPaths(dir).state, '{}\n');
    try {
      for (const action of ['status', 'down', 'up']) {
        const asked = await run(
          'runuser',
          [
            '-u',
            'postgres',
            '--',
            process.execPath,
            join(PROJECT_ROOT, 'bin/outpost.js'),
            'stack',
            action,
          ],
          { cwd: project, env: { PATH: process.env.PATH, HOME: '/tmp' } },
        ).then(
          (done) => ({ code: 0, ...done }),
          (failed: { code: number; stdout: string; stderr: string }) => failed,
        );
        assert.equal(asked.code, 1, `${action}: ${asked.stdout}${asked.stderr}`);
        assert.match(
          asked.stderr,
          new RegExp(
            `the local stack in ${dir} belongs to root, who started it, and its servers cannot be seen or stopped by another user: run it as root \\(sudo npx outpost stack ${action}\\)`,
          ),
        );
      }
    } finally {
      rmSync(project, { recursive: true, force: true });
    }
  });
});

void describe('outpost without a command', () => {
  const env = { PATH: process.env.PATH, HOME: process.env.HOME };

  void it('fails with its usage and a one-line reason, where --help succeeds', async () => {
    const bare = await runCliWith(env, []);
    assert.equal(bare.code, 1, 'a script whose command came out empty must not pass');
    assert.equal(bare.stdout, '');
    assert.match(bare.stderr, /^usage: outpost <command>/);
    assert.equal(
      bare.stderr.trimEnd().split('\n').at(-1),
      'outpost: no command given; see outpost --help',
    );
    const help = await runCliWith(env, ['--help']);
    assert.equal(help.code, 0, help.stderr);
    assert.match(help.stdout, /^usage: outpost <command>/);
    const unknown = await runCliWith(env, ['stats']);
    assert.equal(unknown.code, 1);
    assert.equal(unknown.stderr, 'outpost: unknown command stats; see outpost --help\n');
  });

  void it('stops quietly when the reader of its output goes away (outpost pending | head)', async () => {
    const child = spawn(process.execPath, ['bin/outpost.js', '--help'], {
      cwd: PROJECT_ROOT,
      env: { PATH: process.env.PATH, HOME: process.env.HOME },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    // Closed before the command has loaded, so its first write meets a pipe with no reader.
    child.stdout.destroy();
    let stderr = '';
    child.stderr.on('data', (chunk: Buffer) => {
      stderr += chunk.toString();
    });
    const code = await new Promise((resolve) => child.once('exit', resolve));
    assert.equal(stderr, '', 'no EPIPE stack trace');
    assert.equal(code, 0);
  });
});

void describe('start-up against servers that do not answer, or a URL that names none', () => {
  const envWith = async (overrides: Record<string, string> = {}) => ({
    PATH: process.env.PATH,
    HOME: process.env.HOME,
    REDIS_URL: `redis://127.0.0.1:${await freePort()}`,
    MAIN_DATABASE_URL: `postgres://postgres@127.0.0.1:${await freePort()}/outpost`,
    ...overrides,
  });

  void it('serve names Redis and its address, where ioredis says only that the connection is closed', async () => {
    const env = await envWith();
    const { code, stderr } = await runCliWith(env, ['serve', '--only', 'api']);
    assert.equal(code, 1);
    assert.match(
      stderr,
      new RegExp(
        `^outpost: cannot reach Redis at ${env.REDIS_URL.slice('redis://'.length).replaceAll('.', '\\.')} \\(.*ECONNREFUSED.*\\); is it running`,
        'm',
      ),
    );
  });

  void it('migrate names the main database and its address', async () => {
    const env = await envWith();
    const { code, stderr } = await runCliWith(env, ['migrate']);
    assert.equal(code, 1);
    const address = env.MAIN_DATABASE_URL.replace(/^postgres:\/\/postgres@|\/outpost$/g, '');
    assert.match(
      stderr,
      new RegExp(
        `^outpost: cannot reach the main database at ${address.replaceAll('.', '\\.')} \\(.*ECONNREFUSED.*\\)`,
        'm',
      ),
    );
  });

  void it('says a server that answered refused, not that it cannot be reached: a database that does not exist', async () => {
    const { mainUrl } = testStack();
    const env = await envWith({ MAIN_DATABASE_URL: withDatabase(mainUrl, 'no_such_database') });
    const { code, stderr } = await runCliWith(env, ['migrate']);
    assert.equal(code, 1);
    const address = new URL(mainUrl).host;
    assert.match(
      stderr,
      new RegExp(
        `^outpost: the main database at ${address.replaceAll('.', '\\.')} answered and refused: database "no_such_database" does not exist \\(SQLSTATE 3D000\\)$`,
        'm',
      ),
    );
  });

  void it('start refuses a variable the service would refuse before it starts the local stack', async () => {
    const { code, stdout, stderr } = await runCliWith(
      { PATH: process.env.PATH, HOME: process.env.HOME, OUTPOST_PORT: '80a' },
      ['start'],
    );
    assert.equal(code, 1, stdout);
    assert.match(stderr, /OUTPOST_PORT/);
    assert.equal(stdout, '', 'nothing of the stack was started or reported');
  });

  void it('refuses a database URL its driver cannot parse before anything starts, without echoing it', async () => {
    const env = await envWith({ MAIN_DATABASE_URL: 'postgres://site:s3cret@db:54x2/outpost' });
    const { code, stderr } = await runCliWith(env, ['serve']);
    assert.equal(code, 1);
    assert.match(stderr, /^outpost: invalid configuration; MAIN_DATABASE_URL: must be a URL/m);
    assert.doesNotMatch(stderr, /s3cret/);
  });
});

const backendStart = async (url: string) => {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    return (
      await client.query<{ t: Date }>('SELECT pg_postmaster_start_time() AS t')
    ).rows[0]?.t.getTime();
  } finally {
    await client.end();
  }
};
