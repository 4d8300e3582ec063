import { randomUUID } from 'node:crypto';
import type { Redis } from 'ioredis';
import type { Config } from '../config.ts';
import type { Queryable } from '../db/client.ts';
import { liveMembers, logFollowedAnother, siteClaimOf } from '../db/queries/leases.ts';
import { isOutOfMemory, writeRefusal } from '../log/capacity.ts';
import { logIdKey, siteNameKey } from '../log/keys.ts';
import type { Logger } from '../observability/logger.ts';
import { anotherLogHolds, anotherLogRefused } from './lease-report.ts';

/** Thrown when a process's OUTPOST_SITE is not the name its log is served under. */
export class SiteNameError extends Error {
  override name = 'SiteNameError';
}

/**
 * The processes of one log share its partitions through leases keyed by site name, and stamp its
 * events with that name. A process serving the log under another (OUTPOST_SITE left to its
 * default, the host name, on a second host) would lease every partition beside them: two writers
 * to each. So the first start records the name beside the log, and a process with another is
 * refused. While Redis refuses writes the name is only compared, not recorded.
 */
export const checkSiteName = async (
  redis: Redis,
  namespace: string,
  site: string,
  logger: Logger,
): Promise<void> => {
  const key = siteNameKey(namespace);
  const recorded = (await redis.call('SET', key, site, 'NX', 'GET').catch(async (err: unknown) => {
    if (!isOutOfMemory(err) && writeRefusal(err) === undefined) {
      throw err;
    }
    logger.warn('cannot record the site name while Redis refuses writes');
    return redis.get(key);
  })) as string | null;
  if (recorded !== null && recorded !== site) {
    throw new SiteNameError(
      `OUTPOST_SITE is "${site}", but this log is served as site "${recorded}": start every process of the site with OUTPOST_SITE=${recorded} (left unset, it is the host's name, which differs on a second host)`,
    );
  }
};

/** Past maxmemory too: one small key, without which the projector takes no partition. */
const SET_ONCE = "#!lua flags=allow-oom\nreturn redis.call('SET', KEYS[1], ARGV[1], 'NX', 'GET')";

/**
 * The log's own id, recorded beside it by the first projector to ask (answers the recorded one).
 * The check above cannot see a second site given this site's name: each log records the name
 * for itself. Their projectors meet in the main database, where this id says which log a site
 * name is applied from (claimSite). Asked on every lease round, so processes of a Redis that lost
 * its data agree on the new id it gets; and the site's name is recorded again then, since such a
 * Redis lost it too, and a process or shell with another OUTPOST_SITE would go unrefused until
 * one of the site's processes restarted (drill 163).
 */
export const recordLogId = async (
  redis: Redis,
  namespace: string,
  site: string,
): Promise<string> => {
  const ours = randomUUID();
  // Two scripts of one key each: the keys need not share a slot.
  const [recorded] = (await Promise.all([
    redis.eval(SET_ONCE, 1, logIdKey(namespace), ours),
    redis.eval(SET_ONCE, 1, siteNameKey(namespace), site),
  ])) as [string | null, unknown];
  return recorded ?? ours;
};

/**
 * What the main database's claim on the site name says of this log, for operators: another log
 * holds the name (this site's events wait unapplied: two sites under one name), or this log holds
 * it and another one's projector was refused. Undefined when all is well, or before the name is
 * claimed or this log's id recorded; rejects when Redis or the main database does not answer.
 */
export const siteClaimNote = async ({
  redis,
  main,
  config: { site, namespace, claimIdleMs },
}: {
  redis: Redis;
  main: Queryable;
  config: Pick<Config, 'site' | 'namespace' | 'claimIdleMs'>;
}): Promise<{ heldByAnotherLog: boolean; line: string } | undefined> => {
  const [log, claim] = await Promise.all([
    redis.get(logIdKey(namespace)),
    siteClaimOf(main, site, claimIdleMs),
  ]);
  if (log === null || claim === undefined) {
    return undefined;
  }
  if (claim.log !== log) {
    const members = await liveMembers(main, site, claimIdleMs).catch(() => []);
    return {
      heldByAnotherLog: true,
      line: anotherLogHolds(site, members, claim.seenSecondsAgo, claim.barred),
    };
  }
  return claim.refusedConsumer === null
    ? undefined
    : { heldByAnotherLog: false, line: anotherLogRefused(site, claim.refusedConsumer) };
};

/**
 * That this Redis log began lately after another of the site (Redis restarted without its data,
 * or replaced by an empty one), within the stream retention: what the earlier log held and had
 * not applied is not in this one, and nothing else says so once the new log runs (drill 163:
 * /health healthy, `pending` "nothing pending"). Undefined otherwise.
 */
export const logRestartNote = async ({
  redis,
  main,
  config: { site, namespace, streamRetentionMs },
}: {
  redis: Redis;
  main: Queryable;
  config: Pick<Config, 'site' | 'namespace' | 'streamRetentionMs'>;
}): Promise<{ began_at: string; earlier_log_seen_at: string; line: string } | undefined> => {
  const log = await redis.get(logIdKey(namespace));
  const followed =
    log === null ? undefined : await logFollowedAnother(main, site, log, streamRetentionMs);
  if (followed === undefined) {
    return undefined;
  }
  const beganAt = followed.beganAt.toISOString();
  return {
    began_at: beganAt,
    earlier_log_seen_at: followed.earlierSeenAt.toISOString(),
    line: `this Redis log began at ${beganAt}, after another log of site ${site} (seen from ${followed.earlierSeenAt.toISOString()}): Redis restarted without its data or was replaced by an empty one, and events the earlier log held and had not applied are not in this one (runbook: Redis back without its data)`,
  };
};
