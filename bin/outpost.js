#!/usr/bin/env node
// Runs the CLI from the service's bundle, dist/outpost.mjs, built first whenever its sources
// changed (src/bundle.ts, ADR 0008): `npx outpost` needs no build step. tsx loads only that
// TypeScript module, in a namespace of its own, and the sources if the bundle cannot be built;
// the bundle itself is imported by plain Node.
import { pathToFileURL } from 'node:url';
import { tsImport } from 'tsx/esm/api';

const { freshServiceBundle } = await tsImport('../src/bundle.ts', import.meta.url);
const bundle = await freshServiceBundle();
if (bundle) {
  // Stack traces name the lines of src/, not of the bundle.
  process.setSourceMapsEnabled(true);
  await import(pathToFileURL(bundle).href);
} else {
  await tsImport('../src/cli/main.ts', import.meta.url);
}
