import type { AppDeps } from '../context.ts';
import { ApiError } from '../errors.ts';
import type { App } from './shared.ts';

export const registerOpsRoutes = (app: App, deps: AppDeps) => {
  app.get('/health', async (c) => {
    const health = await deps.status.health();
    // 503 only when writes cannot be accepted (Redis away, full, unable to save, or the site's
    // partition count no longer this process's), which is what `unhealthy` says: a site cut off
    // from its main database is degraded, not down, since buffering writes through such a cut is
    // what Outpost is for.
    if (health.redis !== 'connected') {
      return c.json(health, 503, { 'Retry-After': '1' });
    }
    // Only a process that takes writes: a projector answering 503 would invite an orchestrator
    // to restart the very process that drains the log.
    if (health.status === 'unhealthy' && deps.capacity) {
      return c.json(health, 503, { 'Retry-After': '5' });
    }
    return c.json(health, 200);
  });

  app.get('/buffer-stats', async (c) => {
    try {
      return c.json(await deps.status.bufferStats());
    } catch (err) {
      throw new ApiError('log_unavailable', 'the local log cannot be read right now', undefined, {
        cause: err,
        retryAfterSeconds: 1,
      });
    }
  });

  app.get('/metrics', async (c) => {
    await deps.status.refreshGauges();
    const body = await deps.metrics.registry.metrics();
    return c.body(body, 200, { 'Content-Type': deps.metrics.registry.contentType });
  });
};
