import type { Queryable } from '../client.ts';

/** Thrown inside an applying transaction whose process no longer holds the partition's lease. */
export class FencedError extends Error {
  constructor(partition: number, token: number) {
    super(`partition ${partition}: lease token ${token} is no longer current; refusing to commit`);
    this.name = 'FencedError';
  }
}

export type Lease = { partition: number; consumer: string; token: number };

const UNDEFINED_COLUMN = '42703';

/**
 * Beats for `instance` under its consumer name; answers the instance that beat last before it, or
 * `unknown` on a database not yet migrated past 0008 (a build started before `outpost migrate`),
 * which still gets the beat: the leases must not stop for want of a column only a check reads.
 */
export const heartbeat = async (
  db: Queryable,
  consumer: string,
  instance: string,
): Promise<string | null | 'unknown'> => {
  try {
    const { rows } = await db.query<{ previous: string | null }>(
      `WITH previous AS (SELECT instance FROM projector_members WHERE consumer = $1)
       INSERT INTO projector_members (consumer, heartbeat_at, instance)
       VALUES ($1, clock_timestamp(), $2)
       ON CONFLICT (consumer) DO UPDATE
         SET heartbeat_at = excluded.heartbeat_at, instance = excluded.instance
       RETURNING (SELECT instance FROM previous)::text AS previous`,
      [consumer, instance],
    );
    return rows[0]?.previous ?? null;
  } catch (err) {
    if ((err as { code?: unknown }).code !== UNDEFINED_COLUMN) {
      throw err;
    }
    await db.query(
      `INSERT INTO projector_members (consumer, heartbeat_at) VALUES ($1, clock_timestamp())
       ON CONFLICT (consumer) DO UPDATE SET heartbeat_at = excluded.heartbeat_at`,
      [consumer],
    );
    return 'unknown';
  }
};

export const liveMembers = async (db: Queryable, ttlMs: number): Promise<number> => {
  const { rows } = await db.query<{ n: number }>(
    `SELECT count(*)::int AS n FROM projector_members
      WHERE heartbeat_at > clock_timestamp() - $1 * interval '1 millisecond'`,
    [ttlMs],
  );
  return rows[0]?.n ?? 0;
};

export const leaveMembers = async (db: Queryable, consumer: string) => {
  await db.query('DELETE FROM projector_members WHERE consumer = $1', [consumer]);
};

/**
 * Takes a partition that is free or whose lease expired, with a new token. The lease pool's short
 * statement timeout keeps a taker from hanging behind a stale owner frozen inside its final
 * fencing check; the next round simply tries again.
 */
export const acquireLease = async (
  db: Queryable,
  partition: number,
  consumer: string,
  ttlMs: number,
): Promise<number | undefined> => (await acquireLeases(db, [partition], consumer, ttlMs))[0]?.token;

/** `acquireLease` for several partitions in one statement: those it took, with their tokens. */
export const acquireLeases = async (
  db: Queryable,
  partitions: readonly number[],
  consumer: string,
  ttlMs: number,
): Promise<{ partition: number; token: number }[]> =>
  (
    await db.query<{ partition: number; token: number }>(
      `INSERT INTO partition_leases (partition, owner, token, expires_at, acquired_at)
       SELECT p, $2, 1, clock_timestamp() + $3 * interval '1 millisecond', clock_timestamp()
         FROM unnest($1::int[]) AS p
       ON CONFLICT (partition) DO UPDATE
         SET owner = excluded.owner, token = partition_leases.token + 1,
             expires_at = excluded.expires_at, acquired_at = excluded.acquired_at
         WHERE partition_leases.expires_at < clock_timestamp() OR partition_leases.owner IS NULL
       RETURNING partition, token`,
      [partitions, consumer, ttlMs],
    )
  ).rows;

/**
 * Renews every one of `leases` that is still its holder's; answers the partitions renewed. In a
 * transaction it row-locks them until it ends: a taker's UPDATE waits for the commit.
 */
export const renewLeases = async (
  db: Queryable,
  leases: readonly Lease[],
  ttlMs: number,
): Promise<number[]> =>
  (
    await db.query<{ partition: number }>(
      `UPDATE partition_leases l SET expires_at = clock_timestamp() + $4 * interval '1 millisecond'
         FROM unnest($1::int[], $2::text[], $3::bigint[]) AS held(partition, owner, token)
        WHERE l.partition = held.partition AND l.owner = held.owner AND l.token = held.token
          AND l.expires_at > clock_timestamp()
       RETURNING l.partition`,
      [...leasesParams(leases), ttlMs],
    )
  ).rows.map((row) => row.partition);

/**
 * Renews every one of `leases` inside the caller's transaction, row-locking them until it ends, so
 * what the transaction writes is written under them. False when any has lapsed or was taken.
 */
export const renewLeasesIn = async (
  db: Queryable,
  leases: readonly Lease[],
  ttlMs: number,
): Promise<boolean> => (await renewLeases(db, leases, ttlMs)).length === leases.length;

export const releaseLease = async (db: Queryable, lease: Lease) => {
  await db.query(
    `UPDATE partition_leases SET owner = NULL, expires_at = '-infinity'
      WHERE partition = $1 AND owner = $2 AND token = $3`,
    [lease.partition, lease.consumer, lease.token],
  );
};

/**
 * The fencing check, run last inside the applying transaction (see writeBatch): one row for each
 * of `leases` that is current, share-locked so that a taker's UPDATE of a lease waits for the
 * checking transaction to end. Its parameters are `$first` (partitions), `$first + 1` (owners)
 * and `$first + 2` (tokens), as arrays, so it can sit inside a larger statement.
 */
export const leasesHeldSql = (first: number) =>
  `SELECT l.partition FROM partition_leases l
     JOIN unnest($${first}::int[], $${first + 1}::text[], $${first + 2}::bigint[])
          AS held(partition, owner, token)
       ON l.partition = held.partition AND l.owner = held.owner AND l.token = held.token
    WHERE l.expires_at > clock_timestamp()
    FOR SHARE OF l`;

export const leasesParams = (leases: readonly Lease[]) => [
  leases.map((l) => l.partition),
  leases.map((l) => l.consumer),
  leases.map((l) => l.token),
];

/** Who holds a partition's lease, and whether it is still live by the database's clock. */
export type LeaseHolding = {
  partition: number;
  owner: string | null;
  live: boolean;
  /** Whole seconds since it expired; null while live, and for a lease given back. */
  expiredSeconds: number | null;
};

export const leaseHoldings = async (db: Queryable): Promise<LeaseHolding[]> =>
  (
    await db.query<LeaseHolding>(
      `SELECT partition, owner, expires_at > clock_timestamp() AS live,
              CASE WHEN expires_at > clock_timestamp() OR expires_at = '-infinity' THEN NULL
                   ELSE floor(extract(epoch FROM clock_timestamp() - expires_at))::int END
                AS "expiredSeconds"
         FROM partition_leases ORDER BY partition`,
    )
  ).rows;
