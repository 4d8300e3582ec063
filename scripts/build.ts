// `npm run build`: the service's bundle, dist/outpost.mjs, built now (bin/outpost.js otherwise
// builds it on first use after a change).
import { bundle, SERVICE_BUNDLE, SERVICE_ENTRY } from '../src/bundle.ts';

await bundle(SERVICE_ENTRY, SERVICE_BUNDLE);
process.stdout.write(`built ${SERVICE_BUNDLE}\n`);
