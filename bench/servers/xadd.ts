import { serve } from '@hono/node-server';
import { Hono } from 'hono';
import { Redis } from 'ioredis';

/** Ceiling (b): (a) plus one XADD on the same Redis with AOF always. */
const redis = new Redis(process.env.REDIS_URL as string);
const app = new Hono();
app.post('/executed_obs_units/start', async (c) => {
  const body = await c.req.json<{ obs_unit_id: string }>();
  const id = await redis.xadd('bench:xadd', '*', 'data', JSON.stringify(body));
  return c.json({ id, status: 'running' }, 201);
});
const server = serve({ fetch: app.fetch, port: Number(process.env.PORT ?? 0) }, (info) => {
  process.stdout.write(`listening ${info.port}\n`);
});
process.on('SIGTERM', () => server.close(() => process.exit(0)));
