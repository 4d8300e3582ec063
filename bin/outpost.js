#!/usr/bin/env node
// Runs the CLI from the service's bundle, dist/outpost.mjs, built first whenever src/ changed
// after it (src/bundle.ts); `npx outpost` needs no build step. tsx loads that TypeScript module,
// and the sources themselves if the bundle cannot be built.
import { pathToFileURL } from 'node:url';
import { register } from 'tsx/esm/api';

register();
const { freshServiceBundle } = await import('../src/bundle.ts');
const bundle = await freshServiceBundle();
if (bundle) {
  // Stack traces name the lines of src/, not of the bundle.
  process.setSourceMapsEnabled(true);
  await import(pathToFileURL(bundle).href);
} else {
  await import('../src/cli/main.ts');
}
