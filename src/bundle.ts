import { mkdirSync, readdirSync, renameSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { build } from 'esbuild';
import { projectPath } from './paths.ts';

/**
 * The service runs from one esbuild bundle of src/ rather than through tsx's per-module
 * transform: measured alternately in one session, the same server used about a quarter less API
 * CPU per write bundled (140–166 µs against 183–206) and took 15–25 % more writes (README,
 * design notes). The bundle is plain JavaScript of our own code only; packages stay imports
 * from node_modules.
 */
export const SERVICE_BUNDLE = projectPath('dist/outpost.mjs');
export const SERVICE_ENTRY = projectPath('src/cli/main.ts');

/**
 * Bundles `entry` into `outfile` (with its source map). Each file is written under a temporary
 * name and renamed, so processes starting together never import a half-written bundle.
 */
export const bundle = async (entry: string, outfile: string): Promise<void> => {
  const result = await build({
    entryPoints: [entry],
    outfile,
    bundle: true,
    platform: 'node',
    format: 'esm',
    target: 'node20',
    packages: 'external',
    sourcemap: 'linked',
    write: false,
    logLevel: 'silent',
  });
  for (const file of result.outputFiles) {
    mkdirSync(dirname(file.path), { recursive: true });
    const temporary = `${file.path}.${process.pid}.tmp`;
    writeFileSync(temporary, file.contents);
    renameSync(temporary, file.path);
  }
};

/**
 * The newest modification time under `dir` (ms), of its files and of its folders, whose times
 * change when a file is added, removed or renamed.
 */
const newestChange = (dir: string): number =>
  readdirSync(dir, { recursive: true }).reduce(
    (newest, name) => Math.max(newest, statSync(join(dir, String(name))).mtimeMs),
    statSync(dir).mtimeMs,
  );

const builtAt = (file: string): number => {
  try {
    return statSync(file).mtimeMs;
  } catch {
    return -1;
  }
};

/**
 * `outfile`, bundled from `entry` again first when anything under `sources` changed after it: a
 * checkout or an edit never runs stale code. Undefined when it cannot be built (a read-only
 * install whose bundle is stale, a syntax error), said on stderr; the caller then runs the
 * sources through tsx, slower but current.
 */
export const freshBundle = async (
  entry: string,
  outfile: string,
  sources: string,
): Promise<string | undefined> => {
  if (builtAt(outfile) >= newestChange(sources)) {
    return outfile;
  }
  try {
    await bundle(entry, outfile);
    return outfile;
  } catch (err) {
    process.stderr.write(
      `outpost: running the sources through tsx; ${outfile} could not be built: ${(err as Error).message}\n`,
    );
    return undefined;
  }
};

export const freshServiceBundle = () =>
  freshBundle(SERVICE_ENTRY, SERVICE_BUNDLE, projectPath('src'));
