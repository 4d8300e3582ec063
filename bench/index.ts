import { mkdirSync, writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import pg from 'pg';
import { SERVICE_ENTRY } from '../src/bundle.ts';
import type { Envelope } from '../src/domain/events.ts';
import { newIdInPartition, partitionOf } from '../src/domain/ids.ts';
import { EventLog } from '../src/log/event-log.ts';
import { projectPath } from '../src/paths.ts';
import {
  startTestStack,
  stopOnSignal,
  TEMPLATE_DATABASE,
  withDatabase,
} from '../test/harness/services.ts';
import {
  backToBack,
  commandCosts,
  cpuMeter,
  histogramBuckets,
  histogramQuantile,
  latencies,
  load,
  maxOf,
  pacedLoad,
  percentile,
  round,
  type Server,
  sleep,
  startServer,
  until,
} from './lib.ts';
import { renderTable } from './report.ts';

const quick = process.argv.includes('--quick');
const onlyArg = process.argv.indexOf('--only');
/** `--only drain,ingest` runs a subset (for profiling); the results file is then not written. */
const only = onlyArg === -1 ? undefined : new Set((process.argv[onlyArg + 1] ?? '').split(','));
const want = (scenario: string) => only === undefined || only.has(scenario);
const PARTITIONS = 8;
/** The projector's batch size, and the raw ceiling's INSERT size, so both move together. */
const BATCH_SIZE = Number(process.env.BENCH_BATCH_SIZE ?? 500);
const DURATION = quick ? 2 : 10;
/** Four clients writing back to back: each write waits on its own append, not behind sixty others. */
const FEW_CONNECTIONS = 4;
const E2E_DURATION = quick ? 3 : 60;
const DRAIN_EVENTS = quick ? 10_000 : 200_000;
const MEMORY_EVENTS = quick ? 10_000 : 100_000;
const INTEGRITY_EVENTS = quick ? 50_000 : 1_000_000;
const BODY = JSON.stringify({
  obs_unit_id: 'bench-unit',
  instrument: 'nircam',
  metadata: { seeing: 0.6 },
});
const log = (text: string) => process.stderr.write(`bench: ${text}\n`);

type Site = { main: string; replica: string; redis: string; namespace: string };

const main = async () => {
  const stack = await startTestStack({ durablePostgres: true });
  const admin = new pg.Client({ connectionString: withDatabase(stack.mainUrl, 'postgres') });
  await admin.connect();
  const replicaAdmin = new pg.Client({
    connectionString: withDatabase(stack.replicaUrl, 'postgres'),
  });
  await replicaAdmin.connect();
  let sites = 0;
  const siteDatabases: string[] = [];
  /** A fresh migrated database and Redis namespace per scenario, like a new site. */
  const newSite = async (): Promise<Site> => {
    sites += 1;
    const database = `bench_${sites}`;
    siteDatabases.push(database);
    await admin.query(`CREATE DATABASE ${database} TEMPLATE ${TEMPLATE_DATABASE}`);
    const site = {
      main: withDatabase(stack.mainUrl, database),
      replica: withDatabase(stack.replicaUrl, database),
      redis: stack.redisUrl,
      namespace: `outpost:${database}`,
    };
    await until(async () => {
      const probe = new pg.Client({ connectionString: site.replica });
      try {
        await probe.connect();
        await probe.end();
        return true;
      } catch {
        return false;
      }
    }, 'the database on the replica');
    return site;
  };
  const outpostEnv = (site: Site, extra: Record<string, string> = {}) => ({
    MAIN_DATABASE_URL: site.main,
    REPLICA_DATABASE_URL: site.replica,
    REDIS_URL: site.redis,
    OUTPOST_NAMESPACE: site.namespace,
    OUTPOST_PARTITIONS: String(PARTITIONS),
    OUTPOST_BATCH_SIZE: String(BATCH_SIZE),
    OUTPOST_PORT: '0',
    OUTPOST_ADMIN_TOKEN: 'bench',
    LOG_LEVEL: 'info',
    ...extra,
  });
  // BENCH_NODE_ARGS='--cpu-prof --cpu-prof-dir=bench/results' profiles the service processes.
  const nodeArgs = process.env.BENCH_NODE_ARGS?.split(' ').filter(Boolean) ?? [];
  const outpost = (site: Site, only?: 'api' | 'projector', extra: Record<string, string> = {}) =>
    startServer(SERVICE_ENTRY, outpostEnv(site, extra), {
      args: ['serve', ...(only ? ['--only', only] : [])],
      nodeArgs,
    });
  const redis = new Redis(stack.redisUrl);
  redis.on('error', () => undefined);
  const results: Record<string, unknown> = {
    date: new Date().toISOString(),
    machine: { cpus: cpus().length, model: cpus()[0]?.model ?? 'unknown' },
    quick,
  };
  const servers: Server[] = [];
  /** Stops what the bench started: after the last scenario, or on Ctrl-C and SIGTERM. */
  const stopAll = async () => {
    await Promise.allSettled(servers.map((server) => server.stop()));
    redis.disconnect();
    await admin.end().catch(() => undefined);
    await replicaAdmin.end().catch(() => undefined);
    await stack.stop();
  };
  stopOnSignal(stopAll);
  /**
   * Leaves the next scenario a machine with nothing of the earlier ones still working on it.
   * Redis is emptied and its append-only file compacted: what the ingest scenario left would
   * otherwise be rewritten by Redis's automatic AOF rewrite in the middle of the next scenario,
   * on the same two cores. The earlier scenarios' databases are dropped, then a checkpoint, and
   * the wait until no autovacuum worker runs and the replica has replayed all of it, so that the
   * drain's and the end-to-end runs' hundreds of thousands of rows cannot keep autovacuum, the
   * checkpointer or the replica's replay busy in the scenarios after them. (Session 15's runs
   * never found autovacuum running here, and each wait took under a second: a guard, not a fix.)
   */
  const forgetEarlierScenarios = async () => {
    const waitStarted = Date.now();
    const { rows: found } = await admin.query<{ vacuuming: number }>(
      `SELECT count(*)::int AS vacuuming FROM pg_stat_activity
        WHERE backend_type = 'autovacuum worker'`,
    );
    await emptyRedis(redis);
    for (const database of siteDatabases.splice(0)) {
      await admin.query(`DROP DATABASE IF EXISTS ${database} WITH (FORCE)`);
    }
    await admin.query('CHECKPOINT');
    const quiet = async () => {
      const { rows } = await admin.query<{ vacuuming: number; lsn: string }>(
        `SELECT count(*) FILTER (WHERE backend_type = 'autovacuum worker')::int AS vacuuming,
                pg_current_wal_lsn()::text AS lsn
           FROM pg_stat_activity`,
      );
      const primary = rows[0];
      const replica = await replicaAdmin.query<{ behind: boolean }>(
        'SELECT pg_last_wal_replay_lsn() < $1::pg_lsn AS behind',
        [primary?.lsn],
      );
      return primary?.vacuuming === 0 && replica.rows[0]?.behind === false;
    };
    // Autovacuum may wake on another database at any time; a minute of waiting is enough to
    // let the earlier scenarios' work finish, and a scenario is not worth failing over it.
    await until(quiet, 'autovacuum and the replica to go quiet', 60_000).catch((err: Error) =>
      log(`${err.message}; going on`),
    );
    const seconds = ((Date.now() - waitStarted) / 1000).toFixed(1);
    log(`settled in ${seconds} s; ${found[0]?.vacuuming} autovacuum workers were running`);
  };
  const started = async (server: Promise<Server>) => {
    const s = await server;
    servers.push(s);
    return s;
  };
  const post = (port: number) => ({
    url: `http://127.0.0.1:${port}/executed_obs_units/start`,
    method: 'POST' as const,
    headers: { 'content-type': 'application/json' },
    body: BODY,
    duration: DURATION,
  });
  /** Counts the CPU time of `servers`, of this stack's Redis and PostgreSQL, and of the machine. */
  const stackCpuMeter = (servers: Record<string, Server>) =>
    cpuMeter({ stackDir: stack.dir, redisPort: stack.redisPort, servers });
  /**
   * Offers the ingest load to `port` and waits until `table` holds every accepted write: the
   * writes accepted and committed per second, from the first request to the last commit, and
   * the CPU per write of the machine and of `parts` (µs): steadier than throughput on a shared
   * machine, and it tells where the time goes.
   */
  const committedRun = async (
    port: number,
    db: pg.Pool,
    table: string,
    parts: Record<string, Server>,
    what: string,
  ) => {
    const startedAt = Date.now();
    const cpu = stackCpuMeter(parts);
    const offered = await load(post(port));
    const writes = offered.requests - offered.errors;
    await until(async () => (await count(db, table)) >= writes, what);
    const seconds = (Date.now() - startedAt) / 1000;
    return {
      offered,
      committedRps: Math.round(writes / seconds),
      cpuUsPerWrite: perWrite(cpu(), writes),
    };
  };
  /** The projector's batch-duration histogram, as its process's /metrics answers it now. */
  const batchHistogram = async (projector: Server) =>
    histogramBuckets(
      await (await fetch(`http://127.0.0.1:${projector.port}/metrics`)).text(),
      'outpost_projection_batch_duration_seconds',
    );
  let outpostRps = 0;
  let rssMb = 0;
  try {
    if (want('ingest')) {
      // 1. Ingest: bare Hono, Hono + XADD, Outpost (API only, so the projector does not share the cores).
      log('ingest');
      /**
       * The load, and the CPU per request (µs) of the server and of Redis while it ran: steadier
       * than requests per second on a machine whose speed moves between runs, and it tells which
       * part of a request's cost is the server's own.
       */
      const measured = async (server: Server, connections = 64) => {
        const cpu = stackCpuMeter({ server });
        const result = await load({ ...post(server.port), connections });
        const used = perWrite(cpu(), Math.max(1, result.requests - result.errors));
        return { ...result, serverCpuUs: used.server, redisCpuUs: used.redis };
      };
      const bare = await started(startServer('bench/servers/bare.ts', {}));
      const bareResult = await measured(bare);
      await bare.stop();
      const xadd = await started(
        startServer('bench/servers/xadd.ts', { REDIS_URL: stack.redisUrl }),
      );
      const xaddResult = await measured(xadd);
      const xaddFew = await measured(xadd, FEW_CONNECTIONS);
      await xadd.stop();
      // Outpost's HTTP side alone (append stubbed): separates the web path from the log's cost.
      const stubbed = await started(
        startServer('bench/servers/stubbed-append.ts', {}, { nodeArgs }),
      );
      const stubbedResult = await measured(stubbed);
      await stubbed.stop();
      const ingestSite = await newSite();
      const api = await started(outpost(ingestSite, 'api'));
      await redis.config('RESETSTAT');
      const outpostResult = await measured(api);
      const redisByCommand = commandCosts(
        await redis.info('commandstats'),
        outpostResult.requests - outpostResult.errors,
      );
      rssMb = api.peakRssMb();
      outpostRps = outpostResult.rps;
      const outpostFew = await measured(api, FEW_CONNECTIONS);
      await api.stop();
      results.ingest = {
        bare_rps: bareResult.rps,
        xadd_rps: xaddResult.rps,
        outpost_rps: outpostResult.rps,
        outpost_p50_ms: outpostResult.p50_ms,
        outpost_p99_ms: outpostResult.p99_ms,
        outpost_max_ms: outpostResult.max_ms,
        bare_p50_ms: bareResult.p50_ms,
        bare_p99_ms: bareResult.p99_ms,
        bare_max_ms: bareResult.max_ms,
        xadd_p50_ms: xaddResult.p50_ms,
        xadd_p99_ms: xaddResult.p99_ms,
        xadd_max_ms: xaddResult.max_ms,
        outpost_errors: outpostResult.errors,
        outpost_stubbed_append_rps: stubbedResult.rps,
        ratio_to_bare: round(outpostResult.rps / bareResult.rps),
        ratio_to_xadd: round(outpostResult.rps / xaddResult.rps),
        cpu_us_per_request: {
          bare: bareResult.serverCpuUs,
          xadd: { server: xaddResult.serverCpuUs, redis: xaddResult.redisCpuUs },
          stubbed_append: stubbedResult.serverCpuUs,
          outpost: { api: outpostResult.serverCpuUs, redis: outpostResult.redisCpuUs },
          outpost_redis_by_command: redisByCommand,
        },
        few_connections: {
          connections: FEW_CONNECTIONS,
          xadd: latencies(xaddFew),
          outpost: latencies(outpostFew),
        },
      };
    }
    if (want('drain')) {
      // 2. Drain: a backlog appended while no projector runs, then a projector process started.
      await forgetEarlierScenarios();
      log(`drain of ${DRAIN_EVENTS} events`);
      const drainSite = await newSite();
      const drainRedis = new Redis(stack.redisUrl);
      const eventLog = new EventLog(drainRedis, drainSite.namespace, PARTITIONS);
      await eventLog.ensureGroups();
      const backlog = await preload(eventLog, DRAIN_EVENTS);
      // What an operator's lists cost while the backlog waits: pending units are merged into
      // each, a filter that one of them matches and a first page of all of them.
      const listApi = await started(outpost(drainSite, 'api'));
      const listMs = async (query: string, expected: number) => {
        const ms: number[] = [];
        for (let i = 0; i < 3; i += 1) {
          const t = performance.now();
          const page = await getJson(listApi.port, `/executed_obs_units?${query}`);
          ms.push(performance.now() - t);
          if (page.items?.length !== expected) {
            throw new Error(`bench: ${query} listed ${page.items?.length} of ${expected} units`);
          }
        }
        return { median: round(percentile(ms, 50)), max: round(Math.max(...ms)) };
      };
      const listDuringBacklog = {
        filtered: await listMs('obs_unit_id=bench-7&limit=10', 1),
        first_page: await listMs('limit=10', 10),
      };
      await listApi.stop();
      const mainPool = new pg.Pool({ connectionString: drainSite.main, max: PARTITIONS });
      // The clock starts once the projector process is up: its boot is not drain time.
      const projector = await started(outpost(drainSite, 'projector'));
      const batchesBefore = await batchHistogram(projector);
      const t0 = Date.now();
      // Each partition applies its stream in order, so the drain is done when the last event
      // appended to every partition is there: a probe of a few index lookups, where a count(*)
      // every 100 ms would scan the growing table on the cores the drain needs.
      const lastEvents = lastEventOfEachPartition(backlog);
      await until(
        async () => (await present(mainPool, lastEvents)) === lastEvents.length,
        'the drain',
      );
      const appliedMs = Date.now() - t0;
      const applied = await count(mainPool, 'events');
      if (applied !== DRAIN_EVENTS) {
        throw new Error(`bench: the drain applied ${applied} events of ${DRAIN_EVENTS}`);
      }
      await until(async () => (await unacknowledged(eventLog)) === 0, 'every acknowledgement');
      const confirmedMs = Date.now() - t0;
      const batchesAfter = await batchHistogram(projector);
      await projector.stop();
      const rawRate = await rawInsertCeiling(mainPool, backlog);
      await mainPool.end();
      drainRedis.disconnect();
      results.drain = {
        events: DRAIN_EVENTS,
        outpost_events_per_s: Math.round(DRAIN_EVENTS / (appliedMs / 1000)),
        outpost_confirmed_events_per_s: Math.round(DRAIN_EVENTS / (confirmedMs / 1000)),
        raw_insert_rows_per_s: rawRate,
        ratio_to_raw: round(DRAIN_EVENTS / (appliedMs / 1000) / rawRate),
        // A batch from its read to its record as applied; a histogram has no exact maximum.
        batch_p50_ms: round(histogramQuantile(batchesBefore, batchesAfter, 0.5) * 1000),
        batch_p99_ms: round(histogramQuantile(batchesBefore, batchesAfter, 0.99) * 1000),
        list_during_backlog_ms: listDuringBacklog,
      };
    }
    if (want('e2e')) {
      await forgetEarlierScenarios();
      // 3. End to end at fixed offered rates, next to the replica's own replay latency. An API
      // process and a projector process, as a loaded site runs them (and as the same-work
      // scenario does); the all-in-one process once more at 2,000/s, to show what the split buys.
      const e2e: Record<string, unknown> = {};
      const replaySamples: number[] = [];
      const endToEnd = async (rate: number, shape: 'split' | 'one process') => {
        log(`end to end at ${rate}/s for ${E2E_DURATION}s, ${shape}`);
        const site = await newSite();
        const api = await started(outpost(site, shape === 'split' ? 'api' : undefined));
        const projector = shape === 'split' ? await started(outpost(site, 'projector')) : api;
        // The acker observes the histogram: it runs beside the projector.
        const metricsUrl = `http://127.0.0.1:${projector.port}/metrics`;
        const scrape = async () => {
          const text = await (await fetch(metricsUrl)).text();
          return {
            endToEnd: histogramBuckets(text, 'outpost_end_to_end_seconds'),
            batch: histogramBuckets(text, 'outpost_projection_batch_duration_seconds'),
          };
        };
        const before = await scrape();
        const stopPolling = pollConfirmations(api.port);
        const stopProbe = replayProbe(stack.mainUrl, stack.replicaUrl, replaySamples);
        const offered = await pacedLoad({
          url: post(api.port).url,
          body: BODY,
          rate,
          durationS: E2E_DURATION,
        });
        const polled = await stopPolling();
        await stopProbe();
        const siteLog = new EventLog(redis, site.namespace, PARTITIONS);
        await until(async () => (await unacknowledged(siteLog)) === 0, 'the end-to-end backlog');
        const after = await scrape();
        const quantileMs = (histogram: 'endToEnd' | 'batch', q: number) =>
          round(histogramQuantile(before[histogram], after[histogram], q) * 1000);
        await api.stop();
        await projector.stop();
        return {
          offered_rps: offered.rps,
          p50_ms: quantileMs('endToEnd', 0.5),
          p99_ms: quantileMs('endToEnd', 0.99),
          // A batch from its read to its record as applied (write, commit-LSN stamp, Redis):
          // the part of a write's confirmation before the replica and the acker.
          batch_p50_ms: quantileMs('batch', 0.5),
          batch_p99_ms: quantileMs('batch', 0.99),
          polled_p50_ms: percentile(polled, 50),
          polled_p99_ms: percentile(polled, 99),
          polled_max_ms: maxOf(polled),
          polled_samples: polled.length,
          ingest_p50_ms: offered.p50_ms,
          ingest_p99_ms: offered.p99_ms,
          ingest_max_ms: offered.max_ms,
        };
      };
      e2e.rate_500 = await endToEnd(500, 'split');
      e2e.rate_2000 = await endToEnd(2000, 'split');
      e2e.rate_2000_one_process = await endToEnd(2000, 'one process');
      e2e.replica_replay_p50_ms = round(percentile(replaySamples, 50));
      e2e.replica_replay_p99_ms = round(percentile(replaySamples, 99));
      e2e.replica_replay_max_ms = maxOf(replaySamples);
      results.e2e = e2e;
    }
    if (want('reads')) {
      await forgetEarlierScenarios();
      // 4. Merged reads with 0 and 10 pending events.
      log('merged reads');
      const readSite = await newSite();
      const full = await started(outpost(readSite));
      const settled = await postJson(full.port, '/executed_obs_units/start', JSON.parse(BODY));
      await until(
        async () =>
          (await getJson(full.port, `/executed_obs_units/${settled.id}`)).consistency?.source ===
          'replica',
        'a confirmed unit',
      );
      await full.stop();
      const apiOnly = await started(outpost(readSite, 'api'));
      const busy = await postJson(apiOnly.port, '/executed_obs_units/start', JSON.parse(BODY));
      for (let i = 0; i < 9; i += 1) {
        await fetch(`http://127.0.0.1:${apiOnly.port}/executed_obs_units/${busy.id}`, {
          method: 'PATCH',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ notes: `note ${i}` }),
        });
      }
      const pendingTen = await getJson(apiOnly.port, `/executed_obs_units/${busy.id}`);
      // One client reading back to back gives the latency of a read; sixteen saturate the
      // process, and their latency is mostly the queue in front of it.
      const read = (id: string, connections: number) =>
        load({
          url: `http://127.0.0.1:${apiOnly.port}/executed_obs_units/${id}`,
          connections,
          duration: DURATION,
        });
      // The floors under a merged read, one client each: an HTTP round trip to the same process
      // that reads neither Redis nor PostgreSQL, a Redis round trip, a replica round trip.
      const floor = await load({
        url: `http://127.0.0.1:${apiOnly.port}/no-such-path`,
        connections: 1,
        duration: DURATION,
      });
      const replicaClient = new pg.Client({ connectionString: readSite.replica });
      await replicaClient.connect();
      const redisFloor = await backToBack(() => redis.ping(), DURATION / 2);
      const replicaFloor = await backToBack(() => replicaClient.query('SELECT 1'), DURATION / 2);
      await replicaClient.end();
      const reads0 = await read(settled.id, 1);
      const reads10 = await read(busy.id, 1);
      const saturated0 = await read(settled.id, 16);
      const saturated10 = await read(busy.id, 16);
      await apiOnly.stop();
      results.reads = {
        pending_0_p99_ms: reads0.p99_ms,
        pending_10_p99_ms: reads10.p99_ms,
        pending_0_p50_ms: reads0.p50_ms,
        pending_10_p50_ms: reads10.p50_ms,
        pending_0_max_ms: reads0.max_ms,
        pending_10_max_ms: reads10.max_ms,
        pending_0_rps: reads0.rps,
        pending_10_rps: reads10.rps,
        floors: {
          http_404_p50_ms: floor.p50_ms,
          http_404_p99_ms: floor.p99_ms,
          redis_ping_p50_ms: redisFloor.p50_ms,
          redis_ping_p99_ms: redisFloor.p99_ms,
          replica_select_p50_ms: replicaFloor.p50_ms,
          replica_select_p99_ms: replicaFloor.p99_ms,
        },
        saturated_16_connections: {
          pending_0_p99_ms: saturated0.p99_ms,
          pending_10_p99_ms: saturated10.p99_ms,
          pending_0_max_ms: saturated0.max_ms,
          pending_10_max_ms: saturated10.max_ms,
          pending_0_rps: saturated0.rps,
          pending_10_rps: saturated10.rps,
        },
        pending_events_checked: pendingTen.consistency?.pending_events,
      };
    }
    if (want('memory')) {
      await forgetEarlierScenarios();
      // 5. Memory: Redis bytes per pending event (stream entry plus read indexes).
      log(`memory with ${MEMORY_EVENTS} pending events`);
      const memorySite = await newSite();
      const memoryRedis = new Redis(stack.redisUrl);
      const memoryLog = new EventLog(memoryRedis, memorySite.namespace, PARTITIONS);
      await memoryLog.ensureGroups();
      const usedBefore = await usedMemory(memoryRedis);
      await preload(memoryLog, MEMORY_EVENTS);
      const usedAfter = await usedMemory(memoryRedis);
      memoryRedis.disconnect();
      results.memory = {
        redis_bytes_per_pending_event: Math.round((usedAfter - usedBefore) / MEMORY_EVENTS),
        service_rss_mb: rssMb,
      };
    }
    if (want('peer')) {
      await forgetEarlierScenarios();
      // 6. The peer: BullMQ enqueue + worker doing the same insert.
      log('BullMQ peer');
      const peerSite = await newSite();
      const peerDb = new pg.Pool({ connectionString: peerSite.main, max: 2 });
      await peerDb.query(
        'CREATE TABLE bullmq_events (id uuid PRIMARY KEY, data jsonb, enqueued_at timestamptz, committed_at timestamptz)',
      );
      const worker = await started(
        startServer('bench/servers/bullmq-worker.ts', {
          REDIS_URL: stack.redisUrl,
          DATABASE_URL: peerSite.main,
          CONCURRENCY: String(PARTITIONS),
        }),
      );
      const producer = await started(
        startServer('bench/servers/bullmq.ts', { REDIS_URL: stack.redisUrl }),
      );
      const bullRun = await committedRun(
        producer.port,
        peerDb,
        'bullmq_events',
        { producer, worker },
        'the BullMQ worker',
      );
      const bull = bullRun.offered;
      const bullLatency = await peerDb.query<{ p50: number; p99: number; max: number }>(
        `SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY ms) AS p50,
                percentile_cont(0.99) WITHIN GROUP (ORDER BY ms) AS p99, max(ms) AS max
           FROM (SELECT extract(epoch FROM committed_at - enqueued_at) * 1000 AS ms
                   FROM bullmq_events) e`,
      );
      await producer.stop();
      await worker.stop();
      await peerDb.end();
      // The same work for Outpost, in the same shape (an API process and a projector process,
      // the same load): writes accepted and committed to PostgreSQL, per second, from the first
      // request to the last commit. A queue that accepts faster than it commits only grows a
      // backlog; this is the rate it can sustain.
      await forgetEarlierScenarios();
      const sameWorkSite = await newSite();
      const sameWorkApi = await started(outpost(sameWorkSite, 'api'));
      const sameWorkProjector = await started(outpost(sameWorkSite, 'projector'));
      const sameWorkDb = new pg.Pool({ connectionString: sameWorkSite.main, max: 2 });
      const outpostRun = await committedRun(
        sameWorkApi.port,
        sameWorkDb,
        'events',
        { api: sameWorkApi, projector: sameWorkProjector },
        'the Outpost projector',
      );
      await sameWorkApi.stop();
      await sameWorkProjector.stop();
      await sameWorkDb.end();
      results.peer = {
        bullmq_rps: bull.rps,
        outpost_rps: outpostRps,
        ratio: round(outpostRps / bull.rps),
        bullmq_p50_ms: bull.p50_ms,
        bullmq_p99_ms: bull.p99_ms,
        bullmq_max_ms: bull.max_ms,
        bullmq_e2e_p50_ms: round(Number(bullLatency.rows[0]?.p50 ?? 0)),
        bullmq_e2e_p99_ms: round(Number(bullLatency.rows[0]?.p99 ?? 0)),
        bullmq_e2e_max_ms: round(Number(bullLatency.rows[0]?.max ?? 0)),
        outpost_rps_with_projector: outpostRun.offered.rps,
        // What Outpost's writers waited for in the same-work run, beside BullMQ's enqueue above.
        outpost_with_projector_p50_ms: outpostRun.offered.p50_ms,
        outpost_with_projector_p99_ms: outpostRun.offered.p99_ms,
        outpost_with_projector_max_ms: outpostRun.offered.max_ms,
        bullmq_committed_rps: bullRun.committedRps,
        outpost_committed_rps: outpostRun.committedRps,
        committed_ratio: round(outpostRun.committedRps / bullRun.committedRps),
        bullmq_cpu_us_per_write: bullRun.cpuUsPerWrite,
        outpost_cpu_us_per_write: outpostRun.cpuUsPerWrite,
      };
    }
    if (want('integrity')) {
      await forgetEarlierScenarios();
      // 7. Integrity: refresh on a large events table, and /metrics answering during it.
      log(`integrity on ${INTEGRITY_EVENTS} events`);
      const integritySite = await newSite();
      const integrityDb = new pg.Client({
        connectionString: integritySite.main,
        statement_timeout: 0,
      });
      await integrityDb.connect();
      await synthesise(integrityDb, INTEGRITY_EVENTS);
      const metricsServer = await started(outpost(integritySite, 'api'));
      const scrapeTimes: number[] = [];
      let refreshing = true;
      const scraping = (async () => {
        while (refreshing) {
          const s = performance.now();
          await (await fetch(`http://127.0.0.1:${metricsServer.port}/metrics`)).text();
          scrapeTimes.push(performance.now() - s);
          await sleep(20);
        }
      })();
      const r0 = performance.now();
      await integrityDb.query("SELECT outpost_refresh_integrity('bench', true)");
      const refreshSeconds = (performance.now() - r0) / 1000;
      refreshing = false;
      await scraping;
      await metricsServer.stop();
      await integrityDb.end();
      results.integrity = {
        events: INTEGRITY_EVENTS,
        refresh_seconds_1m_events: round(refreshSeconds * (1_000_000 / INTEGRITY_EVENTS)),
        refresh_seconds_measured: round(refreshSeconds),
        scrape_p50_ms_during_refresh: round(percentile(scrapeTimes, 50)),
        scrape_p99_ms_during_refresh: round(percentile(scrapeTimes, 99)),
        scrape_max_ms_during_refresh: maxOf(scrapeTimes),
        scrapes_during_refresh: scrapeTimes.length,
      };
    }
  } finally {
    await stopAll();
  }
  if (only !== undefined) {
    process.stdout.write(`${JSON.stringify(results, null, 2)}\n`);
    return;
  }
  const dir = projectPath('bench/results');
  mkdirSync(dir, { recursive: true });
  const file = quick ? 'quick.json' : 'latest.json';
  writeFileSync(join(dir, file), `${JSON.stringify(results, null, 2)}\n`);
  const table = renderTable(results);
  if (!quick) {
    writeFileSync(join(dir, 'latest.md'), table);
  }
  process.stdout.write(`${table}\n`);
};

const count = async (db: pg.Pool | pg.Client, table: string) =>
  Number(
    (await db.query<{ n: number }>(`SELECT count(*)::int AS n FROM ${table}`)).rows[0]?.n ?? 0,
  );

/** The id of the event appended last to each partition. */
const lastEventOfEachPartition = (events: readonly Envelope[]) => [
  ...new Map(events.map((e) => [partitionOf(e.aggregate_id, PARTITIONS), e.event_id])).values(),
];

/** How many of `eventIds` the main database holds. */
const present = async (db: pg.Pool, eventIds: readonly string[]) =>
  Number(
    (
      await db.query<{ n: number }>(
        'SELECT count(*)::int AS n FROM events WHERE event_id = ANY($1::uuid[])',
        [eventIds],
      )
    ).rows[0]?.n ?? 0,
  );

const usedMemory = async (redis: Redis) =>
  Number(/used_memory:(\d+)/.exec(await redis.info('memory'))?.[1] ?? 0);

const unacknowledged = async (eventLog: EventLog) => {
  let total = 0;
  for (const keys of eventLog.allKeys()) {
    total += await eventLog.pendingCount(keys.partition);
    const groups = (await eventLog.redis.xinfo('GROUPS', keys.stream)) as unknown[][];
    total += Number(groups[0]?.[groups[0].indexOf('lag') + 1] ?? 0) || 0;
  }
  return total;
};

const perWrite = (cpuMs: Record<string, number>, writes: number) =>
  Object.fromEntries(
    Object.entries(cpuMs).map(([part, ms]) => [part, Math.round((ms * 1000) / writes)]),
  );

/** Empties Redis and compacts its append-only file, waiting until the rewrite is done. */
const emptyRedis = async (redis: Redis) => {
  await redis.flushall();
  await redis.bgrewriteaof().catch((err: Error) => {
    // A rewrite already running finishes with the emptied data set as well.
    if (!/already in progress/i.test(err.message)) {
      throw err;
    }
  });
  await until(
    async () => /aof_rewrite_in_progress:0/.test(await redis.info('persistence')),
    'the AOF rewrite',
  );
};

/** Appends `n` unit starts through the real append script, 500 per call, over all partitions. */
const preload = async (eventLog: EventLog, n: number): Promise<Envelope[]> => {
  const all: Envelope[] = [];
  for (let done = 0; done < n; ) {
    const partition = (done / 500) % PARTITIONS;
    const batch = Array.from({ length: Math.min(500, n - done) }, (_, i) => {
      const event = {
        event_id: newIdInPartition(partition, PARTITIONS),
        aggregate_id: newIdInPartition(partition, PARTITIONS),
        aggregate_type: 'executed_obs_unit',
        type: 'ExecutedObsUnitStarted',
        version: 2,
        site: 'bench',
        accepted_at: Date.now(),
        data: {
          obs_unit_id: `bench-${done + i}`,
          instrument: 'nircam',
          start_time: new Date().toISOString(),
          instrument_configuration_id: null,
          notes: null,
          metadata: { seeing: 0.6 },
        },
      } as Envelope;
      return event;
    });
    await eventLog.append({ partition, events: batch });
    all.push(...batch);
    done += batch.length;
  }
  return all;
};

/** The raw ceiling: the same event rows as plain multi-row INSERTs, same batch size and parallelism. */
const rawInsertCeiling = async (pool: pg.Pool, events: Envelope[]) => {
  await pool.query('CREATE TABLE events_raw (LIKE events INCLUDING ALL)');
  const batches: Envelope[][] = [];
  for (let i = 0; i < events.length; i += BATCH_SIZE) {
    batches.push(events.slice(i, i + BATCH_SIZE));
  }
  const started = performance.now();
  let next = 0;
  await Promise.all(
    Array.from({ length: PARTITIONS }, async () => {
      const client = await pool.connect();
      await client.query('SET synchronous_commit = on');
      try {
        while (next < batches.length) {
          const batch = batches[next++] as Envelope[];
          const values: unknown[] = [];
          const rows = batch.map((e, i) => {
            values.push(
              e.event_id,
              e.aggregate_id,
              e.type,
              JSON.stringify(e.data),
              new Date(e.accepted_at).toISOString(),
              `0-${i}`,
            );
            const o = i * 6;
            return `($${o + 1}, $${o + 2}, 0, $${o + 3}, 2, $${o + 4}, 'bench', 0, $${o + 6}, $${o + 5})`;
          });
          await client.query(
            `INSERT INTO events_raw (event_id, aggregate_id, seq, type, version, data, site, partition, stream_entry_id, occurred_at) VALUES ${rows.join(',')}`,
            values,
          );
        }
      } finally {
        client.release();
      }
    }),
  );
  return Math.round(events.length / ((performance.now() - started) / 1000));
};

/** Client-side end to end: one write every 50 ms, polled on GET /events/{id} until confirmed. */
const pollConfirmations = (port: number) => {
  const samples: number[] = [];
  let running = true;
  const inflight: Promise<void>[] = [];
  const loop = (async () => {
    while (running) {
      inflight.push(
        (async () => {
          const t0 = performance.now();
          const { event_id } = await postJson(port, '/executed_obs_units/start', {
            obs_unit_id: 'probe',
            instrument: 'probe',
          });
          for (let i = 0; i < 3000; i += 1) {
            if ((await getJson(port, `/events/${event_id}`)).state === 'confirmed') {
              samples.push(round(performance.now() - t0));
              return;
            }
            await sleep(2);
          }
        })(),
      );
      await sleep(50);
    }
  })();
  return async () => {
    running = false;
    await loop;
    await Promise.all(inflight);
    return samples;
  };
};

/** The replica's own latency: commit on the primary until pg_last_wal_replay_lsn() passes it. */
const replayProbe = (mainUrl: string, replicaUrl: string, samples: number[]) => {
  let running = true;
  const loop = (async () => {
    const primary = new pg.Client({ connectionString: withDatabase(mainUrl, 'postgres') });
    const replica = new pg.Client({ connectionString: withDatabase(replicaUrl, 'postgres') });
    await primary.connect();
    await replica.connect();
    await primary.query('CREATE TABLE IF NOT EXISTS bench_probe (at timestamptz)');
    while (running) {
      const t0 = performance.now();
      await primary.query('INSERT INTO bench_probe VALUES (now())');
      const lsn = (
        await primary.query<{ lsn: string }>('SELECT pg_current_wal_insert_lsn()::text AS lsn')
      ).rows[0]?.lsn;
      for (;;) {
        const reached = (
          await replica.query<{ ok: boolean }>(
            'SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn AS ok',
            [lsn],
          )
        ).rows[0]?.ok;
        if (reached) {
          break;
        }
        // A millisecond apart: a tight loop would take a core from the system it measures.
        await sleep(1);
      }
      samples.push(performance.now() - t0);
      await sleep(20);
    }
    await primary.end();
    await replica.end();
  })();
  return async () => {
    running = false;
    await loop;
  };
};

// biome-ignore lint/suspicious/noExplicitAny: benchmark responses are read field by field
const postJson = async (port: number, path: string, body: unknown): Promise<any> =>
  (
    await fetch(`http://127.0.0.1:${port}${path}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(body),
    })
  ).json();

// biome-ignore lint/suspicious/noExplicitAny: benchmark responses are read field by field
const getJson = async (port: number, path: string): Promise<any> =>
  (await fetch(`http://127.0.0.1:${port}${path}`)).json();

/** A large, consistent site written directly in SQL: units with 10 events each. */
const synthesise = async (db: pg.Client, events: number) => {
  const units = Math.floor(events / 10);
  await db.query(
    `CREATE TEMP TABLE u AS SELECT gen_random_uuid() AS id, g FROM generate_series(1, ${units}) g`,
  );
  await db.query(
    "INSERT INTO aggregates SELECT id, 'executed_obs_unit', 'bench', g % 8, now() FROM u",
  );
  await db.query(
    `INSERT INTO events (event_id, aggregate_id, seq, type, version, data, site, partition, stream_entry_id, occurred_at, commit_lsn)
     SELECT gen_random_uuid(), u.id, s, CASE WHEN s = 0 THEN 'ExecutedObsUnitStarted' ELSE 'ExecutedObsUnitUpdated' END,
            1, '{}', 'bench', u.g % 8, u.g || '-' || s, now(), '0/1'
       FROM u, generate_series(0, 9) s`,
  );
  await db.query("INSERT INTO aggregate_heads SELECT id, 'head', 9, gen_random_uuid() FROM u");
  await db.query('INSERT INTO aggregate_stats SELECT id, 10, now() FROM u');
  await db.query(
    `INSERT INTO executed_obs_units (id, site, accepted_at, updated_at, version, obs_unit_id, instrument, status, start_time, metadata)
     SELECT id, 'bench', now(), now(), 10, 'ou-' || g, 'nircam', 'running', now(), '{}' FROM u`,
  );
  await db.query('ANALYZE');
  await db.query("SELECT outpost_refresh_integrity('bench', true)");
};

main().catch((err: unknown) => {
  process.stderr.write(`bench failed: ${(err as Error).stack ?? String(err)}\n`);
  process.exitCode = 1;
});
