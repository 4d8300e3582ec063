import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import type pg from 'pg';
import { createPool } from '../src/db/client.ts';
import { parseLsn } from '../src/db/lsn.ts';
import { ReplicaBehindError, showsAcknowledged } from '../src/read/acknowledged-replay.ts';
import { testStack, waitFor } from './harness/harness.ts';
import { withDatabase } from './harness/services.ts';

void describe('createPool', () => {
  void it("keeps its own session settings when the site's URL carries options of its own", async () => {
    const url = new URL(withDatabase(testStack().mainUrl, 'postgres'));
    url.searchParams.set('options', '-c timezone=America/Santiago -c search_path=site_schema');
    const pool = createPool({ url: url.toString(), max: 1, applicationName: 'outpost-test' });
    try {
      const setting = async (name: string) =>
        (await pool.query<{ value: string }>('SELECT current_setting($1) AS value', [name])).rows[0]
          ?.value;
      assert.equal(await setting('timezone'), 'UTC', 'ours, which the URL would have replaced');
      assert.equal(await setting('search_path'), 'site_schema', "the URL's own, kept");
    } finally {
      await pool.end();
    }
  });
});

void describe('connections that wait for the replica to show what was acknowledged', () => {
  const stack = testStack();
  const replicaUrl = withDatabase(stack.replicaUrl, 'postgres');
  const replayedBy = async (pool: pg.Pool) =>
    parseLsn(
      (await pool.query<{ lsn: string }>('SELECT pg_last_wal_replay_lsn()::text AS lsn')).rows[0]
        ?.lsn ?? '',
    );
  const pools: pg.Pool[] = [];
  const pool = (options: Omit<Parameters<typeof createPool>[0], 'max'>) => {
    const made = createPool({ ...options, max: 1 });
    pools.push(made);
    return made;
  };
  after(() => Promise.all(pools.map((p) => p.end())));

  void it('hands a connection out only once the replica has replayed past the mark', async () => {
    const probe = pool({ url: replicaUrl, applicationName: 'outpost-test' });
    const main = pool({
      url: withDatabase(stack.mainUrl, 'postgres'),
      applicationName: 'outpost-test',
    });
    const ahead = (await replayedBy(probe)) + 1n;
    const gated = pool({
      url: replicaUrl,
      applicationName: 'outpost-test-gated',
      onConnect: showsAcknowledged(async () => ahead, 20_000),
    });
    let answered = false;
    const read = gated
      .query<{ lsn: string }>("SELECT pg_last_wal_replay_lsn()::text AS lsn, 'read' AS tag")
      .finally(() => {
        answered = true;
      });
    await waitFor(
      async () =>
        (
          await probe.query(
            `SELECT 1 FROM pg_stat_activity
              WHERE application_name = 'outpost-test-gated' AND query LIKE '%pg_is_in_recovery%'`,
          )
        ).rows.length === 1,
      'the new connection asking how far the replica replayed',
    );
    assert.equal(answered, false, 'held while the replica is short of the mark');
    // A commit on the primary: WAL for the replica to replay past the mark.
    await main.query('SELECT txid_current()');
    const lsn = parseLsn((await read).rows[0]?.lsn ?? '');
    assert.ok(lsn >= ahead, `read at ${lsn}, at or past the mark ${ahead}`);
  });

  void it('fails the connection, saying how far each got, when the replica does not get there in time', async () => {
    const gated = pool({
      url: replicaUrl,
      applicationName: 'outpost-test',
      onConnect: showsAcknowledged(async () => 0xffffffff00000000n, 100),
    });
    await assert.rejects(gated.query('SELECT 1'), (err: Error) => {
      assert.ok(err instanceof ReplicaBehindError);
      assert.match(
        err.message,
        /^the read replica has replayed up to [0-9A-F]+\/[0-9A-F]+, and this site's events are acknowledged \(no longer held in flight\) up to FFFFFFFF\/0; it did not get there within 100 ms/,
      );
      return true;
    });
  });

  void it('does not hold a server that is not a standby, nor any before the first acknowledgement', async () => {
    for (const [url, mark] of [
      [withDatabase(stack.mainUrl, 'postgres'), 0xffffffff00000000n],
      [replicaUrl, undefined],
    ] as const) {
      const gated = pool({
        url,
        applicationName: 'outpost-test',
        onConnect: showsAcknowledged(async () => mark, 5_000),
      });
      assert.deepEqual((await gated.query('SELECT 1 AS one')).rows, [{ one: 1 }]);
    }
  });
});
