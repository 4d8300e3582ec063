import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import pg from 'pg';
import { runMigrations } from '../src/db/migrate.ts';
import { stackStatus, stackUp } from '../src/stack/stack.ts';
import { testStack } from './harness/harness.ts';
import { withDatabase } from './harness/services.ts';

const schemaOf = async (client: pg.Client) =>
  (
    await client.query<{ t: string }>(
      `SELECT table_name || '.' || column_name || ':' || data_type AS t FROM information_schema.columns
        WHERE table_schema IN ('public', 'drizzle') ORDER BY 1`,
    )
  ).rows.map((r) => r.t);

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
