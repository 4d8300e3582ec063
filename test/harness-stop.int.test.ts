import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';

const services = fileURLToPath(new URL('./harness/services.ts', import.meta.url));

void describe('a test or bench run whose output reader goes away', () => {
  const dir = mkdtempSync(join(tmpdir(), 'outpost-stop-'));
  after(() => rmSync(dir, { recursive: true, force: true }));

  void it('stops what it started and exits as on SIGPIPE, instead of crashing with it running', async () => {
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
    const exited = once(run, 'exit', { signal: AbortSignal.timeout(30_000) });
    await once(run.stdout, 'data');
    // As `| head` does once it has its lines.
    run.stdout.destroy();
    const [code] = await exited;
    assert.equal(code, 141);
    assert.ok(existsSync(marker), 'stop ran before the exit');
  });
});
