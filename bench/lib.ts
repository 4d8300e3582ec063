import { type ChildProcess, spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import { fileURLToPath } from 'node:url';
import autocannon from 'autocannon';

export const ROOT = fileURLToPath(new URL('..', import.meta.url));

export const round = (n: number) => Math.round(n * 100) / 100;

export type Server = {
  child: ChildProcess;
  port: number;
  stop: () => Promise<void>;
  peakRssMb: () => number;
};

/** Starts a server script in its own process (never inside the load generator) and waits for it. */
export const startServer = (args: string[], env: NodeJS.ProcessEnv): Promise<Server> =>
  new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', ...args], {
      cwd: ROOT,
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

export type LoadResult = {
  rps: number;
  p50_ms: number;
  p99_ms: number;
  max_ms: number;
  errors: number;
  requests: number;
};

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
    max_ms: round(Math.max(0, ...latencies)),
    errors,
    requests: latencies.length + errors,
  };
};

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
