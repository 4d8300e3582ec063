import { type ChildProcess, spawn } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import http from 'node:http';
import { basename } from 'node:path';
import autocannon from 'autocannon';
import { bundle, SERVICE_ENTRY } from '../src/bundle.ts';
import { PROJECT_ROOT, projectPath } from '../src/paths.ts';

export const round = (n: number) => Math.round(n * 100) / 100;

export type Server = {
  child: ChildProcess;
  port: number;
  stop: () => Promise<void>;
  peakRssMb: () => number;
};

export type ServerOptions = {
  /** Arguments of the server's own command line. */
  args?: string[];
  /** Arguments for node, before the script (`--cpu-prof`, say). */
  nodeArgs?: string[];
};

/**
 * The script that runs `entry`: the service through bin/outpost.js, exactly as deployed (it
 * builds its bundle when stale); the bench's own servers bundled the same way, beside it in dist/
 * (one level below the root, as src/paths.ts expects), so the baselines and the peer are not
 * handicapped against Outpost.
 */
const runnable = async (entry: string): Promise<string> => {
  if (entry === SERVICE_ENTRY) {
    return projectPath('bin/outpost.js');
  }
  const script = projectPath(`dist/bench-${basename(entry, '.ts')}.mjs`);
  await bundle(projectPath(entry), script, 'bench');
  return script;
};

/** Starts a server in its own process (never inside the load generator) and waits for it. */
export const startServer = async (
  entry: string,
  env: NodeJS.ProcessEnv,
  { args = [], nodeArgs = [] }: ServerOptions = {},
): Promise<Server> =>
  spawnServer([...nodeArgs, '--enable-source-maps', await runnable(entry), ...args], env);

const spawnServer = (args: string[], env: NodeJS.ProcessEnv): Promise<Server> =>
  new Promise((resolve, reject) => {
    const child = spawn(process.execPath, args, {
      cwd: PROJECT_ROOT,
      env: { PATH: process.env.PATH, HOME: process.env.HOME, LOG_LEVEL: 'warn', ...env },
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let output = '';
    const timer = setTimeout(
      () => reject(new Error(`${args.join(' ')} did not start: ${output}`)),
      60_000,
    );
    child.stdout?.on('data', (chunk: Buffer) => {
      output += chunk.toString();
      const match =
        /listening (\d+)/.exec(output) ?? /"port":(\d+),"role"[^}]*"msg":"started"/.exec(output);
      if (match) {
        clearTimeout(timer);
        resolve({
          child,
          port: Number(match[1]),
          peakRssMb: () => peakRss(child.pid),
          stop: () =>
            new Promise((done) => {
              if (child.exitCode !== null) {
                done();
                return;
              }
              child.once('exit', () => done());
              child.kill('SIGTERM');
            }),
        });
      }
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`${args.join(' ')} exited with ${code}: ${output.slice(-2000)}`));
    });
  });

/** Peak resident set size (VmHWM) of a process, in MB. */
const peakRss = (pid: number | undefined): number => {
  if (pid === undefined) {
    return 0;
  }
  try {
    const kb = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1];
    return Math.round(Number(kb) / 1024);
  } catch {
    return 0;
  }
};

/** Linux counts CPU time in clock ticks of 10 ms (USER_HZ is 100 on every Linux we run on). */
const TICK_MS = 10;

type ProcessCpu = { comm: string; ppid: number; cpuMs: number };

/** Every process's name, parent and CPU time (user + system, ms) so far, from /proc. */
const processTable = (): Map<number, ProcessCpu> => {
  const table = new Map<number, ProcessCpu>();
  for (const name of readdirSync('/proc')) {
    const pid = Number(name);
    if (!Number.isInteger(pid)) {
      continue;
    }
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      // The name may contain spaces and parentheses: the fields after it start at the last ')'.
      const comm = stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'));
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      table.set(pid, {
        comm,
        ppid: Number(fields[1]),
        cpuMs: (Number(fields[11]) + Number(fields[12])) * TICK_MS,
      });
    } catch {
      // The process ended while the table was read.
    }
  }
  return table;
};

const cmdline = (pid: number) => {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
  } catch {
    return [];
  }
};

/** CPU time (ms) all cores of the machine have spent busy so far: every process, the kernel. */
const machineBusyMs = (): number => {
  const [, user, nice, system, , , irq, softirq, steal] = (
    readFileSync('/proc/stat', 'utf8').split('\n')[0] ?? ''
  )
    .split(/\s+/)
    .map(Number);
  return (
    ((user ?? 0) + (nice ?? 0) + (system ?? 0) + (irq ?? 0) + (softirq ?? 0) + (steal ?? 0)) *
    TICK_MS
  );
};

export type CpuComponents = {
  /** The bench's own stack: its data directory names the PostgreSQL servers, its port Redis. */
  stackDir: string;
  redisPort: number;
  /** Processes under test, by label. */
  servers: Record<string, Server>;
};

/**
 * Which part of the set-up a process belongs to: a server under test, the load generator (this
 * process), Redis, or the main or replica PostgreSQL (a backend by its postmaster's data
 * directory). Other processes are left out; the machine total minus the parts is "other".
 */
const componentOf = (
  pid: number,
  table: Map<number, ProcessCpu>,
  parts: CpuComponents,
  serverPids: Map<number, string>,
): string | undefined => {
  const server = serverPids.get(pid);
  if (server) {
    return server;
  }
  if (pid === process.pid) {
    return 'load generator';
  }
  const { comm, ppid } = table.get(pid) ?? { comm: '', ppid: 0 };
  if (comm === 'redis-server') {
    return cmdline(pid).some((arg) => arg.endsWith(`:${parts.redisPort}`)) ? 'redis' : undefined;
  }
  if (comm === 'postgres') {
    const postmaster = table.get(ppid)?.comm === 'postgres' ? ppid : pid;
    const args = cmdline(postmaster);
    const dataDir = args[args.indexOf('-D') + 1] ?? '';
    if (dataDir.startsWith(parts.stackDir)) {
      return dataDir.endsWith('replica') ? 'postgres_replica' : 'postgres_main';
    }
  }
  return undefined;
};

/**
 * Starts counting CPU time; the returned function tells what each part used since (ms), and the
 * whole machine (every core, every process, the kernel).
 */
export const cpuMeter = (parts: CpuComponents) => {
  const serverPids = new Map(
    Object.entries(parts.servers).map(([label, server]) => [server.child.pid ?? -1, label]),
  );
  const byComponent = () => {
    const table = processTable();
    const totals: Record<string, number> = {};
    for (const [pid, { cpuMs }] of table) {
      const component = componentOf(pid, table, parts, serverPids);
      if (component) {
        totals[component] = (totals[component] ?? 0) + cpuMs;
      }
    }
    return totals;
  };
  const machineAtStart = machineBusyMs();
  const atStart = byComponent();
  return () => {
    const now = byComponent();
    const used: Record<string, number> = {};
    for (const [component, ms] of Object.entries(now)) {
      used[component] = ms - (atStart[component] ?? 0);
    }
    const machine = machineBusyMs() - machineAtStart;
    used.other = machine - Object.values(used).reduce((a, b) => a + b, 0);
    used.machine = machine;
    return used;
  };
};

export type LoadResult = {
  rps: number;
  p50_ms: number;
  p99_ms: number;
  max_ms: number;
  errors: number;
  requests: number;
};

/** A load's throughput and latency, as the results file gives them. */
export const latencies = ({ rps, p50_ms, p99_ms, max_ms }: LoadResult) => ({
  rps,
  p50_ms,
  p99_ms,
  max_ms,
});

export const load = async (options: autocannon.Options): Promise<LoadResult> => {
  const result = await autocannon({ connections: 64, ...options });
  return {
    rps: Math.round(result.requests.average),
    p50_ms: result.latency.p50,
    p99_ms: result.latency.p99,
    max_ms: result.latency.max,
    errors: result.errors + result.timeouts + result.non2xx,
    requests: result.requests.total,
  };
};

/**
 * Requests at a fixed rate, evenly spaced: every millisecond tick sends what is due by then.
 * autocannon's `overallRate` cannot do this: each connection sends its whole per-second quota
 * back to back when the second starts, then waits, so "500/s" arrives as bursts of 500 and the
 * latency measured is that of draining a burst.
 */
export const pacedLoad = async (options: {
  url: string;
  body: string;
  rate: number;
  durationS: number;
  connections?: number;
}): Promise<LoadResult> => {
  const agent = new http.Agent({ keepAlive: true, maxSockets: options.connections ?? 64 });
  const target = new URL(options.url);
  const latencies: number[] = [];
  let errors = 0;
  const inflight = new Set<Promise<void>>();
  const send = () => {
    const t0 = performance.now();
    const done = new Promise<void>((resolve) => {
      const request = http.request(
        {
          agent,
          host: target.hostname,
          port: target.port,
          path: target.pathname,
          method: 'POST',
          headers: {
            'content-type': 'application/json',
            'content-length': Buffer.byteLength(options.body),
          },
        },
        (response) => {
          response.resume();
          response.once('end', () => {
            if (response.statusCode === 201) {
              latencies.push(performance.now() - t0);
            } else {
              errors += 1;
            }
            resolve();
          });
        },
      );
      request.once('error', () => {
        errors += 1;
        resolve();
      });
      request.end(options.body);
    });
    inflight.add(done);
    void done.then(() => inflight.delete(done));
  };
  const started = performance.now();
  const total = Math.round(options.rate * options.durationS);
  let sent = 0;
  while (sent < total) {
    const due = Math.min(total, Math.floor(((performance.now() - started) / 1000) * options.rate));
    for (; sent < due; sent += 1) {
      send();
    }
    await sleep(1);
  }
  const elapsedS = (performance.now() - started) / 1000;
  await Promise.all(inflight);
  agent.destroy();
  return {
    rps: Math.round(latencies.length / elapsedS),
    p50_ms: round(percentile(latencies, 50)),
    p99_ms: round(percentile(latencies, 99)),
    max_ms: maxOf(latencies),
    errors,
    requests: latencies.length + errors,
  };
};

/** The largest of `values`, 0 for none; a loop, as spreading 120,000 samples into Math.max risks the stack. */
export const maxOf = (values: readonly number[]): number =>
  round(values.reduce((max, value) => Math.max(max, value), 0));

export const percentile = (values: readonly number[], p: number): number => {
  if (values.length === 0) {
    return 0;
  }
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)] ?? 0;
};

/** Cumulative buckets of a Prometheus histogram from /metrics text. */
export const histogramBuckets = (metrics: string, name: string): Map<number, number> => {
  const buckets = new Map<number, number>();
  const pattern = new RegExp(`^${name}_bucket\\{le="([^"]+)"\\} (\\d+)`, 'gm');
  for (const match of metrics.matchAll(pattern)) {
    buckets.set(
      match[1] === '+Inf' ? Number.POSITIVE_INFINITY : Number(match[1]),
      Number(match[2]),
    );
  }
  return buckets;
};

/** A quantile of the observations between two scrapes, interpolated within buckets (seconds). */
export const histogramQuantile = (
  before: Map<number, number>,
  after: Map<number, number>,
  q: number,
): number => {
  const bounds = [...after.keys()].sort((a, b) => a - b);
  const counts = bounds.map((b) => (after.get(b) ?? 0) - (before.get(b) ?? 0));
  const total = counts.at(-1) ?? 0;
  if (total === 0) {
    return 0;
  }
  const rank = q * total;
  let lower = 0;
  let below = 0;
  for (const [i, bound] of bounds.entries()) {
    const count = counts[i] ?? 0;
    if (count >= rank) {
      if (!Number.isFinite(bound)) {
        return lower;
      }
      return lower + ((bound - lower) * (rank - below)) / Math.max(1, count - below);
    }
    lower = bound;
    below = count;
  }
  return lower;
};

export const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

export const until = async (
  condition: () => Promise<boolean>,
  what: string,
  timeoutMs = 600_000,
) => {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) {
      throw new Error(`bench: timed out waiting for ${what}`);
    }
    await sleep(100);
  }
};

/**
 * Latency of `call` made back to back by one client for `durationS` seconds, to the hundredth of
 * a millisecond (autocannon counts whole milliseconds): p50, p99 and max in ms.
 */
export const backToBack = async (call: () => Promise<unknown>, durationS: number) => {
  const samples: number[] = [];
  const end = performance.now() + durationS * 1000;
  while (performance.now() < end) {
    const start = performance.now();
    await call();
    samples.push(performance.now() - start);
  }
  return {
    p50_ms: round(percentile(samples, 50)),
    p99_ms: round(percentile(samples, 99)),
    max_ms: maxOf(samples),
  };
};

/**
 * Redis's own time per request in each command, from `INFO commandstats` after a `CONFIG
 * RESETSTAT`: µs, largest first, those under 0.05 left out. Commands a script calls are counted
 * under their own names and again inside the script's (`evalsha`).
 */
export const commandCosts = (commandstats: string, requests: number): Record<string, number> => {
  const costs = [...commandstats.matchAll(/^cmdstat_([\w|]+):calls=\d+,usec=(\d+)/gm)]
    .map(([, command, usec]) => [command ?? '', Number(usec) / Math.max(1, requests)] as const)
    .filter(([, us]) => us >= 0.05)
    .sort((a, b) => b[1] - a[1]);
  return Object.fromEntries(costs.map(([command, us]) => [command, Math.round(us * 10) / 10]));
};
