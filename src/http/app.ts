import { randomUUID } from 'node:crypto';
import { Hono } from 'hono';
import { partsOf } from '../reason.ts';
import { redisRefusal, refuseWhenCountMoved } from './accept.ts';
import { requireScope } from './auth.ts';
import { type AppDeps, type HonoEnv, requestLogger } from './context.ts';
import { ApiError, errorBody } from './errors.ts';
import { logIsAway } from './outages.ts';
import { refusalLog } from './refusal-log.ts';
import { registerAdminRoutes } from './routes/admin.ts';
import { registerDocsRoutes } from './routes/docs.ts';
import { registerEventRoutes } from './routes/events.ts';
import { registerUnitRoutes } from './routes/executed-obs-units.ts';
import { registerConfigurationRoutes } from './routes/instrument-configurations.ts';
import { registerLiveRoutes } from './routes/live.ts';
import { registerOpsRoutes } from './routes/ops.ts';
import { registerFileRoutes } from './routes/raw-data-files.ts';
import { registerPackageRoutes } from './routes/raw-data-packages.ts';

const REQUEST_ID = /^[\w.:-]{1,128}$/;

const withRequestId = (body: ReturnType<typeof errorBody>, requestId: string) => ({
  error: { ...body.error, requestId },
});

/** Request ids, request logging and problem bodies: what every Outpost HTTP server shares. */
const baseApp = (deps: Pick<AppDeps, 'logger' | 'eventLog'>) => {
  const app = new Hono<HonoEnv>();
  const refusals = refusalLog();

  app.use('*', async (c, next) => {
    const incoming = c.req.header('x-request-id');
    const requestId = incoming && REQUEST_ID.test(incoming) ? incoming : randomUUID();
    c.set('requestId', requestId);
    c.set('baseLogger', deps.logger);
    const started = performance.now();
    await next();
    if (!c.get('requestIdSent')) {
      // Set on the response's own headers: `c.header` on a finished response would rebuild it
      // around a stream of its body, which costs a read as much as its two round trips.
      c.res.headers.set('x-request-id', requestId);
    }
    if (deps.logger.isLevelEnabled('debug')) {
      requestLogger(c).debug(
        {
          method: c.req.method,
          path: c.req.path,
          status: c.res.status,
          ms: performance.now() - started,
        },
        'request',
      );
    }
  });

  app.onError((thrown, c) => {
    const requestId = c.get('requestId');
    // Met part-way (a replay that had given events back): answered for the error met, saying
    // what was done before it.
    const { met, done } = partsOf(thrown);
    // Redis's own refusal of a write, met anywhere (a write, a replay, a retry): the log is full or
    // cannot save, not broken.
    const err = (!(met instanceof ApiError) && redisRefusal(met)) || met;
    if (err instanceof ApiError) {
      if (err.status === 503) {
        // The log or replica away, or the log full: degraded and self-healing.
        const leftOut = refusals(err.code);
        if (leftOut !== undefined) {
          requestLogger(c).warn(
            { err, cause: err.cause, refusedSinceLastLine: leftOut },
            'request failed',
          );
        }
      } else if (err.status >= 500) {
        requestLogger(c).error({ err, cause: err.cause }, 'request failed');
      }
      if (err.retryAfterSeconds !== undefined) {
        c.header('Retry-After', String(err.retryAfterSeconds));
      }
      return c.json(
        withRequestId(errorBody(err.code, `${err.message}${done}`, err.details), requestId),
        err.status,
      );
    }
    if (logIsAway(deps, err)) {
      const leftOut = refusals('log_unavailable');
      if (leftOut !== undefined) {
        requestLogger(c).warn(
          { err, refusedSinceLastLine: leftOut },
          'request failed: the local log is unavailable',
        );
      }
      c.header('Retry-After', '1');
      return c.json(
        withRequestId(
          errorBody('log_unavailable', `the local log cannot be reached right now${done}`),
          requestId,
        ),
        503,
      );
    }
    requestLogger(c).error({ err: thrown }, 'unexpected error');
    return c.json(withRequestId(errorBody('internal', `internal error${done}`), requestId), 500);
  });

  app.notFound((c) =>
    c.json(
      withRequestId(
        errorBody('not_found', `no route for ${c.req.method} ${c.req.path}`),
        c.get('requestId'),
      ),
      404,
    ),
  );
  return app;
};

/**
 * What a process whose partition count is no longer the site's still answers: its probes, which
 * say so, and the API's description. Every read and write finds an aggregate's events by its
 * partition, so with another count a read would miss the events in flight (ops/partition-count.ts).
 */
const SERVED_WHATEVER_THE_COUNT = new Set([
  '/health',
  '/buffer-stats',
  '/metrics',
  '/openapi.json',
  '/docs',
]);

/** The HTTP API; it holds no resources, so tests call `app.request(...)` in-process. */
export const createApp = (deps: AppDeps) => {
  const app = baseApp(deps);
  registerAdminRoutes(app, deps);
  app.use(
    '*',
    requireScope(() => deps.tokens?.current),
  );
  app.use('*', async (c, next) => {
    if (!SERVED_WHATEVER_THE_COUNT.has(c.req.path)) {
      refuseWhenCountMoved(deps);
    }
    await next();
  });
  registerUnitRoutes(app, deps);
  registerFileRoutes(app, deps);
  registerPackageRoutes(app, deps);
  registerConfigurationRoutes(app, deps);
  registerLiveRoutes(app, deps);
  registerEventRoutes(app, deps);
  registerOpsRoutes(app, deps);
  registerDocsRoutes(app);
  return app;
};

/**
 * What a projector-only process serves: /health, /buffer-stats and /metrics, so probes and
 * Prometheus see its partitions, breaker and batches. No domain or admin routes: writes and
 * operator actions go to the API processes.
 */
export const createOperationsApp = (deps: AppDeps) => {
  const app = baseApp(deps);
  registerOpsRoutes(app, deps);
  return app;
};

export type App = ReturnType<typeof createApp>;
