import { spawnSync } from 'node:child_process';
import {
  chmodSync,
  chownSync,
  existsSync,
  mkdirSync,
  readFileSync,
  realpathSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import pg from 'pg';
import { MIN_REDIS_MAJOR } from '../log/redis.ts';
import { reasonOf } from '../reason.ts';
import {
  closedToPostgres,
  clusterMajorOf,
  commandLineOf,
  findOnPath,
  findPgBinDir,
  isAlive,
  isPortOpen,
  isProcessOf,
  isRoot,
  MIN_POSTGRES_MAJOR,
  pgCronInstalled,
  pgServerInstalls,
  redisPing,
  reportedMajorVersion,
  run,
  runPg,
  waitUntil,
} from './processes.ts';

export type StackOptions = {
  dir: string;
  mainPort: number;
  replicaPort: number;
  redisPort: number;
  /** `auto` preloads pg_cron when the package is installed. */
  pgCron: boolean | 'auto';
  appendfsync: 'always' | 'everysec';
  /** Tests trade crash safety of PostgreSQL's own files for speed; the local stack never does. */
  fastUnsafePostgres?: boolean;
};

export type StackUrls = { main: { url: string }; replica: { url: string }; redis: { url: string } };
export type StackStatus = StackUrls & {
  running: boolean;
  main: { url: string; state: string };
  replica: { url: string; state: string };
  redis: { url: string; state: string };
  pg_cron: boolean;
};

const DATABASE = 'outpost';
const STATE_FILE = 'stack.json';
const STACK_FOLDER = '.outpost';
const STREAM_NODE_MAX_BYTES = 16_384;

type StackPaths = { main: string; replica: string; redis: string; logs: string; state: string };
const pathsOf = (dir: string): StackPaths => ({
  main: join(dir, 'pg-main'),
  replica: join(dir, 'pg-replica'),
  redis: join(dir, 'redis'),
  logs: join(dir, 'logs'),
  state: join(dir, STATE_FILE),
});

export const urlsOf = (
  o: Pick<StackOptions, 'mainPort' | 'replicaPort' | 'redisPort'>,
): StackUrls => ({
  main: { url: `postgres://postgres@127.0.0.1:${o.mainPort}/${DATABASE}` },
  replica: { url: `postgres://postgres@127.0.0.1:${o.replicaPort}/${DATABASE}` },
  redis: { url: `redis://127.0.0.1:${o.redisPort}` },
});

/** The server binaries for the cluster in `dataDir`, or why there are none. */
const requirePgBinDir = (dataDir: string): string => {
  const dir = findPgBinDir(dataDir);
  if (dir) {
    return dir;
  }
  const installs = pgServerInstalls();
  const found = installs.map(
    ({ dir, major }) => `${major === undefined ? 'an unknown version' : major} in ${dir}`,
  );
  const clusterMajor = clusterMajorOf(dataDir);
  if (clusterMajor !== undefined && installs.length > 0) {
    throw new Error(
      `the stack's PostgreSQL data in ${dataDir} is of version ${clusterMajor}, whose server is not installed (found ${found.join(', ')}): install it with: apt-get install -y postgresql-${clusterMajor}; or start over on the installed one with: outpost stack reset (it deletes the stack's data)`,
    );
  }
  throw new Error(
    found.length === 0
      ? 'PostgreSQL server binaries not found; install them with: apt-get install -y postgresql postgresql-15-cron'
      : `PostgreSQL ${MIN_POSTGRES_MAJOR} or later is needed, and found only ${found.join(', ')}; install it with: apt-get install -y postgresql-15 postgresql-15-cron`,
  );
};

const requireRedisServer = (): string => {
  const bin = findOnPath('redis-server');
  if (!bin) {
    throw new Error('redis-server not found; install it with: apt-get install -y redis-server');
  }
  const major = reportedMajorVersion(bin);
  if (major !== undefined && major < MIN_REDIS_MAJOR) {
    throw new Error(
      `Redis ${MIN_REDIS_MAJOR} or later is needed, and ${bin} is Redis ${major}; install a newer one with: apt-get install -y redis-server (Debian 12 has 7.0)`,
    );
  }
  return bin;
};

const giveToPostgres = (path: string) => {
  if (isRoot()) {
    const uid = Number(idOf('postgres', '-u'));
    const gid = Number(idOf('postgres', '-g'));
    chownSync(path, uid, gid);
  }
};

const idOf = (user: string, flag: '-u' | '-g'): string => {
  const passwd = readFileSync('/etc/passwd', 'utf8').split('\n');
  const line = passwd.find((l) => l.startsWith(`${user}:`));
  if (!line) {
    throw new Error(`user ${user} not found; install PostgreSQL from the distribution's packages`);
  }
  const fields = line.split(':');
  return (flag === '-u' ? fields[2] : fields[3]) ?? '0';
};

const pgIsRunning = (dataDir: string): boolean => {
  const pidFile = join(dataDir, 'postmaster.pid');
  if (!existsSync(pidFile)) {
    return false;
  }
  const pid = Number(readFileSync(pidFile, 'utf8').split('\n')[0]);
  return Number.isInteger(pid) && isPostgresOf(pid, dataDir);
};

/**
 * Whether `pid` is the postmaster of `dataDir`: the directory its `-D` names is that one, however
 * either is spelt (`.outpost` may be a link). By the directory's last part alone (`pg-main`), any
 * other stack's postmaster, a test's say, would pass.
 */
const isPostgresOf = (pid: number, dataDir: string): boolean => {
  if (!isProcessOf(pid, 'postgres')) {
    return false;
  }
  const args = commandLineOf(pid);
  if (args === undefined) {
    // Not to be looked into: taken for ours, as a pid file is never removed on a guess.
    return true;
  }
  const named = args.includes('-D') ? args[args.indexOf('-D') + 1] : undefined;
  return named !== undefined && sameDirectory(named, dataDir);
};

const sameDirectory = (a: string, b: string): boolean => {
  try {
    return realpathSync(a) === realpathSync(b);
  } catch {
    return false;
  }
};

/**
 * A postmaster.pid naming a live process that is not this directory's postmaster (its number
 * reused after a reboot, by anything, another PostgreSQL's included): PostgreSQL itself would
 * refuse to start beside it ("lock file already exists") when that process runs as the same user.
 * Removed, as PostgreSQL removes one naming a dead process.
 */
const removeStalePidFile = (dataDir: string): void => {
  const pidFile = join(dataDir, 'postmaster.pid');
  if (!existsSync(pidFile)) {
    return;
  }
  const pid = Number(readFileSync(pidFile, 'utf8').split('\n')[0]);
  if (Number.isInteger(pid) && isAlive(pid) && !isPostgresOf(pid, dataDir)) {
    rmSync(pidFile, { force: true });
  }
};

/**
 * The Redis this stack started, by its pid file: a redis-server working in `redisDir` (Redis
 * moves into its `--dir`). Any redis-server would pass by name alone, and after a reboot a stale
 * pid file can name the machine's own Redis, or another stack's, which `down` would then stop.
 */
const redisPid = (redisDir: string): number | undefined => {
  const pidFile = join(redisDir, 'redis.pid');
  if (!existsSync(pidFile)) {
    return undefined;
  }
  const pid = Number(readFileSync(pidFile, 'utf8').trim());
  return Number.isInteger(pid) && isProcessOf(pid, 'redis-server') && workingIn(pid, redisDir)
    ? pid
    : undefined;
};

/** Another user's process cannot be looked into, so it is not the Redis this stack started. */
const workingIn = (pid: number, dir: string): boolean => sameDirectory(`/proc/${pid}/cwd`, dir);

const pgSettings = (o: StackOptions, port: number, cron: boolean): string[] => {
  const settings: Record<string, string> = {
    listen_addresses: '127.0.0.1',
    port: String(port),
    // TCP only, as every client of the stack connects: a socket in the data folder of a deep
    // checkout would pass the 107 bytes the kernel allows its path, and PostgreSQL not start.
    unix_socket_directories: '',
    wal_level: 'replica',
    max_wal_senders: '10',
    // WAL kept for a replica that was down or cut off a while (deploy/postgres/outpost.conf):
    // without it, one that missed a checkpoint's recycling could never catch up.
    wal_keep_size: '1GB',
    hot_standby: 'on',
    hot_standby_feedback: 'on',
    max_connections: '200',
  };
  if (cron) {
    settings.shared_preload_libraries = 'pg_cron';
    settings['cron.database_name'] = DATABASE;
  }
  if (o.fastUnsafePostgres) {
    Object.assign(settings, { fsync: 'off', full_page_writes: 'off', synchronous_commit: 'off' });
  }
  return Object.entries(settings).flatMap(([key, value]) => ['-c', `${key}=${value}`]);
};

const startPg = async (
  o: StackOptions,
  bin: string,
  dataDir: string,
  port: number,
  cron: boolean,
) => {
  if (pgIsRunning(dataDir)) {
    return;
  }
  removeStalePidFile(dataDir);
  const logFile = join(
    pathsOf(o.dir).logs,
    `${dataDir.endsWith('replica') ? 'replica' : 'main'}.log`,
  );
  const options = pgSettings(o, port, cron)
    .map((part) => (part === '-c' ? part : `"${part}"`))
    .join(' ');
  await startOnFixedPort(`PostgreSQL in ${dataDir}`, port, logFile, PG_PORT_BUSY, async () => {
    await runPg(join(bin, 'pg_ctl'), [
      'start',
      '-w',
      '-t',
      '120',
      '-D',
      dataDir,
      '-l',
      logFile,
      '-o',
      options,
    ]);
  });
};

const PG_PORT_BUSY = /could not bind .*Address already in use/;
const REDIS_PORT_BUSY = /Could not create server TCP listening socket .*Address already in use/;

/**
 * Starts a server on one of the stack's fixed ports with `start`, which resolves once it serves
 * and throws if it does not. The fixed ports lie in the kernel's ephemeral range: an outgoing
 * connection may hold one as its local port for a moment. Nothing listens there (that was
 * checked), so a start whose log says the port was busy is tried again; any other failure is
 * said with what the server's log said, which is its cause.
 */
const startOnFixedPort = async (
  what: string,
  port: number,
  logFile: string,
  busy: RegExp,
  start: (saidSince: () => string) => Promise<void>,
): Promise<void> => {
  for (let attempt = 1; ; attempt += 1) {
    const logged = existsSync(logFile) ? statSync(logFile).size : 0;
    // What the server wrote to its log in this attempt.
    const saidSince = () =>
      existsSync(logFile) ? readFileSync(logFile).subarray(logged).toString() : '';
    try {
      await start(saidSince);
      return;
    } catch (err) {
      const said = saidSince();
      if (!busy.test(said)) {
        const lastLines = said.trim().split('\n').slice(-5).join('\n');
        throw new Error(
          `${what} did not start${lastLines ? `; its log (${logFile}) ends:\n${lastLines}` : ` (${reasonOf(err)})`}`,
          { cause: err },
        );
      }
      if (attempt === PORT_BUSY_ATTEMPTS) {
        throw new Error(
          `port ${port} stayed in use as the local end of some connection; reserve it so the kernel never hands it out: add it to net.ipv4.ip_local_reserved_ports (scripts/setup-system.sh reserves the local stack's, as root)`,
          { cause: err },
        );
      }
      await new Promise((done) => setTimeout(done, 500));
    }
  }
};

/** How long a starting Redis may answer nothing, not even LOADING, before `up` gives up. */
const REDIS_SILENCE_MS = 60_000;

/**
 * Starts the stack's Redis and waits until it serves. Daemonized, it forks before it binds its
 * port or reads its append-only file, so its start succeeds either way: a Redis that then exits
 * (the port busy, a damaged AOF, a folder it cannot write) is told by its pid file naming a process
 * gone, or by its log saying it aborts, at once rather than after a minute's wait for the port.
 */
const startRedis = async (redisServer: string, o: StackOptions, paths: StackPaths) => {
  const pidFile = join(paths.redis, 'redis.pid');
  const logFile = join(paths.redis, 'redis.log');
  await startOnFixedPort(
    `Redis in ${paths.redis}`,
    o.redisPort,
    logFile,
    REDIS_PORT_BUSY,
    async (saidSince) => {
      // Not this stack's Redis (redisPid said so): its number must not be taken for the new one's.
      rmSync(pidFile, { force: true });
      await run(redisServer, [
        '--port',
        String(o.redisPort),
        '--bind',
        '127.0.0.1',
        '--dir',
        paths.redis,
        '--appendonly',
        'yes',
        '--appendfsync',
        o.appendfsync,
        // Stream nodes of 16 KB instead of 4: ≈ 50 entries share a node's header and field names
        // instead of ≈ 12, ≈ 20 bytes less Redis memory per pending event (docs/benchmarks.md, memory).
        '--stream-node-max-bytes',
        String(STREAM_NODE_MAX_BYTES),
        '--save',
        '',
        '--daemonize',
        'yes',
        '--pidfile',
        pidFile,
        '--logfile',
        logFile,
      ]);
      const exited = () => {
        const pid = existsSync(pidFile) ? Number(readFileSync(pidFile, 'utf8').trim()) : undefined;
        const aborted = saidSince().includes('aborting');
        // Gone, or a zombie where nothing reaps orphans (a container's init): no redis-server.
        return aborted || (pid !== undefined && !isProcessOf(pid, 'redis-server'));
      };
      // As long as it reads its append-only file (a large one takes minutes), and a minute more.
      let heardAt = Date.now();
      await waitUntil(
        async () => {
          const answer = await redisPing(o.redisPort);
          if (answer === 'loading') {
            heardAt = Date.now();
          }
          if (answer === undefined && Date.now() - heardAt > REDIS_SILENCE_MS) {
            throw new Error(
              `Redis on ${o.redisPort} did not answer for ${REDIS_SILENCE_MS / 1000} s`,
            );
          }
          // Any other answer (a password asked) is a server that serves, as before.
          return answer === 'pong' || answer === 'other' || exited();
        },
        `Redis on ${o.redisPort}`,
        Number.MAX_SAFE_INTEGER,
      );
      const answer = await redisPing(o.redisPort);
      if (answer === undefined || answer === 'loading') {
        throw new Error('Redis exited as it started');
      }
    },
  );
};

/** How often a PostgreSQL start that found its port taken by a connection is tried. */
const PORT_BUSY_ATTEMPTS = 10;

const query = async <T extends pg.QueryResultRow>(url: string, text: string): Promise<T[]> => {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 5000 });
  await client.connect();
  try {
    return (await client.query<T>(text)).rows;
  } finally {
    await client.end();
  }
};

const canQuery = async (url: string): Promise<boolean> => {
  try {
    await query(url, 'select 1');
    return true;
  } catch {
    return false;
  }
};

/**
 * The `.outpost` folder of the nearest of `from` and its parents that has one, as git finds its
 * repository: an operator in a project's subfolder means the project's stack, and `down` there
 * must not report a stack stopped that it never looked at. `from/.outpost` when none has one.
 */
/** Whether `path` is a folder (or a link to one); false where it cannot be looked at. */
const isFolder = (path: string): boolean => {
  try {
    return statSync(path, { throwIfNoEntry: false })?.isDirectory() === true;
  } catch {
    return false;
  }
};

export const findStackDir = (from: string): string => {
  for (let dir = resolve(from); ; dir = dirname(dir)) {
    if (isFolder(join(dir, STACK_FOLDER))) {
      return join(dir, STACK_FOLDER);
    }
    if (dirname(dir) === dir) {
      return join(resolve(from), STACK_FOLDER);
    }
  }
};

/**
 * A stack another user started (root, whose PostgreSQL then runs as postgres) cannot be looked
 * into by this one: its pid files and processes are closed to it, so the stack read as stopped,
 * `down` found nothing to stop and `up` took its own ports for a foreign service's. Said instead,
 * with whom to ask. Root sees every stack.
 */
const refuseAnotherUsersStack = (dir: string, command: string): void => {
  const me = process.getuid?.();
  if (me === undefined || me === 0) {
    return;
  }
  let owner: number;
  try {
    owner = statSync(pathsOf(dir).state).uid;
  } catch {
    return;
  }
  if (owner === me) {
    return;
  }
  const name = userNameOf(owner);
  const asOwner = owner === 0 ? 'sudo' : `sudo -u ${name}`;
  throw new Error(
    `the local stack in ${dir} belongs to ${name}, who started it, and its servers cannot be seen or stopped by another user: run it as ${name} (${asOwner} npx outpost stack ${command})`,
  );
};

const userNameOf = (uid: number): string => {
  const entry = spawnSync('getent', ['passwd', String(uid)], { encoding: 'utf8' });
  const name = entry.status === 0 ? entry.stdout.split(':')[0] : undefined;
  return name ? name : `the user of uid ${uid}`;
};

export const readState = (dir: string): StackOptions | undefined => {
  const file = pathsOf(dir).state;
  return existsSync(file) ? (JSON.parse(readFileSync(file, 'utf8')) as StackOptions) : undefined;
};

/**
 * Starts (or finds running) a PostgreSQL primary, a hot-standby replica cloned from it with
 * `pg_basebackup -R`, and Redis with AOF: the stack's servers, or those of them not running. `signal` gives up between steps and
 * in the waits (a test run stopped during start-up): without it, a stopped primary would keep it
 * waiting a minute for the replica.
 */
export const stackUp = async (
  o: StackOptions,
  { signal }: { signal?: AbortSignal } = {},
): Promise<StackUrls> => {
  refuseAnotherUsersStack(o.dir, 'up');
  const paths = pathsOf(o.dir);
  const bin = requirePgBinDir(paths.main);
  const redisServer = requireRedisServer();
  const cron = o.pgCron === 'auto' ? pgCronInstalled(bin) : o.pgCron;
  if (cron && !pgCronInstalled(bin)) {
    throw new Error(
      'pg_cron is not installed; install it with: apt-get install -y postgresql-15-cron',
    );
  }
  await refuseForeignServices(o, paths);
  for (const dir of [o.dir, paths.logs, paths.redis]) {
    mkdirSync(dir, { recursive: true });
  }
  // PostgreSQL runs as `postgres`, which must be able to reach its data through our folders.
  chmodSync(o.dir, 0o755);
  chmodSync(paths.logs, 0o777);
  const closed = closedToPostgres(o.dir);
  if (closed !== undefined) {
    throw new Error(
      `PostgreSQL runs as the postgres user here (this runs as root), and postgres cannot enter ${closed} on the way to ${o.dir}: let it (chmod o+x ${closed}), or keep the project where it can (outside /root)`,
    );
  }
  writeFileSync(paths.state, `${JSON.stringify({ ...o, pgCron: cron }, null, 2)}\n`);

  if (!redisPid(paths.redis)) {
    await startRedis(redisServer, o, paths);
  }

  if (!existsSync(join(paths.main, 'PG_VERSION'))) {
    mkdirSync(paths.main, { recursive: true, mode: 0o700 });
    giveToPostgres(paths.main);
    await runPg(join(bin, 'initdb'), [
      '-D',
      paths.main,
      '-U',
      'postgres',
      '--auth=trust',
      '-E',
      'UTF8',
      '--locale=C',
      '--no-sync',
    ]);
    writeFileSync(
      join(paths.main, 'pg_hba.conf'),
      [
        'local all all trust',
        'host all all 127.0.0.1/32 trust',
        'host replication all 127.0.0.1/32 trust',
        '',
      ].join('\n'),
    );
  }
  await startPg(o, bin, paths.main, o.mainPort, cron);
  const urls = urlsOf(o);
  const adminUrl = urls.main.url.replace(/\/outpost$/, '/postgres');
  await waitUntil(
    () => canQuery(adminUrl),
    `PostgreSQL primary on ${o.mainPort}`,
    undefined,
    signal,
  );
  const exists = await query(adminUrl, `select 1 from pg_database where datname = '${DATABASE}'`);
  if (exists.length === 0) {
    await query(adminUrl, `create database ${DATABASE}`);
  }

  signal?.throwIfAborted();
  if (!existsSync(join(paths.replica, 'PG_VERSION'))) {
    // Cloned aside and moved in whole: a clone cut short (Ctrl-C, a kill) left a folder with its
    // PG_VERSION that every later up took for a replica, which then never started, and only a
    // reset, which takes the primary too, cleared. Now what is left is the partial copy, dropped here.
    const partial = `${paths.replica}.partial`;
    rmSync(partial, { recursive: true, force: true });
    rmSync(paths.replica, { recursive: true, force: true });
    mkdirSync(partial, { recursive: true, mode: 0o700 });
    giveToPostgres(partial);
    await runPg(join(bin, 'pg_basebackup'), [
      '-h',
      '127.0.0.1',
      '-p',
      String(o.mainPort),
      '-U',
      'postgres',
      '-D',
      partial,
      '-R',
      '-X',
      'stream',
      '-c',
      'fast',
      '--no-sync',
    ]);
    renameSync(partial, paths.replica);
  }
  signal?.throwIfAborted();
  await startPg(o, bin, paths.replica, o.replicaPort, cron);
  await waitUntil(
    () => canQuery(urls.replica.url),
    `PostgreSQL replica on ${o.replicaPort}`,
    undefined,
    signal,
  );
  await waitUntil(
    async () =>
      (
        await query<{ n: number }>(
          adminUrl,
          "select count(*)::int as n from pg_stat_replication where state = 'streaming'",
        )
      )[0]?.n === 1,
    'the replica to stream from the primary',
    undefined,
    signal,
  );
  return urls;
};

const refuseForeignServices = async (o: StackOptions, paths: StackPaths) => {
  const ours = [
    { port: o.mainPort, mine: pgIsRunning(paths.main), what: 'PostgreSQL primary' },
    { port: o.replicaPort, mine: pgIsRunning(paths.replica), what: 'PostgreSQL replica' },
    { port: o.redisPort, mine: redisPid(paths.redis) !== undefined, what: 'Redis' },
  ];
  for (const { port, mine, what } of ours) {
    if (!mine && (await isPortOpen(port))) {
      throw new Error(
        `port ${port} (for the ${what}) is taken by something that is not this stack (${resolve(o.dir)}); stop it or free the port`,
      );
    }
  }
};

/**
 * Stops the replica, the primary and Redis; a stack that is not running is left as it is. Every
 * part is attempted even when an earlier one fails, so nothing is left running behind an error.
 * Says whether any server was running.
 */
export const stackDown = async (dir: string, command = 'down'): Promise<boolean> => {
  refuseAnotherUsersStack(dir, command);
  const paths = pathsOf(dir);
  const failures: string[] = [];
  let found = false;
  for (const dataDir of [paths.replica, paths.main]) {
    if (!pgIsRunning(dataDir)) {
      continue;
    }
    found = true;
    let bin: string;
    try {
      bin = requirePgBinDir(dataDir);
    } catch (err) {
      failures.push((err as Error).message);
      continue;
    }
    await runPg(join(bin, 'pg_ctl'), ['stop', '-w', '-m', 'fast', '-D', dataDir]).catch(
      async (err: Error) => {
        failures.push(err.message);
        await runPg(join(bin, 'pg_ctl'), ['stop', '-w', '-m', 'immediate', '-D', dataDir]).catch(
          () => undefined,
        );
      },
    );
  }
  const pid = redisPid(paths.redis);
  if (pid !== undefined) {
    found = true;
    process.kill(pid, 'SIGTERM');
    await waitUntil(() => !isAlive(pid), 'Redis to stop', 30_000).catch((err: Error) => {
      failures.push(err.message);
      process.kill(pid, 'SIGKILL');
    });
  }
  if (failures.length > 0) {
    throw new Error(`stopping the stack: ${failures.join('; ')}`);
  }
  return found;
};

export const stackReset = async (dir: string): Promise<void> => {
  await stackDown(dir, 'reset');
  rmSync(dir, { recursive: true, force: true });
};

export const stackStatus = async (dir: string, fallback: StackOptions): Promise<StackStatus> => {
  refuseAnotherUsersStack(dir, 'status');
  const o = readState(dir) ?? fallback;
  const paths = pathsOf(dir);
  const urls = urlsOf(o);
  const state = (running: boolean) => (running ? 'running' : 'stopped');
  const main = pgIsRunning(paths.main);
  const replica = pgIsRunning(paths.replica);
  const redis = redisPid(paths.redis) !== undefined;
  return {
    running: main && replica && redis,
    main: { ...urls.main, state: state(main) },
    replica: { ...urls.replica, state: state(replica) },
    redis: { ...urls.redis, state: state(redis) },
    pg_cron: o.pgCron === true,
  };
};

export const stackPaths = pathsOf;

/** Fault injection for tests and drills: the primary stopped as by a crash (`-m immediate`). */
export const crashMain = (dir: string): Promise<void> => crashPostgres(pathsOf(dir).main);

/** Fault injection: the read replica stopped as by a crash; `stackUp` starts it again. */
export const crashReplica = (dir: string): Promise<void> => crashPostgres(pathsOf(dir).replica);

/**
 * Fault injection: the read replica shut down cleanly, its data directory then whole to copy (a
 * snapshot to bring it back from later); `stackUp` starts it again.
 */
export const stopReplica = (dir: string): Promise<void> =>
  stopPostgres(pathsOf(dir).replica, 'fast');

const crashPostgres = (dataDir: string): Promise<void> => stopPostgres(dataDir, 'immediate');

const stopPostgres = async (dataDir: string, mode: 'fast' | 'immediate'): Promise<void> => {
  const bin = requirePgBinDir(dataDir);
  await runPg(join(bin, 'pg_ctl'), ['stop', '-w', '-m', mode, '-D', dataDir]);
};

/** Fault injection: Redis killed with SIGKILL; `stackUp` restarts it from its append-only file. */
export const killRedis = async (dir: string): Promise<void> => {
  const pid = redisPid(pathsOf(dir).redis);
  if (pid !== undefined) {
    process.kill(pid, 'SIGKILL');
    await waitUntil(() => !isAlive(pid), 'Redis to die', 10_000);
  }
};
