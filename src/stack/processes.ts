import { execFile, spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { createConnection } from 'node:net';
import { basename, join, resolve, sep } from 'node:path';
import { promisify } from 'node:util';

const execFileAsync = promisify(execFile);

export const isRoot = (): boolean => process.getuid?.() === 0;

/** PostgreSQL refuses to run as root, so as root every server command runs as `postgres`. */
export const runPg = async (binary: string, args: string[]): Promise<string> => {
  const [file, argv] = isRoot()
    ? ['runuser', ['-u', 'postgres', '--', binary, ...args]]
    : [binary, args];
  try {
    const { stdout } = await execFileAsync(file, argv, { maxBuffer: 16 * 1024 * 1024 });
    return stdout;
  } catch (err) {
    const detail = (err as { stderr?: string }).stderr?.trim();
    // pg_ctl's first argument is what it was asked to do; other programs' are options (-D).
    const program = basename(binary) === 'pg_ctl' ? `${binary} ${args[0] ?? ''}` : binary;
    throw new Error(`${program} failed${detail ? `: ${detail}` : ''}`, {
      cause: err,
    });
  }
};

/**
 * As root, the first folder on the way to `dir` (itself included) that `postgres` cannot enter:
 * a checkout under a home folder closed to others (/root is 0700) failed in initdb with a bare
 * "Permission denied".
 */
export const closedToPostgres = (dir: string): string | undefined => {
  if (!isRoot()) {
    return undefined;
  }
  const parts = resolve(dir).split(sep).filter(Boolean);
  for (let depth = 1; depth <= parts.length; depth += 1) {
    const path = sep + parts.slice(0, depth).join(sep);
    if (spawnSync('runuser', ['-u', 'postgres', '--', 'test', '-x', path]).status !== 0) {
      return path;
    }
  }
  return undefined;
};

export const run = async (file: string, args: string[]): Promise<string> => {
  const { stdout } = await execFileAsync(file, args, { maxBuffer: 16 * 1024 * 1024 });
  return stdout;
};

/** The oldest PostgreSQL the stack runs, as DESIGN sets it. */
export const MIN_POSTGRES_MAJOR = 15;

/**
 * The major version in what a server prints for `--version`: `postgres (PostgreSQL) 15.19 …`,
 * `postgres (PostgreSQL) 18beta1` or `Redis server v=7.0.15 …`; undefined for anything else.
 */
export const majorVersionOf = (versionOutput: string): number | undefined => {
  const match = /(?:\(PostgreSQL\) |\bv=)(\d+)(?!\d)/.exec(versionOutput);
  return match ? Number(match[1]) : undefined;
};

/** The major version `binary --version` reports, or undefined when it cannot tell. */
export const reportedMajorVersion = (binary: string): number | undefined => {
  const result = spawnSync(binary, ['--version'], { encoding: 'utf8' });
  return result.status === 0 ? majorVersionOf(result.stdout) : undefined;
};

export type PgInstall = { dir: string; major: number | undefined };

/**
 * The PostgreSQL server installations on the machine (Debian keeps them out of PATH): pg_config's
 * first, then Debian's, newest first; each with the major version its server reports.
 */
export const pgServerInstalls = (): PgInstall[] => {
  const fromConfig = spawnSync('pg_config', ['--bindir'], { encoding: 'utf8' });
  const candidates: string[] = [];
  if (fromConfig.status === 0) {
    candidates.push(fromConfig.stdout.trim());
  }
  const debianRoot = '/usr/lib/postgresql';
  if (existsSync(debianRoot)) {
    const versions = readdirSync(debianRoot)
      .filter((v) => /^\d+$/.test(v))
      .sort((a, b) => Number(b) - Number(a));
    candidates.push(...versions.map((v) => join(debianRoot, v, 'bin')));
  }
  return [...new Set(candidates)]
    .filter((dir) => existsSync(join(dir, 'initdb')) && existsSync(join(dir, 'postgres')))
    .map((dir) => ({ dir, major: reportedMajorVersion(join(dir, 'postgres')) }));
};

/**
 * The installation to run a cluster with: the one of the cluster's own major version when the
 * cluster exists (a server of another version refuses its data directory, so after a newer
 * PostgreSQL is installed beside the stack's, the stack keeps to its own), else the first one
 * recent enough.
 */
export const pickPgInstall = (
  installs: PgInstall[],
  clusterMajor: number | undefined,
): PgInstall | undefined =>
  clusterMajor === undefined
    ? installs.find(({ major }) => major !== undefined && major >= MIN_POSTGRES_MAJOR)
    : installs.find(({ major }) => major === clusterMajor);

/** The major version a data directory was made by (its PG_VERSION), or undefined when none is there. */
export const clusterMajorOf = (dataDir: string): number | undefined => {
  const file = join(dataDir, 'PG_VERSION');
  if (!existsSync(file)) {
    return undefined;
  }
  const major = Number.parseInt(readFileSync(file, 'utf8').trim(), 10);
  return Number.isNaN(major) ? undefined : major;
};

/** The server binaries that run the cluster in `dataDir` (or would make a new one there). */
export const findPgBinDir = (dataDir: string): string | undefined =>
  pickPgInstall(pgServerInstalls(), clusterMajorOf(dataDir))?.dir;

export const findOnPath = (name: string): string | undefined => {
  const result = spawnSync('sh', ['-c', `command -v ${name}`], { encoding: 'utf8' });
  return result.status === 0 ? result.stdout.trim() : undefined;
};

export const pgCronInstalled = (pgBinDir: string): boolean => {
  const libdir = spawnSync(join(pgBinDir, 'pg_config'), ['--pkglibdir'], { encoding: 'utf8' });
  const dir = libdir.status === 0 ? libdir.stdout.trim() : join(pgBinDir, '..', 'lib');
  return existsSync(join(dir, 'pg_cron.so'));
};

export const isPortOpen = (port: number, host = '127.0.0.1'): Promise<boolean> =>
  new Promise((resolve) => {
    const socket = createConnection({ port, host });
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });

/**
 * What a Redis on `port` answers a PING: `pong` once it serves, `loading` while it reads its
 * append-only file (which it may yet refuse, and exit: taken for up, `stack up` said "running" and
 * `npm start` went on to serve), `other` for any other answer (a password asked), undefined when
 * nothing answers within a second (not listening, or stopped with its port still open). An open
 * port is not enough: Redis listens before it reads its data.
 */
export const redisPing = (
  port: number,
  host = '127.0.0.1',
): Promise<'pong' | 'loading' | 'other' | undefined> =>
  new Promise((resolve) => {
    const socket = createConnection({ port, host });
    const done = (answer: 'pong' | 'loading' | 'other' | undefined) => {
      socket.destroy();
      resolve(answer);
    };
    socket.setTimeout(1_000, () => done(undefined));
    socket.once('connect', () => socket.write('PING\r\n'));
    socket.once('data', (reply: Buffer) => {
      const text = reply.toString();
      done(text.startsWith('+PONG') ? 'pong' : text.startsWith('-LOADING') ? 'loading' : 'other');
    });
    socket.once('error', () => done(undefined));
    socket.once('close', () => done(undefined));
  });

/**
 * Whether `pid` is a live process whose command line names `marks` (the server's program and its
 * data directory, say). A pid file outlives a reboot or a container restart, and its number may
 * then belong to anything: alive alone would make a stopped stack look running, and keep `up` from
 * starting it. Where /proc cannot tell, alive is all there is to go on.
 */
export const isProcessOf = (pid: number, ...marks: string[]): boolean => {
  if (!isAlive(pid)) {
    return false;
  }
  const args = commandLineOf(pid);
  if (args === undefined) {
    return true;
  }
  const commandLine = args.join(' ');
  return marks.every((mark) => commandLine.includes(mark));
};

/** A process's arguments, as /proc shows them; undefined if it cannot be read. */
export const commandLineOf = (pid: number): string[] | undefined => {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
  } catch {
    return undefined;
  }
};

export const isAlive = (pid: number): boolean => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

export const waitUntil = async (
  condition: () => Promise<boolean> | boolean,
  what: string,
  timeoutMs = 60_000,
  signal?: AbortSignal,
): Promise<void> => {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    signal?.throwIfAborted();
    if (await condition()) {
      return;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
};
