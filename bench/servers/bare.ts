import { serve } from '@hono/node-server';
import { Hono } from 'hono';

/** Ceiling (a): the same JSON parsed by Hono and answered 201, nothing else. */
const app = new Hono();
app.post('/executed_obs_units/start', async (c) => {
  const body = await c.req.json<{ obs_unit_id: string }>();
  return c.json({ id: body.obs_unit_id, status: 'running' }, 201);
});
const server = serve({ fetch: app.fetch, port: Number(process.env.PORT ?? 0) }, (info) => {
  process.stdout.write(`listening ${info.port}\n`);
});
process.on('SIGTERM', () => server.close(() => process.exit(0)));
