import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * The project's root directory. This module sits one level below it, in src/, and so does the
 * bundle that inlines it, in dist/: the same relative URL finds the root from either.
 */
export const PROJECT_ROOT = fileURLToPath(new URL('..', import.meta.url));

/** A file the service reads at run time (migrations, Lua scripts, package.json), by its path from the root. */
export const projectPath = (relative: string): string => join(PROJECT_ROOT, relative);
