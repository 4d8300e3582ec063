import { Worker } from 'bullmq';
import { Redis } from 'ioredis';
import pg from 'pg';

/**
 * BullMQ worker doing the same work as Outpost's projector: one event row per job into the same
 * PostgreSQL, with the commit time recorded for the enqueue -> committed latency. Concurrency
 * equals Outpost's partition count; workers need maxRetriesPerRequest: null (BullMQ docs).
 */
const pool = new pg.Pool({ connectionString: process.env.DATABASE_URL, max: 8 });
const connection = new Redis(process.env.REDIS_URL as string, { maxRetriesPerRequest: null });
const worker = new Worker(
  'bench',
  async (job) => {
    const data = job.data as { id: string; body: unknown; enqueued_at: number };
    await pool.query(
      'INSERT INTO bullmq_events (id, data, enqueued_at, committed_at) VALUES ($1, $2, to_timestamp($3 / 1000.0), clock_timestamp())',
      [data.id, JSON.stringify(data.body), data.enqueued_at],
    );
  },
  { connection, concurrency: Number(process.env.CONCURRENCY ?? 8) },
);
worker.on('ready', () => process.stdout.write('listening 0\n'));
process.on('SIGTERM', () => {
  void worker
    .close()
    .then(() => pool.end())
    .then(() => process.exit(0));
});
