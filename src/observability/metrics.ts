import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from 'prom-client';
import { EVENT_TYPES } from '../domain/events.ts';
import { DRAIN_RESERVE } from '../log/capacity.ts';

const LATENCY_BUCKETS = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5];
/*
 * A confirmation usually takes 5–150 ms: buckets are close there, so histogram_quantile's
 * interpolation within a bucket cannot move a p99 by tens of milliseconds; the long tail is
 * for a backlog or an outage drained.
 */
const E2E_BUCKETS = [
  0.005, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60,
  300, 1800,
];

/**
 * A counter whose labelled series exist from the start at 0: Prometheus's increase() takes a
 * series' first sample as its starting point, so a series born at 6 would count no increase.
 */
const zeroed = <T extends string>(counter: Counter<T>, label: T, values: readonly string[]) => {
  for (const value of values) {
    counter.inc({ [label]: value } as Partial<Record<T, string>>, 0);
  }
  return counter;
};

/**
 * A gauge starts at 0, which for this one is the alarm: until a scrape has asked Redis (or while
 * asking fails), it must not page that Redis refuses writes.
 */
const writableUntilSeenOtherwise = (gauge: Gauge) => {
  gauge.set(1);
  return gauge;
};

/** Every metric Outpost exports, on a registry of its own (tests get a fresh one each). */
export const createMetrics = () => {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry });
  const registers = [registry];
  return {
    registry,
    eventsAccepted: zeroed(
      new Counter({
        name: 'outpost_events_accepted_total',
        help: 'Events appended to the local log, by event type',
        labelNames: ['type'] as const,
        registers,
      }),
      'type',
      Object.keys(EVENT_TYPES),
    ),
    ingestDuration: new Histogram({
      name: 'outpost_ingest_duration_seconds',
      help: 'Time from request received to durable append answered',
      buckets: LATENCY_BUCKETS,
      registers,
    }),
    eventsApplied: new Counter({
      name: 'outpost_events_applied_total',
      help: 'Events applied to the main database (duplicates not counted)',
      registers,
    }),
    eventsReapplied: zeroed(
      new Counter({
        name: 'outpost_events_reapplied_total',
        help: 'Applied events the main database no longer had (restored from an earlier backup, failed over), handed back to be applied again; found_by: the projector re-reading its pending entries, or the acker once the replica passed their commit LSNs',
        labelNames: ['found_by'] as const,
        registers,
      }),
      'found_by',
      ['projector', 'acker'],
    ),
    batchDuration: new Histogram({
      name: 'outpost_projection_batch_duration_seconds',
      help: 'Time to apply one batch, from read to recorded commit LSN',
      buckets: LATENCY_BUCKETS,
      registers,
    }),
    eventsPending: new Gauge({
      name: 'outpost_events_pending',
      help: 'Unacknowledged events by partition and what they wait for',
      labelNames: ['partition', 'state'] as const,
      registers,
    }),
    oldestPendingAge: new Gauge({
      name: 'outpost_oldest_pending_age_seconds',
      help: 'Age of the oldest unacknowledged event',
      registers,
    }),
    deadLetters: new Gauge({
      name: 'outpost_dead_letters',
      help: 'Events in the dead-letter streams',
      registers,
    }),
    replayReachAge: new Gauge({
      // The name is older than its meaning: without trims, the reach is the oldest entry.
      name: 'outpost_stream_oldest_entry_age_seconds',
      help: 'How far back a replay finds every partition stream whole: the age of the newest entry a trim removed, or of the oldest entry kept when none was trimmed',
      registers,
    }),
    replicationLagBytes: new Gauge({
      name: 'outpost_replication_lag_bytes',
      help: 'Bytes of WAL the replica has still to replay',
      registers,
    }),
    logMemoryRatio: new Gauge({
      name: 'outpost_log_memory_used_ratio',
      help: `Redis used_memory as a share of its maxmemory (0 without a limit); writes are refused from ${1 - DRAIN_RESERVE}, the rest kept for the backlog's drain`,
      registers,
    }),
    logWritable: writableUntilSeenOtherwise(
      new Gauge({
        name: 'outpost_log_writable',
        help: 'Whether Redis takes writes: 0 while it refuses every write (MISCONF after a failed save, a full disk say; READONLY on a replica; NOREPLICAS), 1 otherwise',
        registers,
      }),
    ),
    dependencyUp: new Gauge({
      name: 'outpost_dependency_up',
      help: 'Whether this process reached each dependency at its last scrape: redis (the site log), main (the main database), replica (the read replica); 1 reached, 0 not. The gauges read from an unreachable dependency keep their last value',
      labelNames: ['dependency'] as const,
      registers,
    }),
    replicaReplayPaused: new Gauge({
      name: 'outpost_replica_replay_paused',
      help: 'Whether replay is paused on the read replica (pg_wal_replay_pause()): 1 paused, 0 replaying',
      registers,
    }),
    replicationLagSeconds: new Gauge({
      name: 'outpost_replication_lag_seconds',
      help: 'Seconds since the last transaction the replica replayed, while it is behind',
      registers,
    }),
    endToEnd: new Histogram({
      name: 'outpost_end_to_end_seconds',
      help: 'Time from accepted to replica-confirmed acknowledgement',
      buckets: E2E_BUCKETS,
      registers,
    }),
    breakerState: new Gauge({
      name: 'outpost_circuit_breaker_state',
      help: 'Circuit breaker state: 0 closed, 1 half-open, 2 open',
      labelNames: ['target'] as const,
      registers,
    }),
    integrityAnomalies: new Gauge({
      name: 'outpost_integrity_anomalies',
      help: 'Rows violating each integrity invariant in the latest snapshot',
      labelNames: ['problem'] as const,
      registers,
    }),
    integrityRefreshedAt: new Gauge({
      name: 'outpost_integrity_refreshed_timestamp_seconds',
      help: 'When the integrity snapshot was last refreshed',
      registers,
    }),
    integrityRefreshInterval: new Gauge({
      name: 'outpost_integrity_refresh_interval_seconds',
      help: 'The longest time between two scheduled integrity refreshes by OUTPOST_INTEGRITY_SCHEDULE: the stale alert allows three',
      registers,
    }),
    liveClients: new Gauge({
      name: 'outpost_live_clients',
      help: 'Clients connected to the live event feed',
      labelNames: ['transport'] as const,
      registers,
    }),
    liveMessagesSent: new Counter({
      name: 'outpost_live_messages_sent_total',
      help: 'Live feed messages handed to client sockets',
      labelNames: ['transport'] as const,
      registers,
    }),
    liveClientsDropped: new Counter({
      name: 'outpost_live_clients_dropped_total',
      help: 'Live feed clients disconnected because they did not keep up',
      labelNames: ['transport'] as const,
      registers,
    }),
    apiTokensFileValid: new Gauge({
      name: 'outpost_api_tokens_file_valid',
      help: 'Whether the API token file last read was taken (0: refused, the tokens before it stay in force)',
      registers,
    }),
    replicaBehind: new Counter({
      name: 'outpost_replica_behind_total',
      help: "Connections to the read replica refused because it had not replayed what this site acknowledged: reads answered 503, writes' checks asked the main database",
      registers,
    }),
    integrityCronRunsMissed: new Counter({
      name: 'outpost_integrity_cron_runs_missed_total',
      help: 'Scheduled pg_cron integrity refreshes that did not happen, run by this process instead',
      registers,
    }),
    integrityRefreshDuration: new Gauge({
      name: 'outpost_integrity_refresh_duration_seconds',
      help: 'How long the last integrity refresh took',
      registers,
    }),
  };
};

export type Metrics = ReturnType<typeof createMetrics>;
