import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import {
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  symlinkSync,
  utimesSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, beforeEach, describe, it } from 'node:test';
import { freshBundle } from './bundle.ts';

/** A small project: src/main.ts prints what src/word.ts exports; the bundle goes to dist/. */
void describe('freshBundle', () => {
  let root: string;
  let sources: string;
  let entry: string;
  let outfile: string;
  /** The bundle is dated this far back before each step, so a rebuild shows as a newer time. */
  const LONG_AGO = 1_000;
  const write = (name: string, text: string) => writeFileSync(join(sources, name), text);
  const fresh = () => freshBundle(entry, outfile, [sources]);
  const rebuilt = () => statSync(outfile).mtimeMs > LONG_AGO * 1000;
  const run = () => execFileSync(process.execPath, [outfile], { encoding: 'utf8' }).trim();

  before(async () => {
    root = mkdtempSync(join(tmpdir(), 'outpost-bundle-'));
    sources = join(root, 'src');
    mkdirSync(sources);
    entry = join(sources, 'main.ts');
    outfile = join(root, 'dist', 'main.mjs');
    write('main.ts', "import { word } from './word.ts';\nconsole.log(word satisfies string);\n");
    write('word.ts', "export const word: string = 'first';\n");
    assert.equal(await fresh(), outfile);
  });
  beforeEach(() => utimesSync(outfile, LONG_AGO, LONG_AGO));
  after(() => rmSync(root, { recursive: true, force: true }));

  void it('builds a bundle that runs the sources, with its source map', () => {
    assert.equal(run(), 'first');
    assert.ok(readFileSync(`${outfile}.map`, 'utf8').includes('word.ts'));
  });

  void it('keeps a bundle built from the sources as they are', async () => {
    assert.equal(await fresh(), outfile);
    assert.equal(rebuilt(), false);
  });

  void it('ignores a dangling symbolic link among the sources (an editor lock file)', async () => {
    symlinkSync(join(sources, 'nowhere'), join(sources, '.#word.ts'));
    assert.equal(await fresh(), outfile);
    assert.equal(rebuilt(), false);
  });

  void it('rebuilds after a source file changed', async () => {
    write('word.ts', "export const word: string = 'second';\n");
    assert.equal(await fresh(), outfile);
    assert.ok(rebuilt());
    assert.equal(run(), 'second');
  });

  void it('rebuilds after a file is put back with an older time and the same size', async () => {
    write('word.ts', "export const word: string = 'third!';\n");
    utimesSync(join(sources, 'word.ts'), 500, 500);
    assert.equal(await fresh(), outfile);
    assert.ok(rebuilt());
    assert.equal(run(), 'third!');
  });

  void it('rebuilds after a source file is added or deleted', async () => {
    write('unused.ts', 'export const unused = 1;\n');
    await fresh();
    assert.ok(rebuilt(), 'added');
    utimesSync(outfile, LONG_AGO, LONG_AGO);
    rmSync(join(sources, 'unused.ts'));
    await fresh();
    assert.ok(rebuilt(), 'deleted');
  });

  void it('answers undefined and leaves the old bundle whole when the sources do not build', async () => {
    const before = readFileSync(outfile);
    write('word.ts', 'export const word: string = ;\n');
    assert.equal(await fresh(), undefined);
    assert.deepEqual(readFileSync(outfile), before);
    assert.deepEqual(
      readdirSync(join(root, 'dist')).filter((name) => name.endsWith('.tmp')),
      [],
      'no temporary file left behind',
    );
  });
});
