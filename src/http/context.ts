import type { Context } from 'hono';
import type pg from 'pg';
import type { TokenStore } from '../auth/token-store.ts';
import type { Config } from '../config.ts';
import type { LiveFeed } from '../live/live-feed.ts';
import type { LogCapacity } from '../log/capacity.ts';
import type { DeadLetters } from '../log/dead-letters.ts';
import type { EventLog } from '../log/event-log.ts';
import type { Logger } from '../observability/logger.ts';
import type { Metrics } from '../observability/metrics.ts';
import type { SiteListing } from '../ops/partition-count.ts';
import type { StatusSource } from '../ops/status.ts';
import type { ReplicaLink } from './replica-link.ts';

/** Everything the HTTP layer uses, passed in: the app holds no resources of its own. */
export type AppDeps = {
  config: Config;
  eventLog: EventLog;
  /** The log's memory against its limit: writes that would take the drain's room are refused. */
  capacity?: LogCapacity;
  deadLetters: DeadLetters;
  main: pg.Pool;
  replica: pg.Pool;
  /** The API's calls to the replica, refused at once while it does not answer in time. */
  replicaLink: ReplicaLink;
  metrics: Metrics;
  logger: Logger;
  status: StatusSource;
  /** Scoped API tokens; absent or unconfigured: the domain endpoints are open. */
  tokens?: TokenStore;
  /** The live feed that /events/live reads. */
  live?: LiveFeed;
  /** This process's listing under its partition count: writes wait while the count is not the site's. */
  partitionCount?: Pick<SiteListing, 'countError'>;
  now?: () => Date;
};

export type HonoEnv = {
  Variables: {
    requestId: string;
    /** The process's logger; requestLogger binds it to the request on first use. */
    baseLogger: Logger;
    logger?: Logger;
    /** Set by a handler whose response already carries the x-request-id header. */
    requestIdSent?: true;
    /** Name of the API token the request was authorized with; stamped on the events it writes. */
    writer?: string;
  };
};

/** The request's logger, bound to its request id. Made on first use: most requests log nothing. */
export const requestLogger = (c: Context): Logger => {
  let logger = c.get('logger') as Logger | undefined;
  if (logger === undefined) {
    logger = (c.get('baseLogger') as Logger).child({ requestId: c.get('requestId') });
    c.set('logger', logger);
  }
  return logger;
};

/**
 * A JSON response with its headers as a plain object, so @hono/node-server writes it on its fast
 * path; a header set through `c.header` turns every response into a `Headers` object first.
 */
export const fastJson = (c: Context, body: unknown, status: number): Response => {
  c.set('requestIdSent', true);
  return new Response(JSON.stringify(body), {
    status,
    headers: { 'content-type': 'application/json', 'x-request-id': c.get('requestId') as string },
  });
};
