import { createHash, randomUUID } from 'node:crypto';
import {
  closeSync,
  lstatSync,
  mkdirSync,
  openSync,
  readdirSync,
  readSync,
  renameSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { dirname, join } from 'node:path';
import { build, version as esbuildVersion, stop } from 'esbuild';
import { projectPath } from './paths.ts';

/**
 * The service runs from one esbuild bundle of src/ rather than through tsx's per-module
 * transform: measured alternately in one session, the same server used about a quarter less API
 * CPU per write bundled (140–166 µs against 183–206) and took 15–25 % more writes (ADR 0008).
 * The bundle is our own code only; packages stay imports from node_modules.
 */
export const SERVICE_BUNDLE = projectPath('dist/outpost.mjs');
export const SERVICE_ENTRY = projectPath('src/cli/main.ts');
/** What the service's bundle is made from: its sources, and the compiler options esbuild reads. */
const SERVICE_INPUTS = [projectPath('src'), projectPath('tsconfig.json')];

/** The bundle's first line names the inputs it was built from. */
const STAMP = '// outpost bundle of ';

/**
 * A digest of `inputs` (folders and files) as they are now: each file's path, size and
 * modification time, and esbuild's version. Any change, deletion, addition, or a file put back
 * with an older time changes it. Symbolic links (an editor's lock files) and files that vanish
 * while being listed (an editor's probe files) are left out.
 */
const fingerprint = (inputs: readonly string[]): string => {
  const hash = createHash('sha256').update(`esbuild ${esbuildVersion}\n`);
  for (const input of inputs) {
    const names = lstatSync(input).isDirectory()
      ? readdirSync(input, { recursive: true })
          .map((name) => join(input, String(name)))
          .sort()
      : [input];
    for (const name of names) {
      const stat = lstatSync(name, { throwIfNoEntry: false });
      if (stat?.isFile()) {
        hash.update(`${name}\0${stat.size}\0${stat.mtimeMs}\n`);
      }
    }
  }
  return hash.digest('hex');
};

/** The fingerprint a bundle was stamped with, or undefined (no bundle, or not one of ours). */
const stampOf = (outfile: string): string | undefined => {
  let fd: number | undefined;
  try {
    fd = openSync(outfile, 'r');
    const head = Buffer.alloc(STAMP.length + 64);
    const read = readSync(fd, head, 0, head.length, 0);
    const text = head.subarray(0, read).toString('utf8');
    return text.startsWith(STAMP) ? text.slice(STAMP.length) : undefined;
  } catch {
    return undefined;
  } finally {
    if (fd !== undefined) {
      closeSync(fd);
    }
  }
};

/**
 * Bundles `entry` into `outfile` (with its source map), stamped with `stamp`. Each file is
 * written under a temporary name and renamed, so processes starting together never import a
 * half-written bundle; the stamp is inside the file it describes, so it cannot pair with another
 * process's bundle.
 */
export const bundle = async (entry: string, outfile: string, stamp: string): Promise<void> => {
  try {
    const result = await build({
      entryPoints: [entry],
      outfile,
      bundle: true,
      platform: 'node',
      format: 'esm',
      target: 'node20',
      packages: 'external',
      sourcemap: 'linked',
      banner: { js: `${STAMP}${stamp}` },
      write: false,
      logLevel: 'silent',
    });
    for (const file of result.outputFiles) {
      mkdirSync(dirname(file.path), { recursive: true });
      const temporary = `${file.path}.${randomUUID()}.tmp`;
      try {
        writeFileSync(temporary, file.contents);
        renameSync(temporary, file.path);
      } finally {
        rmSync(temporary, { force: true });
      }
    }
  } finally {
    // esbuild answers from a child process, which would otherwise live as long as the service.
    await stop();
  }
};

/**
 * `outfile`, bundled from `entry` again first unless it was built from `inputs` exactly as they
 * are now: a checkout, an edit or a restore never runs stale code. The fingerprint is taken
 * before the build, so a file saved during it makes the next start build again. Undefined when
 * it cannot be built (a read-only install whose sources changed, a syntax error), said on
 * stderr; the caller then runs the sources through tsx, slower but current.
 */
export const freshBundle = async (
  entry: string,
  outfile: string,
  inputs: readonly string[],
): Promise<string | undefined> => {
  try {
    const current = fingerprint(inputs);
    if (stampOf(outfile) !== current) {
      await bundle(entry, outfile, current);
    }
    return outfile;
  } catch (err) {
    process.stderr.write(
      `outpost: running the sources through tsx (about a quarter more CPU per write); ${outfile} could not be built: ${(err as Error).message}\n`,
    );
    return undefined;
  }
};

export const freshServiceBundle = () => freshBundle(SERVICE_ENTRY, SERVICE_BUNDLE, SERVICE_INPUTS);

/** Builds the service's bundle now, stamped so `freshServiceBundle` takes it; throws on failure. */
export const buildServiceBundle = () =>
  bundle(SERVICE_ENTRY, SERVICE_BUNDLE, fingerprint(SERVICE_INPUTS));
