import { run } from 'node:test';
import { spec } from 'node:test/reporters';

/**
 * Runs test files with node:test, each in a process of its own, reporting on stdout; resolves
 * whether every test passed. Aborting `signal` kills the file processes, and each file's harness
 * then kills the services it spawned (`killOnExit`): a runner that only exits on a signal leaves
 * them running, reconnecting to a stack it has stopped.
 */
export const runTestFiles = (
  files: string[],
  {
    concurrency,
    timeoutMs,
    signal,
  }: { concurrency: number; timeoutMs: number; signal: AbortSignal },
): Promise<boolean> =>
  new Promise((resolve) => {
    let failed = false;
    // TEST_NAME_PATTERN runs only the tests whose name matches it (a regular expression).
    const pattern = process.env.TEST_NAME_PATTERN;
    const stream = run({
      files,
      concurrency,
      timeout: timeoutMs,
      signal,
      ...(pattern ? { testNamePatterns: [new RegExp(pattern)] } : {}),
    });
    stream.on('test:fail', () => {
      failed = true;
    });
    stream.compose(new spec()).pipe(process.stdout);
    stream.once('end', () => resolve(!failed));
  });
