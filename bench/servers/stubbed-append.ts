import { serve } from '@hono/node-server';
import { loadConfig } from '../../src/config.ts';
import { createApp } from '../../src/http/app.ts';
import type { AppDeps } from '../../src/http/context.ts';
import type { AppendRequest, AppendResult } from '../../src/log/event-log.ts';
import { createLogger } from '../../src/observability/logger.ts';
import { createMetrics } from '../../src/observability/metrics.ts';

/**
 * Outpost's HTTP app with the append replaced by a no-op: what the write path costs before Redis.
 * Nothing else is reached by `POST /executed_obs_units/start` without an instrument configuration.
 */
const config = loadConfig({
  MAIN_DATABASE_URL: 'postgres://unused/unused',
  REPLICA_DATABASE_URL: 'postgres://unused/unused',
  REDIS_URL: 'redis://unused',
  OUTPOST_PARTITIONS: process.env.OUTPOST_PARTITIONS ?? '8',
});
const eventLog = {
  append: async (request: AppendRequest): Promise<AppendResult> => ({
    kind: 'appended',
    entryIds: request.events.map(() => '0-1'),
  }),
};
const unused = {} as never;
const deps: AppDeps = {
  config,
  eventLog: eventLog as unknown as AppDeps['eventLog'],
  deadLetters: unused,
  main: unused,
  replica: unused,
  replicaLink: unused,
  metrics: createMetrics(),
  logger: createLogger('info'),
  status: unused,
};
const server = serve(
  { fetch: createApp(deps).fetch, port: Number(process.env.PORT ?? 0) },
  (info) => {
    process.stdout.write(`listening ${info.port}\n`);
  },
);
process.on('SIGTERM', () => server.close(() => process.exit(0)));
