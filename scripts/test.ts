import { readdirSync } from 'node:fs';
import { join, relative } from 'node:path';
import { buildServiceBundle } from '../src/bundle.ts';
import { runTestFiles } from '../test/harness/run-files.ts';
import {
  dropSites,
  startTestStack,
  stopOnSignal,
  type TestSite,
  takeSites,
} from '../test/harness/services.ts';

/**
 * Finds the test files of a tier and runs them with node:test. Integration and end-to-end tiers
 * get a real stack (PostgreSQL primary + streaming replica, Redis with AOF) started here on free
 * ports in a temporary folder, and stopped in `finally`, whatever the tests did.
 */
const TIERS = {
  unit: { roots: ['src'], suffix: '.unit.test.ts' },
  int: { roots: ['test'], suffix: '.int.test.ts' },
  e2e: { roots: ['test'], suffix: '.e2e.test.ts' },
  // Not part of `all`: minutes of faults (SOAK_MINUTES), run on its own with `npm run soak`.
  soak: { roots: ['test'], suffix: '.soak.test.ts' },
} as const;
type Tier = keyof typeof TIERS;

const walk = (dir: string): string[] =>
  readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) {
      return entry.name === 'node_modules' ? [] : walk(path);
    }
    return [path];
  });

const filesOf = (tier: Tier, only: string | undefined) =>
  TIERS[tier].roots
    .flatMap(walk)
    .filter((file) => file.endsWith(TIERS[tier].suffix))
    .filter((file) => only === undefined || file.includes(only))
    .sort();

const isSoak = (file: string) => file.endsWith(TIERS.soak.suffix);

/** Minutes a file may run: a soak file runs SOAK_MINUTES of faults on top. */
const timeoutMsOf = (files: string[]) =>
  (15 + (files.some(isSoak) ? Number(process.env.SOAK_MINUTES ?? 10) : 0)) * 60_000;

const main = async () => {
  const args = process.argv.slice(2);
  // `npm test -- e2e faults` arrives as `all e2e faults`: a tier named after `all` narrows it.
  if (args[0] === 'all' && args[1] !== undefined && args[1] in TIERS) {
    args.shift();
  }
  const [which = 'all', only] = args;
  const tiers: Tier[] = which === 'all' ? ['unit', 'int', 'e2e'] : [which as Tier];
  if (!tiers.every((t) => t in TIERS)) {
    throw new Error(`unknown tier ${which}: use unit, int, e2e, soak or all`);
  }
  // On SIGINT or SIGTERM: the running file's process is killed (and with it the services it
  // spawned), then the stack is stopped, if it has started.
  const tests = new AbortController();
  let stopStack: (() => Promise<void>) | undefined;
  stopOnSignal(async () => {
    tests.abort();
    await stopStack?.();
  });
  const runFiles = (files: string[], concurrency: number) =>
    runTestFiles(files, { concurrency, timeoutMs: timeoutMsOf(files), signal: tests.signal });
  const unitFiles = tiers.includes('unit') ? filesOf('unit', only) : [];
  const serviceFiles = tiers.filter((t) => t !== 'unit').flatMap((t) => filesOf(t, only));
  let ok = true;
  if (unitFiles.length > 0) {
    ok = (await runFiles(unitFiles, 2)) && ok;
  }
  if (serviceFiles.length > 0) {
    // The service processes the tests start run the bundle, as deployed: built here, where a
    // failure stops the run, rather than left to the first spawn.
    await buildServiceBundle();
    const stack = await startTestStack({
      whileStarting: (stop) => {
        stopStack = stop;
      },
    });
    const failed: { file: string; sites: TestSite[] }[] = [];
    try {
      process.env.TEST_STACK = JSON.stringify(stack);
      process.stdout.write(
        `test stack: ${relative(process.cwd(), stack.dir) || stack.dir} main ${stack.mainPort} replica ${stack.replicaPort} redis ${stack.redisPort}\n`,
      );
      // One file at a time: specs pause replica replay or kill processes, which the whole
      // cluster would feel. A file that passed leaves nothing behind; one that failed keeps its
      // databases and Redis keys for inspection.
      for (const file of serviceFiles) {
        if (tests.signal.aborted) {
          break;
        }
        const passed = await runFiles([file], 1);
        const sites = takeSites(stack.dir);
        if (passed) {
          await dropSites(stack, sites);
        } else {
          failed.push({ file: relative(process.cwd(), file), sites });
        }
      }
    } finally {
      await stack.stop({ keep: failed.length > 0 });
    }
    if (tests.signal.aborted) {
      // Stopped by a signal: its handler exits once the stack is down, and keeps nothing.
      return;
    }
    const passedFiles = serviceFiles.length - failed.length;
    process.stdout.write(`\nservice test files: ${passedFiles} passed, ${failed.length} failed\n`);
    if (failed.length > 0) {
      ok = false;
      const { dir } = stack;
      process.stdout.write(`kept for inspection (servers stopped): ${dir}\n`);
      for (const { file, sites } of failed) {
        const names = sites.map((s) => `${s.database} (Redis ${s.namespace}:*)`).join(', ');
        process.stdout.write(`  ${file}: ${names || 'no site registered'}\n`);
      }
      process.stdout.write(
        `  start it again: node --import tsx scripts/test-stack.ts up ${dir}\n` +
          `  then: psql -h 127.0.0.1 -p ${stack.mainPort} -U postgres <database>; ` +
          `redis-cli -p ${stack.redisPort}\n` +
          `  stop it: node --import tsx scripts/test-stack.ts down ${dir}; remove it: rm -rf ${dir}\n`,
      );
    }
  }
  process.exitCode = ok ? 0 : 1;
};

main().catch((err: unknown) => {
  process.stderr.write(`test runner failed: ${(err as Error).stack ?? String(err)}\n`);
  process.exitCode = 1;
});
