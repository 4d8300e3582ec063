import type pg from 'pg';
import type { TokenStore } from '../auth/token-store.ts';
import type { Config } from '../config.ts';
import type { LiveFeed } from '../live/live-feed.ts';
import type { DeadLetters } from '../log/dead-letters.ts';
import type { EventLog } from '../log/event-log.ts';
import type { Logger } from '../observability/logger.ts';
import type { Metrics } from '../observability/metrics.ts';
import type { StatusSource } from '../ops/status.ts';

/** Everything the HTTP layer uses, passed in: the app holds no resources of its own. */
export type AppDeps = {
  config: Config;
  eventLog: EventLog;
  deadLetters: DeadLetters;
  main: pg.Pool;
  replica: pg.Pool;
  metrics: Metrics;
  logger: Logger;
  status: StatusSource;
  /** Scoped API tokens; absent or unconfigured: the domain endpoints are open. */
  tokens?: TokenStore;
  /** The live feed: accepted events are published to it; /events/live reads it. */
  live?: LiveFeed;
  now?: () => Date;
};

export type HonoEnv = {
  Variables: {
    requestId: string;
    logger: Logger;
    /** Name of the API token the request was authorized with; stamped on the events it writes. */
    writer?: string;
  };
};
