import type { Queryable } from '../client.ts';

/** Thrown inside an applying transaction whose process no longer holds the partition's lease. */
export class FencedError extends Error {
  constructor(partition: number, token: number) {
    super(`partition ${partition}: lease token ${token} is no longer current; refusing to commit`);
    this.name = 'FencedError';
  }
}

/**
 * A partition's lease is its site's: sites sharing one main database each have their own log and
 * their own partitions 0..n-1, and a projector applies only its own site's.
 */
export type Lease = { site: string; partition: number; consumer: string; token: number };

/**
 * Beats for `instance` under its site and consumer name; answers the instance that beat last
 * before it under that name.
 */
export const heartbeat = async (
  db: Queryable,
  site: string,
  consumer: string,
  instance: string,
): Promise<string | null> => {
  const { rows } = await db.query<{ previous: string | null }>(
    `WITH previous AS (SELECT instance FROM projector_members WHERE site = $1 AND consumer = $2)
     INSERT INTO projector_members (site, consumer, heartbeat_at, instance)
     VALUES ($1, $2, clock_timestamp(), $3)
     ON CONFLICT (site, consumer) DO UPDATE
       SET heartbeat_at = excluded.heartbeat_at, instance = excluded.instance
     RETURNING (SELECT instance FROM previous)::text AS previous`,
    [site, consumer, instance],
  );
  return rows[0]?.previous ?? null;
};

/** The names of the site's projector processes that beat within the TTL: they share its partitions. */
export const liveMembers = async (
  db: Queryable,
  site: string,
  ttlMs: number,
): Promise<string[]> => {
  const { rows } = await db.query<{ consumer: string }>(
    `SELECT consumer FROM projector_members
      WHERE site = $1 AND heartbeat_at > clock_timestamp() - $2 * interval '1 millisecond'
      ORDER BY consumer`,
    [site, ttlMs],
  );
  return rows.map((row) => row.consumer);
};

/** A site name's claim by a Redis log, as one of its projectors met it. */
export type SiteClaim =
  | {
      /** The process's log holds the site, now renewed by it. */
      held: true;
      seenSecondsAgo: 0;
      barred: false;
      /** A projector of another log refused within the TTL, named for the holding site's tools. */
      refusedConsumer: string | null;
      /** The log this claim was taken from, its projectors all stopped: a replaced Redis's. */
      takenFrom: string | null;
      /** The renewal's time as the main database wrote it: a release names it (releaseSite). */
      renewedAt: string;
    }
  | {
      held: false;
      /** How long ago a projector of the holding log last renewed the claim. */
      seenSecondsAgo: number;
      /** At a site whose name no log takes by itself (takeover_barred): an operator frees it. */
      barred: boolean;
      refusedConsumer: null;
      takenFrom: null;
      renewedAt: null;
    };

/** A claim this log holds, as the statement that took or renewed it returned it. */
const heldClaim = (
  row: { refused_consumer: string | null; renewed_at: string },
  takenFrom: string | null,
): Extract<SiteClaim, { held: true }> => ({
  held: true,
  seenSecondsAgo: 0,
  barred: false,
  refusedConsumer: row.refused_consumer,
  takenFrom,
  renewedAt: row.renewed_at,
});

/** Seconds since a projector of the holding log last renewed the claim. */
const SEEN_SECONDS_AGO = 'floor(extract(epoch FROM clock_timestamp() - seen_at))::int';

/** The projector of another log refused within the TTL (the parameter `ttlParam`), or null. */
const refusedWithin = (ttlParam: string) =>
  `CASE WHEN refused_at > clock_timestamp() - ${ttlParam} * interval '1 millisecond'
        THEN refused_consumer END`;

/**
 * How long a holding log's projectors must have renewed nothing before a log first seen since
 * may take its name, in lease TTLs (the holder's or the claimer's, the longer): they renew every
 * third of one, so a round or two held up on a loaded machine does not look like a stop. A
 * graceful stop releases it at once.
 */
export const SITE_SILENCE_TTLS = 3;

/**
 * Claims the site for `log`, or renews its claim. Taken when free; when held by `previousLog`
 * (the id this process claimed with before, which its Redis lost and replaced); or when the
 * holder's projectors stopped (the last released it, or none renewed it for SITE_SILENCE_TTLS)
 * and `log` was not seen trying before their last sign (the last renewal, or the release). A
 * copy's log and a site's own log whose Redis was replaced look alike here but for that: the
 * copy is refused while the holder runs, and seen, so the holder's stop (a rebuild, a long
 * upgrade, a graceful restart) does not hand it the name; a log first seen after the holder
 * stopped takes it. Every log trying is recorded when first seen, by this same statement (its
 * own check does not see the row): recorded by a later one, a release in between came first.
 * Refused, the attempt is recorded so that the holding site's operators hear of it too.
 */
export const claimSite = async (
  db: Queryable,
  claim: { site: string; log: string; previousLog: string | null; consumer: string },
  ttlMs: number,
): Promise<SiteClaim> => {
  const { rows } = await db.query<{
    refused_consumer: string | null;
    taken_from: string | null;
    renewed_at: string;
  }>(
    // The holder as the statement began: two processes of one log taking the name together may
    // both name the log it was taken from.
    `WITH holder AS (SELECT log FROM site_logs WHERE site = $1),
          seen AS (INSERT INTO site_log_sightings (site, log, first_seen_at)
                   VALUES ($1, $2, clock_timestamp()) ON CONFLICT DO NOTHING)
     INSERT INTO site_logs AS s (site, log, seen_at, ttl_ms) VALUES ($1, $2, clock_timestamp(), $4)
     ON CONFLICT (site) DO UPDATE SET log = excluded.log, seen_at = excluded.seen_at,
       ttl_ms = excluded.ttl_ms, released_at = NULL,
       refused_consumer = CASE WHEN s.log = excluded.log THEN s.refused_consumer END,
       refused_at = CASE WHEN s.log = excluded.log THEN s.refused_at END
       WHERE s.log IN (excluded.log, $3)
          OR (NOT s.takeover_barred
              AND (s.released_at IS NOT NULL
                   OR s.seen_at < clock_timestamp()
                                  - $5 * greatest(s.ttl_ms, $4) * interval '1 millisecond')
              AND NOT EXISTS (SELECT 1 FROM site_log_sightings g
                               WHERE g.site = $1 AND g.log = $2
                                 AND g.first_seen_at <= greatest(s.seen_at, s.released_at)))
     RETURNING ${refusedWithin('$4')} AS refused_consumer,
               (SELECT log FROM holder WHERE log NOT IN ($2, coalesce($3, ''))) AS taken_from,
               s.seen_at::text AS renewed_at`,
    [claim.site, claim.log, claim.previousLog, ttlMs, SITE_SILENCE_TTLS],
  );
  const held = rows[0];
  if (held !== undefined) {
    return heldClaim(held, held.taken_from);
  }
  const refused = await db.query<{ seen_seconds_ago: number; takeover_barred: boolean }>(
    `UPDATE site_logs SET refused_consumer = $2, refused_at = clock_timestamp() WHERE site = $1
     RETURNING ${SEEN_SECONDS_AGO} AS seen_seconds_ago, takeover_barred`,
    [claim.site, claim.consumer],
  );
  return {
    held: false,
    seenSecondsAgo: refused.rows[0]?.seen_seconds_ago ?? 0,
    barred: refused.rows[0]?.takeover_barred ?? false,
    refusedConsumer: null,
    takenFrom: null,
    renewedAt: null,
  };
};

/**
 * Renews the site's claim by `log` if `log` holds it, taking and refusing nothing: for a process
 * that holds it and could not read its log's id this time. Undefined when another log holds it.
 */
export const renewSiteClaim = async (
  db: Queryable,
  claim: { site: string; log: string },
  ttlMs: number,
): Promise<Extract<SiteClaim, { held: true }> | undefined> => {
  const { rows } = await db.query<{ refused_consumer: string | null; renewed_at: string }>(
    `UPDATE site_logs SET seen_at = clock_timestamp(), ttl_ms = $3, released_at = NULL
      WHERE site = $1 AND log = $2
     RETURNING ${refusedWithin('$3')} AS refused_consumer, seen_at::text AS renewed_at`,
    [claim.site, claim.log, ttlMs],
  );
  const renewed = rows[0];
  return renewed && heldClaim(renewed, null);
};

/**
 * Releases the site's claim by `log` when this process's renewal (`renewedAt`) was the last and
 * no projector of the site beats any longer (this one has left the roster): a log first seen
 * after it may take the name at once, where a silence would have had it wait SITE_SILENCE_TTLS.
 * A process of the log starting meanwhile has renewed since, or beaten, and keeps it.
 */
export const releaseSite = async (
  db: Queryable,
  release: { site: string; log: string; renewedAt: string },
  ttlMs: number,
) => {
  await db.query(
    `UPDATE site_logs SET released_at = clock_timestamp()
      WHERE site = $1 AND log = $2 AND seen_at = $3::timestamptz
        AND NOT EXISTS (SELECT 1 FROM projector_members
                         WHERE site = $1
                           AND heartbeat_at > clock_timestamp() - $4 * interval '1 millisecond')`,
    [release.site, release.log, release.renewedAt, ttlMs],
  );
};

/**
 * When `log`, which holds the site's name, was first seen applying the site, if that lies within
 * `withinMs` and another log of the site was seen before it (and when that one was first seen);
 * undefined otherwise.
 */
export const logFollowedAnother = async (
  db: Queryable,
  site: string,
  log: string,
  withinMs: number,
): Promise<{ beganAt: Date; earlierSeenAt: Date } | undefined> => {
  const { rows } = await db.query<{ began_at: Date; earlier_seen_at: Date | null }>(
    `SELECT ours.first_seen_at AS began_at,
            (SELECT max(e.first_seen_at) FROM site_log_sightings e
              WHERE e.site = $1 AND e.log <> $2 AND e.first_seen_at < ours.first_seen_at)
              AS earlier_seen_at
       FROM site_log_sightings ours
      WHERE ours.site = $1 AND ours.log = $2
        AND ours.first_seen_at > clock_timestamp() - $3 * interval '1 millisecond'
        -- Holding the name: a log refused it is a second site under the name, said apart.
        AND EXISTS (SELECT 1 FROM site_logs l WHERE l.site = $1 AND l.log = $2)`,
    [site, log, withinMs],
  );
  const row = rows[0];
  return row?.earlier_seen_at
    ? { beganAt: row.began_at, earlierSeenAt: row.earlier_seen_at }
    : undefined;
};

/** The site's claim as the operator's tools read it, without renewing it. */
export const siteClaimOf = async (
  db: Queryable,
  site: string,
  ttlMs: number,
): Promise<
  | { log: string; seenSecondsAgo: number; barred: boolean; refusedConsumer: string | null }
  | undefined
> => {
  const { rows } = await db.query<{
    log: string;
    seen_seconds_ago: number;
    takeover_barred: boolean;
    refused_consumer: string | null;
  }>(
    `SELECT log, ${SEEN_SECONDS_AGO} AS seen_seconds_ago, takeover_barred,
            ${refusedWithin('$2')} AS refused_consumer
       FROM site_logs WHERE site = $1`,
    [site, ttlMs],
  );
  const row = rows[0];
  return (
    row && {
      log: row.log,
      seenSecondsAgo: row.seen_seconds_ago,
      barred: row.takeover_barred,
      refusedConsumer: row.refused_consumer,
    }
  );
};

/** Leaves the roster, if this process's beat is the one there (not a namesake's since). */
export const leaveMembers = async (
  db: Queryable,
  site: string,
  consumer: string,
  instance: string,
) => {
  await db.query(
    'DELETE FROM projector_members WHERE site = $1 AND consumer = $2 AND instance = $3',
    [site, consumer, instance],
  );
};

/**
 * Takes a partition of `site` that is free or whose lease expired, with a new token. The lease
 * pool's short statement timeout keeps a taker from hanging behind a stale owner frozen inside
 * its final fencing check; the next round simply tries again.
 */
export const acquireLease = async (
  db: Queryable,
  site: string,
  partition: number,
  consumer: string,
  ttlMs: number,
): Promise<number | undefined> =>
  (await acquireLeases(db, [{ site, partition }], consumer, ttlMs))[0]?.token;

/**
 * `acquireLease` for several partitions, of one site or several, in one statement: those it took,
 * with their tokens. Site '' stands for every site: a live lease there keeps its partition number
 * from all of them. An earlier build's leases are there (before migration 0012 a partition's
 * lease was every site's), and so are a rebuild's, which rewrites every site's rows. A lease taken
 * gets a token above every token its partition number had (two sites taking one number at the
 * same moment may tie): an earlier build's renewal and fencing check match owner and token
 * without the site, and must not match another site's lease.
 */
export const acquireLeases = async (
  db: Queryable,
  wanted: readonly { site: string; partition: number }[],
  consumer: string,
  ttlMs: number,
): Promise<{ site: string; partition: number; token: number }[]> =>
  (
    await db.query<{ site: string; partition: number; token: number }>(
      `INSERT INTO partition_leases AS l (site, partition, owner, token, expires_at, acquired_at)
       SELECT w.site, w.partition, $3,
              COALESCE((SELECT max(x.token) FROM partition_leases x
                         WHERE x.partition = w.partition), 0) + 1,
              clock_timestamp() + $4 * interval '1 millisecond', clock_timestamp()
         FROM unnest($1::text[], $2::int[]) AS w(site, partition)
        WHERE NOT EXISTS (SELECT 1 FROM partition_leases legacy
                           WHERE legacy.site = '' AND legacy.partition = w.partition
                             AND legacy.site <> w.site AND legacy.owner IS NOT NULL
                             AND legacy.expires_at > clock_timestamp())
       ON CONFLICT (site, partition) DO UPDATE
         SET owner = excluded.owner, token = GREATEST(l.token + 1, excluded.token),
             expires_at = excluded.expires_at, acquired_at = excluded.acquired_at
         WHERE l.expires_at < clock_timestamp() OR l.owner IS NULL
       RETURNING l.site, l.partition, l.token`,
      [wanted.map((w) => w.site), wanted.map((w) => w.partition), consumer, ttlMs],
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
      `UPDATE partition_leases l SET expires_at = clock_timestamp() + $5 * interval '1 millisecond'
         FROM unnest($1::int[], $2::text[], $3::bigint[], $4::text[])
              AS held(partition, owner, token, site)
        WHERE l.site = held.site AND l.partition = held.partition AND l.owner = held.owner
          AND l.token = held.token AND l.expires_at > clock_timestamp()
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

/**
 * Gives `leases` back in one statement: one by one, a main database that stopped answering would
 * hold each for its own connect timeout, minutes before a rebuild's failure was said.
 */
export const releaseLeases = async (db: Queryable, leases: readonly Lease[]) => {
  if (leases.length === 0) {
    return;
  }
  await db.query(
    `UPDATE partition_leases l SET owner = NULL, expires_at = '-infinity'
       FROM unnest($1::text[], $2::int[], $3::text[], $4::bigint[]) AS held(site, partition, owner, token)
      WHERE l.site = held.site AND l.partition = held.partition AND l.owner = held.owner
        AND l.token = held.token`,
    [
      leases.map((l) => l.site),
      leases.map((l) => l.partition),
      leases.map((l) => l.consumer),
      leases.map((l) => l.token),
    ],
  );
};

/**
 * The fencing check, run last inside the applying transaction (see writeBatch): one row for each
 * of `leases` that is current, share-locked so that a taker's UPDATE of a lease waits for the
 * checking transaction to end. Its parameters are `$first` (partitions), `$first + 1` (owners),
 * `$first + 2` (tokens) and `$first + 3` (sites), as arrays, so it can sit inside a larger
 * statement.
 */
export const leasesHeldSql = (first: number) =>
  `SELECT l.partition FROM partition_leases l
     JOIN unnest($${first}::int[], $${first + 1}::text[], $${first + 2}::bigint[],
                 $${first + 3}::text[]) AS held(partition, owner, token, site)
       ON l.site = held.site AND l.partition = held.partition AND l.owner = held.owner
      AND l.token = held.token
    WHERE l.expires_at > clock_timestamp()
    FOR SHARE OF l`;

export const leasesParams = (leases: readonly Lease[]) => [
  leases.map((l) => l.partition),
  leases.map((l) => l.consumer),
  leases.map((l) => l.token),
  leases.map((l) => l.site),
];

/** Who holds a partition's lease, and whether it is still live by the database's clock. */
export type LeaseHolding = {
  site: string;
  partition: number;
  owner: string | null;
  live: boolean;
  /** Whole seconds since it expired; null while live, and for a lease given back. */
  expiredSeconds: number | null;
};

/**
 * Every site's leases; or, for `site`, who holds each of its partitions: its own lease, or a live
 * one of every site's (a rebuild's, an earlier build's) that keeps the partition from it.
 */
export const leaseHoldings = async (db: Queryable, site?: string): Promise<LeaseHolding[]> =>
  (
    await db.query<LeaseHolding>(
      `SELECT DISTINCT ON (site_of, partition) site, partition, owner, live, "expiredSeconds"
         FROM (SELECT site, partition, owner, expires_at > clock_timestamp() AS live,
                      CASE WHEN expires_at > clock_timestamp() OR expires_at = '-infinity'
                           THEN NULL
                           ELSE floor(extract(epoch FROM clock_timestamp() - expires_at))::int
                      END AS "expiredSeconds",
                      CASE WHEN $1::text IS NULL THEN site ELSE $1 END AS site_of
                 FROM partition_leases
                WHERE $1::text IS NULL OR site = $1 OR site = '') AS l
        WHERE $1::text IS NULL OR site = $1 OR live
        ORDER BY site_of, partition, live DESC, site = $1 DESC`,
      [site ?? null],
    )
  ).rows;
