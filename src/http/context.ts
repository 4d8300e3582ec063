import type pg from 'pg';
import type { Config } from '../config.ts';
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
  now?: () => Date;
};

export type HonoEnv = { Variables: { requestId: string; logger: Logger } };
