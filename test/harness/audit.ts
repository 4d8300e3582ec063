import assert from 'node:assert/strict';
import { PROJECTION_TABLES } from '../../src/db/queries/apply.ts';
import { entryRecord } from '../../src/log/codec.ts';
import { EventLog } from '../../src/log/event-log.ts';
import { readBuffer, totalsOf } from '../../src/ops/buffer.ts';
import { rebuildProjections } from '../../src/ops/rebuild.ts';
import { type Harness, waitFor } from './harness.ts';

export const eventLogOf = (h: Harness) =>
  new EventLog(h.redis, h.config.namespace, h.config.partitions);

/** Every unacknowledged event of the site: delivered or not. */
export const unacknowledged = async (h: Harness): Promise<number> => {
  return totalsOf(await readBuffer(eventLogOf(h))).pending;
};

export const waitForAllAcknowledged = (h: Harness, timeoutMs = 60_000) =>
  waitFor(async () => (await unacknowledged(h)) === 0, 'every event to be acknowledged', timeoutMs);

/** Polls until every one of `eventIds` is in the main database's events table. */
export const waitForApplied = (
  h: Harness,
  eventIds: readonly string[],
  what: string,
  timeoutMs = 30_000,
) =>
  waitFor(
    async () =>
      (
        await h.mainRows<{ n: number }>(
          'SELECT count(*)::int AS n FROM events WHERE event_id = ANY($1)',
          [eventIds],
        )
      )[0]?.n === eventIds.length,
    what,
    timeoutMs,
  );

/** Every entry of the partition streams as [entry id, event id], oldest first per partition. */
export const streamEntries = async (h: Harness): Promise<[string, string][]> => {
  const found: [string, string][] = [];
  for (const keys of eventLogOf(h).allKeys()) {
    const entries = (await h.redis.xrange(keys.stream, '-', '+')) as [string, string[]][];
    for (const [entryId, fields] of entries) {
      found.push([entryId, entryRecord(fields).event_id as string]);
    }
  }
  return found;
};

/** Event ids of every entry in the partition streams (duplicates included, once each). */
export const streamEventIds = async (h: Harness): Promise<Set<string>> =>
  new Set((await streamEntries(h)).map(([, eventId]) => eventId));

const eventIdsIn = async (rows: Promise<{ event_id: string }[]>) =>
  new Set((await rows).map((r) => r.event_id));

/**
 * The audit every fault test ends with: the accepted events are exactly the applied ones, on the
 * main database and on the replica; seqs are contiguous from 0; every projection row is the fold
 * of its events; nothing is left unacknowledged.
 */
export const audit = async (h: Harness, accepted: ReadonlySet<string>) => {
  await waitForAllAcknowledged(h);
  const onMain = await eventIdsIn(
    h.mainRows<{ event_id: string }>('SELECT event_id::text FROM events'),
  );
  const missing = [...accepted].filter((id) => !onMain.has(id));
  const extra = [...onMain].filter((id) => !accepted.has(id));
  assert.deepEqual(
    { missing: missing.slice(0, 5), extra: extra.slice(0, 5) },
    { missing: [], extra: [] },
  );
  assert.equal(onMain.size, accepted.size);
  const lsn = (await h.mainRows<{ lsn: string }>('SELECT pg_current_wal_lsn()::text AS lsn'))[0]
    ?.lsn;
  await waitFor(
    async () =>
      (
        await h.replicaRows<{ ok: boolean }>(
          'SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn AS ok',
          [lsn],
        )
      )[0]?.ok === true,
    'the replica to replay the audit position',
  );
  const onReplica = await eventIdsIn(
    h.replicaRows<{ event_id: string }>('SELECT event_id::text FROM events'),
  );
  assert.equal(onReplica.size, accepted.size);
  const gaps = await h.mainRows(
    `SELECT aggregate_id FROM events GROUP BY aggregate_id
      HAVING min(seq) <> 0 OR max(seq) <> count(*) - 1`,
  );
  assert.deepEqual(gaps, [], 'seqs contiguous from 0 per aggregate');
  await assertProjectionsEqualFold(h);
};

export const assertProjectionsEqualFold = async (h: Harness) => {
  const report = await rebuildProjections(h.main, 'verify');
  assert.equal(report.differing, 0, JSON.stringify(report.differences.slice(0, 5)));
  for (const [type, table] of Object.entries(PROJECTION_TABLES)) {
    const orphans = await h.mainRows(
      `SELECT t.id FROM ${table} t LEFT JOIN aggregates a ON a.id = t.id WHERE a.id IS NULL OR a.type <> $1`,
      [type],
    );
    assert.deepEqual(orphans, [], `${table} rows without aggregate`);
  }
};
