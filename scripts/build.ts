// `npm run build`: the service's bundle, dist/outpost.mjs, built now (bin/outpost.js otherwise
// builds it on first use after a change).
import { buildServiceBundle, SERVICE_BUNDLE } from '../src/bundle.ts';

await buildServiceBundle();
process.stdout.write(`built ${SERVICE_BUNDLE}\n`);
