import { round } from './lib.ts';

/** `p50 / p99 / max`, of whichever a results file of an earlier build has. */
const spread = (...values: unknown[]) =>
  values.map((value) => (value === undefined ? '–' : String(value))).join(' / ');

const cpuParts = (parts: Record<string, number>) =>
  Object.entries(parts)
    .filter(([part]) => part !== 'machine')
    .map(([part, us]) => `${part} ${us}`)
    .join(', ');

// biome-ignore lint/suspicious/noExplicitAny: the results file is read by key
const ingestCpu = (cpu: any) =>
  cpu
    ? `${cpu.bare} / ${cpu.xadd.server} (+ ${cpu.xadd.redis}) / ${cpu.stubbed_append} / ${cpu.outpost.api} (+ ${cpu.outpost.redis})`
    : 'not measured';

// biome-ignore lint/suspicious/noExplicitAny: the results file is read by key
const fewConnections = (few: any) => {
  if (!few) {
    return 'not measured';
  }
  // autocannon's percentiles are whole milliseconds; the mean, connections ÷ rate, is finer.
  const mean = (rps: number) => round((1000 * few.connections) / rps);
  return `${few.xadd.rps} (${mean(few.xadd.rps)}); ${few.outpost.rps} (${mean(few.outpost.rps)})`;
};

/** The markdown table the README embeds: measured figures next to the targets of issue 6. */
// biome-ignore lint/suspicious/noExplicitAny: the results file is read by key
export const renderTable = (r: any): string => {
  const rows: [string, string, string][] = [
    [
      'ingest: bare Hono / Hono+XADD / Outpost (req/s, 64 conn)',
      `${r.ingest.bare_rps} / ${r.ingest.xadd_rps} / ${r.ingest.outpost_rps}`,
      '',
    ],
    [
      'ingest: Outpost ÷ bare, ÷ XADD',
      `${r.ingest.ratio_to_bare} / ${r.ingest.ratio_to_xadd}`,
      '≥ 0.6 / ≥ 0.8',
    ],
    [
      'ingest: Outpost with the append stubbed out (req/s): its HTTP side alone',
      `${r.ingest.outpost_stubbed_append_rps ?? 'not measured'}`,
      '',
    ],
    [
      'ingest: CPU per request (µs), bare / XADD (+ Redis) / stubbed append / Outpost API (+ Redis)',
      ingestCpu(r.ingest.cpu_us_per_request),
      '',
    ],
    [
      "ingest: Redis's time per Outpost request by command (µs; evalsha includes the calls its script makes)",
      r.ingest.cpu_us_per_request?.outpost_redis_by_command
        ? cpuParts(r.ingest.cpu_us_per_request.outpost_redis_by_command)
        : 'not measured',
      '',
    ],
    [
      `ingest at ${r.ingest.few_connections?.connections ?? 4} connections, req/s and mean latency (ms): Hono+XADD; Outpost`,
      fewConnections(r.ingest.few_connections),
      '',
    ],
    [
      'ingest: Outpost p50 / p99 / max (ms)',
      spread(r.ingest.outpost_p50_ms, r.ingest.outpost_p99_ms, r.ingest.outpost_max_ms),
      'p99 ≤ 10',
    ],
    [
      'ingest: bare Hono; Hono+XADD, p50 / p99 / max (ms)',
      `${spread(r.ingest.bare_p50_ms, r.ingest.bare_p99_ms, r.ingest.bare_max_ms)}; ${spread(r.ingest.xadd_p50_ms, r.ingest.xadd_p99_ms, r.ingest.xadd_max_ms)}`,
      '',
    ],
    [
      `drain: ${r.drain.events} events applied / confirmed (events/s)`,
      `${r.drain.outpost_events_per_s} / ${r.drain.outpost_confirmed_events_per_s}`,
      '≥ 15,000',
    ],
    [
      'drain: raw multi-row INSERT ceiling (rows/s), ratio',
      `${r.drain.raw_insert_rows_per_s}, ${r.drain.ratio_to_raw}`,
      '≥ 0.6',
    ],
    [
      'drain: a projection batch, read → recorded as applied, p50 / p99 (ms)',
      spread(r.drain.batch_p50_ms, r.drain.batch_p99_ms),
      '',
    ],
    [
      `a list of units while all ${r.drain.events} wait unprojected, median / max of 3 (ms): one unit's obs_unit_id; a first page of 10`,
      r.drain.list_during_backlog_ms
        ? `${r.drain.list_during_backlog_ms.filtered.median} / ${r.drain.list_during_backlog_ms.filtered.max}; ${r.drain.list_during_backlog_ms.first_page.median} / ${r.drain.list_during_backlog_ms.first_page.max}`
        : 'not measured',
      '',
    ],
    [
      'end to end at 500/s, evenly paced, API + projector processes: p50 / p99 (ms, histogram); p50 / p99 / max (polled)',
      `${spread(r.e2e.rate_500.p50_ms, r.e2e.rate_500.p99_ms)}; ${spread(r.e2e.rate_500.polled_p50_ms, r.e2e.rate_500.polled_p99_ms, r.e2e.rate_500.polled_max_ms)}`,
      '',
    ],
    [
      'end to end at 2000/s, evenly paced, API + projector processes: p50 / p99 (ms, histogram); p50 / p99 / max (polled)',
      `${spread(r.e2e.rate_2000.p50_ms, r.e2e.rate_2000.p99_ms)}; ${spread(r.e2e.rate_2000.polled_p50_ms, r.e2e.rate_2000.polled_p99_ms, r.e2e.rate_2000.polled_max_ms)}`,
      'p99 ≤ replay p99 + 20',
    ],
    [
      'end to end at 2000/s, one all-in-one process: p50 / p99 (ms, histogram); p50 / p99 / max (polled)',
      r.e2e.rate_2000_one_process
        ? `${spread(r.e2e.rate_2000_one_process.p50_ms, r.e2e.rate_2000_one_process.p99_ms)}; ${spread(r.e2e.rate_2000_one_process.polled_p50_ms, r.e2e.rate_2000_one_process.polled_p99_ms, r.e2e.rate_2000_one_process.polled_max_ms)}`
        : 'not measured',
      '',
    ],
    [
      'end to end: a projection batch, read → recorded as applied, p50 / p99 (ms) at 500/s; 2000/s',
      r.e2e.rate_500.batch_p99_ms === undefined
        ? 'not measured'
        : `${r.e2e.rate_500.batch_p50_ms} / ${r.e2e.rate_500.batch_p99_ms}; ${r.e2e.rate_2000.batch_p50_ms} / ${r.e2e.rate_2000.batch_p99_ms}`,
      '',
    ],
    [
      'replica replay latency p50 / p99 / max (ms)',
      spread(r.e2e.replica_replay_p50_ms, r.e2e.replica_replay_p99_ms, r.e2e.replica_replay_max_ms),
      '',
    ],
    [
      'merged read p50 / p99 / max, one client, 0 pending; 10 pending (ms)',
      `${spread(r.reads.pending_0_p50_ms, r.reads.pending_0_p99_ms, r.reads.pending_0_max_ms)}; ${spread(r.reads.pending_10_p50_ms, r.reads.pending_10_p99_ms, r.reads.pending_10_max_ms)}`,
      'p99 ≤ 3 with 10',
    ],
    [
      'floors of a read, one client, p50 / p99 (ms): the same process answering 404; Redis PING; replica SELECT 1',
      r.reads.floors === undefined
        ? 'not measured'
        : `${r.reads.floors.http_404_p50_ms} / ${r.reads.floors.http_404_p99_ms}; ${r.reads.floors.redis_ping_p50_ms} / ${r.reads.floors.redis_ping_p99_ms}; ${r.reads.floors.replica_select_p50_ms} / ${r.reads.floors.replica_select_p99_ms}`,
      '',
    ],
    [
      'merged reads, 16 clients: req/s and p99 (ms), 0; 10 pending',
      `${r.reads.saturated_16_connections?.pending_0_rps} / ${r.reads.saturated_16_connections?.pending_0_p99_ms}; ${r.reads.saturated_16_connections?.pending_10_rps} / ${r.reads.saturated_16_connections?.pending_10_p99_ms}`,
      '',
    ],
    [
      'Redis bytes per pending event; service peak RSS (MB)',
      `${r.memory.redis_bytes_per_pending_event}; ${r.memory.service_rss_mb}`,
      '≤ 500 bytes',
    ],
    ['BullMQ enqueue (req/s), Outpost ÷ BullMQ', `${r.peer.bullmq_rps}, ${r.peer.ratio}`, '≥ 3'],
    [
      'BullMQ enqueue p50 / p99 / max (ms)',
      spread(r.peer.bullmq_p50_ms, r.peer.bullmq_p99_ms, r.peer.bullmq_max_ms),
      '',
    ],
    [
      'BullMQ enqueue → committed p50 / p99 / max (ms)',
      spread(r.peer.bullmq_e2e_p50_ms, r.peer.bullmq_e2e_p99_ms, r.peer.bullmq_e2e_max_ms),
      '',
    ],
    [
      'same work, accepted and committed to PostgreSQL (writes/s): BullMQ / Outpost, ratio',
      r.peer.bullmq_committed_rps === undefined
        ? 'not measured'
        : `${r.peer.bullmq_committed_rps} / ${r.peer.outpost_committed_rps}, ${r.peer.committed_ratio}`,
      '≥ 3',
    ],
    [
      'same work, Outpost append p50 / p99 / max (ms), beside the BullMQ enqueue row',
      spread(
        r.peer.outpost_with_projector_p50_ms,
        r.peer.outpost_with_projector_p99_ms,
        r.peer.outpost_with_projector_max_ms,
      ),
      '',
    ],
    [
      'same work, CPU per committed write (µs), whole machine: BullMQ / Outpost',
      r.peer.bullmq_cpu_us_per_write === undefined
        ? 'not measured'
        : `${r.peer.bullmq_cpu_us_per_write.machine} / ${r.peer.outpost_cpu_us_per_write.machine}`,
      '',
    ],
    [
      'same work, Outpost CPU per committed write (µs) by part',
      r.peer.outpost_cpu_us_per_write === undefined
        ? 'not measured'
        : cpuParts(r.peer.outpost_cpu_us_per_write),
      '',
    ],
    [
      'same work, BullMQ CPU per committed write (µs) by part',
      r.peer.bullmq_cpu_us_per_write === undefined
        ? 'not measured'
        : cpuParts(r.peer.bullmq_cpu_us_per_write),
      '',
    ],
    [
      `integrity refresh (s, scaled to 1M events; measured on ${r.integrity.events})`,
      `${r.integrity.refresh_seconds_1m_events}`,
      '',
    ],
    [
      '/metrics p50 / p99 / max during a refresh (ms)',
      spread(
        r.integrity.scrape_p50_ms_during_refresh,
        r.integrity.scrape_p99_ms_during_refresh,
        r.integrity.scrape_max_ms_during_refresh,
      ),
      '',
    ],
  ];
  const header = `Measured ${r.date} on ${r.machine.cpus} × ${r.machine.model}${r.quick ? ' (quick run)' : ''}.\n\n| scenario | measured | target |\n|---|---|---|\n`;
  return `${header}${rows.map((row) => `| ${row.join(' | ')} |`).join('\n')}\n`;
};
