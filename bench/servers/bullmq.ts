import { randomUUID } from 'node:crypto';
import { serve } from '@hono/node-server';
import { Queue } from 'bullmq';
import { Hono } from 'hono';
import { Redis } from 'ioredis';

/**
 * The peer a user might pick instead: an HTTP handler that enqueues a BullMQ job per write. Its
 * docs recommend removeOnComplete/removeOnFail to keep Redis bounded; the producer connection
 * may keep the default retry settings.
 */
const connection = new Redis(process.env.REDIS_URL as string);
const queue = new Queue('bench', { connection });
const app = new Hono();
app.post('/executed_obs_units/start', async (c) => {
  const body = await c.req.json<Record<string, unknown>>();
  const id = randomUUID();
  await queue.add(
    'start',
    { id, body, enqueued_at: Date.now() },
    { removeOnComplete: true, removeOnFail: 1000 },
  );
  return c.json({ id, status: 'running' }, 201);
});
const server = serve({ fetch: app.fetch, port: Number(process.env.PORT ?? 0) }, (info) => {
  process.stdout.write(`listening ${info.port}\n`);
});
process.on('SIGTERM', () => server.close(() => process.exit(0)));
