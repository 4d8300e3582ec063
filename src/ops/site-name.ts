import { randomUUID } from 'node:crypto';
import type { Redis } from 'ioredis';
import { isOutOfMemory, writeRefusal } from '../log/capacity.ts';
import { logIdKey, siteNameKey } from '../log/keys.ts';
import type { Logger } from '../observability/logger.ts';

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
  const recorded = await recordOnce(redis, siteNameKey(namespace), site, 'site name', logger);
  if (recorded !== undefined && recorded !== site) {
    throw new SiteNameError(
      `OUTPOST_SITE is "${site}", but this log is served as site "${recorded}": start every process of the site with OUTPOST_SITE=${recorded} (left unset, it is the host's name, which differs on a second host)`,
    );
  }
};

/**
 * The log's id, recorded beside it at its first start. The check above cannot see a second log
 * run under the same site name (an env file copied to another site, with its own Redis): each
 * records the name for itself. The processes of both meet in the site's roster in the main
 * database, where this id tells them apart. Undefined while Redis refuses writes and no start
 * has recorded one.
 */
export const recordLogId = async (
  redis: Redis,
  namespace: string,
  logger: Logger,
): Promise<string | undefined> => {
  return recordOnce(redis, logIdKey(namespace), randomUUID(), 'log id', logger);
};

/**
 * Sets `key` to `value` unless it holds one, and answers the value it holds now. While Redis
 * refuses writes it is only read: undefined when none was recorded before.
 */
const recordOnce = async (
  redis: Redis,
  key: string,
  value: string,
  what: string,
  logger: Logger,
): Promise<string | undefined> => {
  const refused = Symbol('refused');
  const recorded = (await redis.call('SET', key, value, 'NX', 'GET').catch((err: unknown) => {
    if (!isOutOfMemory(err) && writeRefusal(err) === undefined) {
      throw err;
    }
    logger.warn(`cannot record the ${what} while Redis refuses writes`);
    return refused;
  })) as string | null | typeof refused;
  if (recorded === refused) {
    return (await redis.get(key)) ?? undefined;
  }
  return recorded ?? value;
};
