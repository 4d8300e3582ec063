import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { EVENT_TYPES } from '../domain/events.ts';
import { createMetrics } from './metrics.ts';

/** DESIGN §9, the metrics contract: name, type and label names, as scrapers and alerts use them. */
const CONTRACT: [name: string, type: string, labels: string[]][] = [
  ['outpost_events_accepted_total', 'counter', ['type']],
  ['outpost_ingest_duration_seconds', 'histogram', []],
  ['outpost_events_applied_total', 'counter', []],
  ['outpost_projection_batch_duration_seconds', 'histogram', []],
  ['outpost_events_pending', 'gauge', ['partition', 'state']],
  ['outpost_oldest_pending_age_seconds', 'gauge', []],
  ['outpost_dead_letters', 'gauge', []],
  ['outpost_replication_lag_bytes', 'gauge', []],
  ['outpost_replication_lag_seconds', 'gauge', []],
  ['outpost_end_to_end_seconds', 'histogram', []],
  ['outpost_circuit_breaker_state', 'gauge', ['target']],
  ['outpost_integrity_anomalies', 'gauge', ['problem']],
  ['outpost_integrity_refreshed_timestamp_seconds', 'gauge', []],
  ['outpost_integrity_refresh_duration_seconds', 'gauge', []],
];

void describe('metrics', () => {
  void it('registers every metric of the contract with its type and labels', async () => {
    const { registry } = createMetrics();
    const types = new Map((await registry.getMetricsAsJSON()).map((m) => [m.name, String(m.type)]));
    // prom-client keeps a metric's label names on the metric, where its typings do not show them.
    const labelsOf = (name: string) =>
      [
        ...((registry.getSingleMetric(name) as { labelNames?: string[] } | undefined)?.labelNames ??
          []),
      ].sort();
    assert.deepEqual(
      CONTRACT.map(([name]) => [name, types.get(name) ?? 'missing', labelsOf(name)]),
      CONTRACT.map(([name, type, labels]) => [name, type, [...labels].sort()]),
    );
  });

  void it("counts every event type's accepted events from 0, before the first of its kind", async () => {
    // Prometheus's increase() takes a series' first sample as its start: a series born at 1
    // would hide the first write of its type from a rate or an alert.
    const { registry } = createMetrics();
    const accepted = (await registry.getSingleMetric('outpost_events_accepted_total')?.get())
      ?.values;
    assert.deepEqual(
      accepted?.map(({ labels, value }) => [labels.type, value]).sort(),
      Object.keys(EVENT_TYPES)
        .map((type) => [type, 0])
        .sort(),
    );
  });

  void it('exports the default process metrics beside them', async () => {
    const names = (await createMetrics().registry.getMetricsAsJSON()).map((m) => m.name);
    for (const name of [
      'process_cpu_seconds_total',
      'process_resident_memory_bytes',
      'nodejs_eventloop_lag_seconds',
    ]) {
      assert.ok(names.includes(name), name);
    }
  });
});
