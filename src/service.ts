import type { Server } from 'node:http';
import { hostname } from 'node:os';
import { serve } from '@hono/node-server';
import { WebSocketServer } from 'ws';
import { Acker } from './acker/acker.ts';
import { TokenStore } from './auth/token-store.ts';
import type { Config } from './config.ts';
import { redactedConfig } from './config.ts';
import { createPool } from './db/client.ts';
import { createApp, createOperationsApp } from './http/app.ts';
import { ReplicaLink } from './http/replica-link.ts';
import { LIVE_WS_MAX_PAYLOAD_BYTES, refuseOtherUpgrades } from './http/routes/live.ts';
import { longestGapSeconds } from './integrity/schedule.ts';
import { IntegrityScheduler } from './integrity/scheduler.ts';
import { siteLiveFeed } from './live/live-feed.ts';
import { LogCapacity, writeRefusedReason } from './log/capacity.ts';
import { DeadLetters } from './log/dead-letters.ts';
import { checkDurability, persistenceRefusal } from './log/durability.ts';
import { EventLog } from './log/event-log.ts';
import {
  connectRedis,
  createRedis,
  requireRedisVersion,
  watchConnection,
  withinCommandTimeout,
} from './log/redis.ts';
import type { Logger } from './observability/logger.ts';
import { createMetrics, type Metrics } from './observability/metrics.ts';
import { checkPartitionCount, type SiteListing } from './ops/partition-count.ts';
import { checkSiteName, recordLogId } from './ops/site-name.ts';
import { PROBE_TIMEOUT_MS, StatusSource } from './ops/status.ts';
import { WorstBreakerGauge } from './projector/circuit-breaker.ts';
import { Projector } from './projector/projector.ts';
import { AcknowledgedReplayGate, walPosition } from './read/acknowledged-replay.ts';

export type Role = 'all' | 'api' | 'projector';

export type Service = {
  port: number;
  metrics: Metrics;
  eventLog: EventLog;
  acker: Acker | undefined;
  projector: Projector | undefined;
  /** Reads the API token file again (SIGHUP). */
  reloadTokens: () => void;
  stop: () => Promise<void>;
};

const SHUTDOWN_STEP_TIMEOUT_MS = 10_000;
/** How long a stopping server lets requests in progress finish before it cuts their connections. */
const HTTP_GRACE_MS = 5_000;
const IDLE_SWEEP_MS = 50;

/**
 * The main database pool the projector commits through. The acknowledgement gate trusts that a
 * commit LSN the replica reaches stands for a durable commit, so commits wait for the WAL flush;
 * only the batch write, always followed by a synchronous stamp, opts out (see writeBatch).
 */
export const projectorPool = (config: Config) =>
  createPool({
    url: config.mainDatabaseUrl,
    max: config.partitions + 4,
    applicationName: 'outpost-projector',
    synchronousCommit: true,
    // Applying, replay's and the admin endpoints' lookups go by key; the integrity refresh, which
    // scans whole tables, has a connection of its own.
    keyLookupsOnly: true,
    // No applying transaction spans round trips (each is one statement or one simple query), so a
    // frozen projector holds no lease lock; should one ever be left open, the server ends it well
    // within the lease TTL, so a taker waits at most this long instead of a minute.
    idleInTransactionTimeoutMs: Math.max(1_000, Math.floor(config.claimIdleMs / 2)),
  });

/** Short timeouts: a lease round must finish well within a third of the lease TTL. */
export const leasePool = (config: Pick<Config, 'mainDatabaseUrl' | 'claimIdleMs'>) =>
  createPool({
    url: config.mainDatabaseUrl,
    max: 2,
    applicationName: 'outpost-leases',
    queryTimeoutMs: Math.max(1_000, Math.floor(config.claimIdleMs / 6)),
  });

const timed = async (logger: Logger, step: string, work: () => Promise<unknown>) => {
  const timeout = new Promise<'timeout'>((resolve) =>
    setTimeout(() => resolve('timeout'), SHUTDOWN_STEP_TIMEOUT_MS).unref(),
  );
  const outcome = await Promise.race([work().then(() => 'done' as const), timeout]).catch(
    (err: unknown) => {
      logger.error({ err, step }, 'shutdown step failed');
      return 'failed' as const;
    },
  );
  if (outcome === 'timeout') {
    logger.error({ step }, 'shutdown step timed out');
  } else {
    logger.info({ step }, 'shutdown step done');
  }
};

/** What a start began, for its stop. */
type Started = {
  live: { stop(): Promise<void> };
  /** The HTTP server once it listens. */
  server: () => ReturnType<typeof serve> | undefined;
  tokens: TokenStore;
  eventLog: EventLog;
  replicaLink: ReplicaLink;
  logWatch: LogCapacity;
  projector: Projector | undefined;
  acker: Acker | undefined;
  integrity: IntegrityScheduler | undefined;
  listing: SiteListing | undefined;
  redis: ReturnType<typeof createRedis>;
  pools: { end(): Promise<void> }[];
};

/** Stops what a start began, in order, each step within its time; a second call awaits the first. */
const stopping = (logger: Logger, parts: Started): (() => Promise<void>) => {
  let stopped: Promise<void> | undefined;
  return () => {
    stopped ??= (async () => {
      logger.info('stopping');
      // Live clients never end their requests on their own: end their sessions first, so the
      // server can close.
      await timed(logger, 'live feed', () => parts.live.stop());
      const server = parts.server();
      if (server) {
        const open = server as {
          close(done: () => void): void;
          closeIdleConnections?: () => void;
          closeAllConnections?: () => void;
        };
        await timed(logger, 'http', async () => {
          const closed = new Promise<void>((resolve) => open.close(() => resolve()));
          // A request in progress is answered first: its append may have run already, and a
          // client whose answer was cut off retries, without an Idempotency-Key as a second
          // write. Keep-alive connections are closed as they fall idle; whatever is still open
          // after the grace is cut.
          const idle = setInterval(() => open.closeIdleConnections?.(), IDLE_SWEEP_MS).unref();
          const cut = setTimeout(() => {
            // Past the grace nothing is left to sweep, even if the close never completes. An
            // append not yet sent (behind a call a stalled link holds) is refused, not sent once
            // its client's connection is cut: it would run, and the client, told nothing, retry.
            clearInterval(idle);
            parts.eventLog.closeAppends();
            open.closeAllConnections?.();
          }, HTTP_GRACE_MS).unref();
          open.closeIdleConnections?.();
          await closed.finally(() => {
            clearInterval(idle);
            clearTimeout(cut);
          });
        });
      }
      // However the server closed: a client that hung up on its own while its append waited
      // behind a stalled call leaves no connection, and the append would be sent all the same.
      parts.eventLog.closeAppends();
      parts.tokens.stop();
      parts.replicaLink.stop();
      parts.logWatch.stop();
      await timed(logger, 'projector', async () => parts.projector?.stop());
      await timed(logger, 'acker', async () => parts.acker?.stop());
      await timed(logger, 'integrity scheduler', async () => parts.integrity?.stop());
      await timed(logger, 'roster', async () => parts.listing?.stop());
      await timed(logger, 'redis', () => parts.redis.quit());
      await timed(logger, 'databases', () => Promise.all(parts.pools.map((pool) => pool.end())));
      logger.info('stopped');
    })();
    return stopped;
  };
};

/** Wires config into running parts: HTTP API, projector, acker. The only place that does. */
export const startService = async (
  config: Config,
  logger: Logger,
  role: Role = 'all',
): Promise<Service> => {
  logger.info({ config: redactedConfig(config), role }, 'starting');
  const tokens = new TokenStore(config.apiTokens, logger.child({ module: 'tokens' }));
  // Before anything connects: a bad token file stops start-up with the variable's name.
  tokens.start();
  const metrics = createMetrics();
  metrics.integrityRefreshInterval.set(longestGapSeconds(config.integritySchedule, new Date()));
  const redis = createRedis(config);
  watchConnection(redis, logger.child({ module: 'redis' }));
  const eventLog = new EventLog(redis, config.namespace, config.partitions, config.liveMaxLen);
  const deadLetters = new DeadLetters(eventLog);
  let refusal: string | undefined;
  let listing: SiteListing | undefined;
  try {
    await connectRedis(redis, config.redisUrl);
    await requireRedisVersion(redis, config.redisUrl);
    await checkDurability(redis, config, logger);
    await checkSiteName(redis, config.namespace, config.site, logger);
    listing = await checkPartitionCount(eventLog, logger, {
      name: `${config.consumer} on ${hostname()} pid ${process.pid}`,
    });
    refusal = await eventLog.ensureGroups();
  } catch (err) {
    await listing?.stop();
    // Refused before anything else started: leave nothing open behind the error (an open
    // connection would keep the process, or a test, from exiting).
    redis.disconnect();
    tokens.stop();
    throw err;
  }
  if (refusal === undefined) {
    // Upkeep that need not hold up the start, nor fail it: the next start tries again.
    void deadLetters.renameEarlierBuildLetters().then(
      (renamed) => {
        if (renamed > 0) {
          logger.info(
            { renamed },
            'dead letters an earlier build indexed otherwise are now filed under the names outpost dead list shows',
          );
        }
      },
      (err: unknown) =>
        logger.warn(
          { err },
          'dead letters of an earlier build not renamed; the next start tries again',
        ),
    );
  } else {
    logger.warn(
      { refusal },
      `started without the start-up upkeep, which waits for a start that can write: ${writeRefusedReason(refusal)}`,
    );
  }
  const live = siteLiveFeed(config, redis, logger.child({ module: 'live' }));
  const main = projectorPool(config);
  // The acker's questions, health and the operators' reports, which must reach a replica
  // however far behind it is.
  const replica = createPool({
    url: config.replicaDatabaseUrl,
    max: 10,
    applicationName: 'outpost-replica',
  });
  // The API's merged reads and writes' checks: only from a replica that shows what is acknowledged.
  const readsLogger = logger.child({ module: 'reads' });
  // One connection, quick to give up: asked only while the replica is behind, and never allowed
  // to hold the projector's connections on a link that drops packets.
  const mainForReads = createPool({
    url: config.mainDatabaseUrl,
    max: 1,
    applicationName: 'outpost-reads-check',
    queryTimeoutMs: 1_000,
  });
  const reads = createPool({
    url: config.replicaDatabaseUrl,
    max: 20,
    applicationName: 'outpost-reader',
    // Checked as it is made: a connection that outlives a restart of the replica behind a pooler
    // or a proxy would never be checked again.
    maxLifetimeSeconds: 300,
    onConnect: new AcknowledgedReplayGate({
      acknowledgedThrough: () => eventLog.acknowledgedThrough(),
      forgetAcknowledged: async () => {
        await eventLog.forgetAcknowledgedThrough();
        readsLogger.warn(
          'the main database is behind what this site acknowledged (restored from an earlier backup, or replaced): forgot how far events were acknowledged, and reads go on from the replica',
        );
      },
      mainPosition: () => walPosition(mainForReads),
      onBehind: (err, { first }) => {
        metrics.replicaBehind.inc();
        if (first) {
          readsLogger.warn(
            { err },
            'reads refused until the replica replays what was acknowledged; writes check ids against the main database meanwhile',
          );
        }
      },
      onCaughtUp: () =>
        readsLogger.info('the replica shows what was acknowledged again: reads go on'),
    }).check,
  });
  // Health probes get pools of their own: a probe stops waiting after PROBE_TIMEOUT_MS, but its
  // query runs on to its pool's timeouts, and scrapes of a database that is slow to answer (a
  // dead link; a replica whose readers wait on a lock it replays) would otherwise fill the
  // projector's connections, or the acker's.
  const probe = createPool({
    url: config.mainDatabaseUrl,
    max: 2,
    applicationName: 'outpost-probe',
  });
  // The replica is local: its probes' queries end as the probes do, rather than pile up there.
  const replicaProbe = createPool({
    url: config.replicaDatabaseUrl,
    max: 3,
    applicationName: 'outpost-probe',
    queryTimeoutMs: PROBE_TIMEOUT_MS,
  });
  const leases = leasePool(config);
  const pools = [main, replica, reads, mainForReads, probe, replicaProbe, leases];
  for (const pool of pools) {
    pool.on('error', (err) => logger.warn({ err }, 'idle database connection failed'));
  }

  const runsProjector = role !== 'api';
  const projector = runsProjector
    ? new Projector({
        pool: main,
        leasePool: leases,
        eventLog,
        deadLetters,
        redis,
        site: config.site,
        // Raced, as every lease round asks it before taking partitions: behind an auto-pipeline
        // stalled on a silent link it waited up to twice the command timeout. Run late, it only
        // sets what is absent, as it would have.
        logId: () => withinCommandTimeout(() => recordLogId(redis, config.namespace, config.site)),
        consumer: config.consumer,
        batchSize: config.batchSize,
        maxAttempts: config.maxAttempts,
        claimIdleMs: config.claimIdleMs,
        streamRetentionMs: config.streamRetentionMs,
        logger: logger.child({ module: 'projector' }),
        metrics,
        live,
        onApplied: () => acker?.nudge(),
      })
    : undefined;
  // The acker's breaker and the API's replica link each guard the replica; its gauge shows the
  // worse of them.
  const replicaBreakers = new WorstBreakerGauge(metrics.breakerState);
  const acker = runsProjector
    ? new Acker({
        replica,
        replicaIsMain: config.replicaIsMain,
        eventLog,
        intervalMs: config.ackIntervalMs,
        logger: logger.child({ module: 'acker' }),
        metrics,
        breakerGauge: replicaBreakers.member(),
        live,
      })
    : undefined;
  const integrity = runsProjector
    ? new IntegrityScheduler({
        main,
        mainUrl: config.mainDatabaseUrl,
        schedule: config.integritySchedule,
        postDeployDelayMs: config.postDeployRefreshDelayMs,
        projectorHealthy: () => projector?.stats().status === 'running',
        logger: logger.child({ module: 'integrity' }),
        onMissedCronRun: () => metrics.integrityCronRunsMissed.inc(),
        // The stale alert allows three of the longest gaps of the schedule the job really runs
        // on (its max over the site's processes): one process's own would raise it falsely, or
        // not at all, where another process set the job apart.
        onJobSchedule: (schedule) =>
          metrics.integrityRefreshInterval.set(longestGapSeconds(schedule, new Date())),
      })
    : undefined;
  const status = new StatusSource({
    config,
    eventLog,
    main: probe,
    replica: replicaProbe,
    metrics,
    projector,
    acker,
    integrity,
    tokens,
    partitionCount: listing,
    // Only API processes read the feed back (below).
    live: role === 'projector' ? undefined : live,
  });
  // Every process watches the log: each makes its connection again after a failover behind
  // REDIS_URL's address (ReadOnlyWatch). Only API processes take writes; they keep the log's room
  // for the backlog to drain.
  const logWatch = new LogCapacity(redis, () => persistenceRefusal(redis, config.appendfsync));
  const capacity = role === 'projector' ? undefined : logWatch;
  const replicaLink = new ReplicaLink(
    reads,
    logger.child({ module: 'replica-link' }),
    replicaBreakers.member(),
    replica,
  );
  let server: ReturnType<typeof serve> | undefined;
  const stop = stopping(logger, {
    live,
    server: () => server,
    tokens,
    eventLog,
    replicaLink,
    logWatch,
    projector,
    acker,
    integrity,
    listing,
    redis,
    pools,
  });
  // A start that fails from here stops what it started: leases held until the process exits
  // would keep the partitions from another process for the claim idle time, and the site's
  // roster would list a process that is not running.
  const stopOnFailure = <T>(work: Promise<T>): Promise<T> =>
    work.catch(async (err: unknown) => {
      await stop();
      throw err;
    });
  projector?.start();
  acker?.start();
  void integrity?.start();
  logWatch.start();
  const appDeps = {
    config,
    capacity,
    eventLog,
    deadLetters,
    main,
    replica,
    replicaLink,
    metrics,
    logger,
    status,
    tokens,
    live,
    partitionCount: listing,
  };
  // Only API processes read the feed back: they are the ones with clients to fan it out to.
  if (role !== 'projector') {
    await stopOnFailure(live.start());
  }
  let port = 0;
  if (role === 'projector') {
    server = serve({
      fetch: createOperationsApp(appDeps).fetch,
      port: config.port,
      hostname: '0.0.0.0',
    });
    try {
      port = await listeningPort(server);
    } catch (err) {
      // A projector started next to an API process with the same environment: projecting
      // matters more than its probes, so it runs on without them rather than failing (and
      // stays listed under its partition count).
      if ((err as NodeJS.ErrnoException).code !== 'EADDRINUSE') {
        await stop();
        throw err;
      }
      logger.warn(
        { port: config.port, consumer: config.consumer },
        'OUTPOST_PORT is taken: this projector serves no /health or /metrics, and shares its consumer name with the process on that port if that one projects too; give it a port of its own (or OUTPOST_CONSUMER)',
      );
      server = undefined;
    }
  } else {
    server = serve({
      fetch: createApp(appDeps).fetch,
      port: config.port,
      hostname: '0.0.0.0',
      websocket: {
        server: new WebSocketServer({ noServer: true, maxPayload: LIVE_WS_MAX_PAYLOAD_BYTES }),
      },
    });
    refuseOtherUpgrades(server as Server);
    port = await stopOnFailure(listeningPort(server));
  }
  logger.info({ port, role }, 'started');

  return {
    port,
    metrics,
    eventLog,
    acker,
    projector,
    reloadTokens: () => tokens.reload(),
    stop,
  };
};

const listeningPort = (server: ReturnType<typeof serve>): Promise<number> =>
  new Promise((resolve, reject) => {
    const read = () => {
      const address = server.address();
      resolve(typeof address === 'object' && address ? address.port : 0);
    };
    if (server.listening) {
      read();
    } else {
      server.once('listening', read);
      server.once('error', reject);
    }
  });
