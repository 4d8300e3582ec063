import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import type pg from 'pg';
import { createPool } from '../src/db/client.ts';
import { type Lsn, parseLsn } from '../src/db/lsn.ts';
import {
  AcknowledgedReplayGate,
  ReplicaBehindError,
  walPosition,
} from '../src/read/acknowledged-replay.ts';
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
  const mainUrl = withDatabase(stack.mainUrl, 'postgres');
  const pools: pg.Pool[] = [];
  const pool = (
    options: Omit<Parameters<typeof createPool>[0], 'max' | 'applicationName'> & {
      applicationName?: string;
    },
  ) => {
    const made = createPool({ applicationName: 'outpost-test', ...options, max: 1 });
    pools.push(made);
    return made;
  };
  const probe = pool({ url: replicaUrl });
  const main = pool({ url: mainUrl });
  after(() => Promise.all(pools.map((p) => p.end())));
  const replayed = async () =>
    parseLsn(
      (await probe.query<{ lsn: string }>('SELECT pg_last_wal_replay_lsn()::text AS lsn')).rows[0]
        ?.lsn ?? '',
    );
  /** `work` with the replica's replay paused: nothing moves it past a mark meanwhile. */
  const whilePaused = async (work: () => Promise<void>) => {
    await probe.query('SELECT pg_wal_replay_pause()');
    try {
      await waitFor(async () => {
        // Replay stops at its next record: a commit gives it one.
        await main.query('SELECT txid_current()');
        return (
          (await probe.query<{ s: string }>('SELECT pg_get_wal_replay_pause_state() AS s')).rows[0]
            ?.s === 'paused'
        );
      }, 'replay paused');
      await work();
    } finally {
      await probe.query('SELECT pg_wal_replay_resume()');
    }
  };
  /** A gate over a mark the test sets, counting what it forgets and refuses. */
  const gateOver = (mark: () => Lsn | undefined, waitMs: number) => {
    const seen = { forgotten: 0, refused: [] as boolean[], caughtUp: 0 };
    const gate = new AcknowledgedReplayGate({
      acknowledgedThrough: async () => mark(),
      forgetAcknowledged: async () => {
        seen.forgotten += 1;
      },
      mainPosition: () => walPosition(main),
      onBehind: (_, { first }) => {
        seen.refused.push(first);
      },
      onCaughtUp: () => {
        seen.caughtUp += 1;
      },
      waitMs,
    });
    return { gate, seen };
  };

  void it('hands a connection out only once the replica has replayed past the mark', async () => {
    let read: Promise<pg.QueryResult<{ lsn: string }>> | undefined;
    let answered = false;
    let ahead = 0n;
    await whilePaused(async () => {
      // A commit on the main database the replica has received but not replayed.
      await main.query('SELECT txid_current()');
      ahead = await walPosition(main);
      assert.ok((await replayed()) < ahead);
      const { gate, seen } = gateOver(() => ahead, 60_000);
      const gated = pool({
        url: replicaUrl,
        applicationName: 'outpost-test-gated',
        onConnect: gate.check,
      });
      read = gated
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
      assert.deepEqual(seen, { forgotten: 0, refused: [], caughtUp: 0 });
    });
    const lsn = parseLsn((await read)?.rows[0]?.lsn ?? '');
    assert.ok(lsn >= ahead, `read at ${lsn}, at or past the mark ${ahead}`);
  });

  void it('fails the connection, saying how far each got, when the replica does not get there in time', async () => {
    let ahead = 0n;
    const { gate, seen } = gateOver(() => ahead, 100);
    const gated = pool({ url: replicaUrl, onConnect: gate.check });
    await whilePaused(async () => {
      await main.query('SELECT txid_current()');
      ahead = await walPosition(main);
      await assert.rejects(gated.query('SELECT 1'), (err: Error) => {
        assert.ok(err instanceof ReplicaBehindError);
        assert.match(
          err.message,
          /^the read replica has replayed up to [0-9A-F]+\/[0-9A-F]+, and this site's events are acknowledged \(no longer held in flight\) up to [0-9A-F]+\/[0-9A-F]+: it came back at an earlier point/,
        );
        return true;
      });
      await assert.rejects(gated.query('SELECT 1'), ReplicaBehindError);
      assert.deepEqual(seen.refused, [true, false], 'one spell of refusals, told once');
    });
    await waitFor(async () => (await replayed()) >= ahead, 'the replica past the mark');
    assert.deepEqual((await gated.query('SELECT 1 AS one')).rows, [{ one: 1 }]);
    assert.deepEqual(seen, { forgotten: 0, refused: [true, false], caughtUp: 1 });
  });

  void it("forgets a mark past the main database's own WAL (restored, or replaced) and reads on", async () => {
    const { gate, seen } = gateOver(() => 0xffffffff00000000n, 100);
    const gated = pool({ url: replicaUrl, onConnect: gate.check });
    assert.deepEqual((await gated.query('SELECT 1 AS one')).rows, [{ one: 1 }]);
    assert.deepEqual(seen, { forgotten: 1, refused: [], caughtUp: 0 });
  });

  void it('does not hold a server that is not a standby, nor any before the first acknowledgement', async () => {
    for (const [url, mark] of [
      [mainUrl, 0xffffffff00000000n],
      [replicaUrl, undefined],
    ] as const) {
      const { gate, seen } = gateOver(() => mark, 60_000);
      const gated = pool({ url, onConnect: gate.check });
      assert.deepEqual((await gated.query('SELECT 1 AS one')).rows, [{ one: 1 }]);
      assert.deepEqual(seen, { forgotten: 0, refused: [], caughtUp: 0 });
    }
  });
});
