import { resolve } from 'node:path';
import { readState, stackDown, stackUp } from '../src/stack/stack.ts';

/**
 * Starts or stops a test stack that `npm test` kept because a file failed, on the ports it ran
 * on, so the failed file's database and Redis keys can be inspected.
 * Usage: node --import tsx scripts/test-stack.ts up|down <dir>
 */
const [action, dirArgument] = process.argv.slice(2);
if ((action !== 'up' && action !== 'down') || dirArgument === undefined) {
  process.stderr.write('usage: node --import tsx scripts/test-stack.ts up|down <kept stack dir>\n');
  process.exit(2);
}
const dir = resolve(dirArgument);
if (action === 'down') {
  await stackDown(dir);
  process.stdout.write(`stopped ${dir}\n`);
} else {
  const state = readState(dir);
  if (!state) {
    process.stderr.write(`${dir} holds no stack (no stack.json)\n`);
    process.exit(1);
  }
  const urls = await stackUp(state);
  process.stdout.write(`${JSON.stringify(urls, null, 2)}\n`);
}
