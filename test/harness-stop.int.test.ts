import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';

const services = fileURLToPath(new URL('./harness/services.ts', import.meta.url));
const harness = fileURLToPath(new URL('./harness/harness.ts', import.meta.url));
const runFiles = fileURLToPath(new URL('./harness/run-files.ts', import.meta.url));

const isRunning = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

/** Whether process `pid` is gone by the deadline, polling. */
const stopsWithin = async (pid: number, ms: number): Promise<boolean> => {
  const deadline = Date.now() + ms;
  while (isRunning(pid) && Date.now() < deadline) {
    await sleep(20);
  }
  return !isRunning(pid);
};

void describe('a test or bench run whose output reader goes away', () => {
  const dir = mkdtempSync(join(tmpdir(), 'outpost-stop-'));
  after(() => rmSync(dir, { recursive: true, force: true }));

  void it('stops what it started and exits as on SIGPIPE, instead of crashing with it running', async (t) => {
    const marker = join(dir, 'stopped');
    const child = join(dir, 'run.ts');
    // A run as scripts/test.ts and the bench are: its stop registered, writing progress lines.
    writeFileSync(
      child,
      `import { writeFileSync } from 'node:fs';
import { stopOnSignal } from ${JSON.stringify(services)};
stopOnSignal(async () => writeFileSync(${JSON.stringify(marker)}, 'stopped'));
setInterval(() => process.stdout.write('progress\\n'), 5);
`,
    );
    const run = spawn(process.execPath, ['--import', 'tsx', child], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    t.after(() => {
      if (run.exitCode === null && run.signalCode === null) {
        run.kill('SIGKILL');
      }
    });
    const exited = once(run, 'exit', { signal: AbortSignal.timeout(30_000) });
    await once(run.stdout, 'data');
    // As `| head` does once it has its lines.
    run.stdout.destroy();
    const [code] = await exited;
    assert.equal(code, 141);
    assert.ok(existsSync(marker), 'stop ran before the exit');
  });
});

void describe('a test run stopped while its stack starts', () => {
  const dir = mkdtempSync(join(tmpdir(), 'outpost-stop-'));
  after(() => rmSync(dir, { recursive: true, force: true }));

  void it('stops the servers it has started so far and removes their folder', async (t) => {
    const child = join(dir, 'start.ts');
    writeFileSync(
      child,
      `import { startTestStack, stopOnSignal } from ${JSON.stringify(services)};
void startTestStack({ whileStarting: stopOnSignal });
setInterval(() => undefined, 1000);
`,
    );
    const before = new Set(readdirSync(tmpdir()));
    const run = spawn(process.execPath, ['--import', 'tsx', child], { stdio: 'ignore' });
    // A failed assertion must not leave the child, and the servers it started, holding the run open.
    t.after(() => {
      if (run.exitCode === null && run.signalCode === null) {
        run.kill('SIGTERM');
      }
    });
    const exited = once(run, 'exit', { signal: AbortSignal.timeout(120_000) });
    // Signalled once its primary runs, while the rest of the stack is still to come.
    let stack: string | undefined;
    let postmaster: number | undefined;
    const deadline = Date.now() + 60_000;
    while (postmaster === undefined && Date.now() < deadline) {
      stack = readdirSync(tmpdir()).find((d) => d.startsWith('outpost-test-') && !before.has(d));
      const pidFile = stack && join(tmpdir(), stack, 'pg-main', 'postmaster.pid');
      if (pidFile && existsSync(pidFile)) {
        // The file is there before its first line is: an empty line reads as pid 0.
        const pid = Number(readFileSync(pidFile, 'utf8').split('\n')[0]);
        postmaster = pid > 0 ? pid : undefined;
      }
      await sleep(20);
    }
    assert.ok(stack && postmaster, 'the child started its primary');
    run.kill('SIGTERM');
    const [code] = await exited;
    assert.equal(code, 143);
    assert.equal(existsSync(join(tmpdir(), stack)), false, 'its folder is removed');
    // pg_ctl -w returns once the pid file is gone, a moment before the postmaster has exited.
    assert.equal(await stopsWithin(postmaster, 10_000), true, 'its primary is stopped');
  });
});

void describe('a test run signalled while a test file runs', () => {
  const dir = mkdtempSync(join(tmpdir(), 'outpost-stop-'));
  after(() => rmSync(dir, { recursive: true, force: true }));

  void it('kills the file and the service it spawned, not only itself', async (t) => {
    const servicePidFile = join(dir, 'service.pid');
    const testFile = join(dir, 'holds-a-service.test.mts');
    // A test that has spawned a service (as harnesses spawn `outpost serve`) and waits on it.
    writeFileSync(
      testFile,
      `import { spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { it } from 'node:test';
import { killOnExit } from ${JSON.stringify(harness)};
it('waits on its service', async () => {
  const service = spawn('sleep', ['600'], { stdio: 'ignore' });
  killOnExit(service);
  writeFileSync(${JSON.stringify(servicePidFile)}, String(service.pid));
  await new Promise((resolve) => service.once('exit', resolve));
});
`,
    );
    const runner = join(dir, 'runner.mts');
    // As scripts/test.ts runs its files (.mts: ES modules outside the project's package).
    writeFileSync(
      runner,
      `import { runTestFiles } from ${JSON.stringify(runFiles)};
import { stopOnSignal } from ${JSON.stringify(services)};
const tests = new AbortController();
stopOnSignal(async () => tests.abort());
await runTestFiles([${JSON.stringify(testFile)}], { concurrency: 1, timeoutMs: 60_000, signal: tests.signal });
`,
    );
    // A run of its own: not narrowed to this test's name, nor reporting as a child of this run.
    const { TEST_NAME_PATTERN: _, NODE_TEST_CONTEXT: __, ...env } = process.env;
    const run = spawn(process.execPath, ['--import', 'tsx', runner], { stdio: 'ignore', env });
    let service: number | undefined;
    t.after(() => {
      run.kill('SIGKILL');
      if (service !== undefined && isRunning(service)) {
        process.kill(service, 'SIGKILL');
      }
    });
    const exited = once(run, 'exit', { signal: AbortSignal.timeout(60_000) });
    const started = Date.now() + 30_000;
    while (service === undefined && Date.now() < started) {
      if (existsSync(servicePidFile)) {
        const pid = Number(readFileSync(servicePidFile, 'utf8'));
        service = pid > 0 ? pid : undefined;
      }
      await sleep(20);
    }
    assert.ok(service, 'the test file spawned its service');
    run.kill('SIGTERM');
    const [code] = await exited;
    assert.equal(code, 143);
    assert.equal(
      await stopsWithin(service, 10_000),
      true,
      'the service the test file spawned is gone',
    );
  });
});
