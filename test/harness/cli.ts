import { spawn } from 'node:child_process';
import { PROJECT_ROOT } from '../../src/paths.ts';
import { type Harness, killOnExit } from './harness.ts';

/** What a command wrote to stderr so far, for a test that looks while it runs. */
type Watch = { stderr?: (soFar: string) => void };

/** Runs `outpost <args>` as an operator would, against the harness's site. */
export const runCli = (
  h: Harness,
  args: string[],
  watch: Watch = {},
): Promise<{ code: number; stdout: string; stderr: string }> => runCliWith(h.envOf(), args, watch);

/** Runs `outpost <args>` with exactly this environment. */
export const runCliWith = (
  env: NodeJS.ProcessEnv,
  args: string[],
  watch: Watch = {},
): Promise<{ code: number; stdout: string; stderr: string }> =>
  new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['bin/outpost.js', ...args], {
      cwd: PROJECT_ROOT,
      env,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    // A command waiting (a replay's ten minutes) must not outlive a test that failed meanwhile.
    killOnExit(child);
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk: Buffer) => {
      stdout += chunk.toString();
    });
    child.stderr.on('data', (chunk: Buffer) => {
      stderr += chunk.toString();
      watch.stderr?.(stderr);
    });
    child.once('error', reject);
    child.once('exit', (code) => resolve({ code: code ?? -1, stdout, stderr }));
  });
