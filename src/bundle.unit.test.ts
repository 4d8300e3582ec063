import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import {
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  utimesSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { freshBundle } from './bundle.ts';

/** A small project: src/main.ts prints what src/word.ts exports; the bundle goes to dist/. */
void describe('freshBundle', () => {
  let root: string;
  let sources: string;
  let entry: string;
  let outfile: string;
  const MARKER = '// left as it was\n';
  const write = (name: string, text: string) => writeFileSync(join(sources, name), text);
  /** Sets the times of everything under src/ (and src/ itself) to `seconds` since the epoch. */
  const ageSources = (seconds: number) => {
    for (const name of readdirSync(sources)) {
      utimesSync(join(sources, name), seconds, seconds);
    }
    utimesSync(sources, seconds, seconds);
  };
  /** Replaces the bundle with a marker, dated `seconds`: a rebuild is seen as the marker gone. */
  const markBundle = (seconds: number) => {
    writeFileSync(outfile, MARKER);
    utimesSync(outfile, seconds, seconds);
  };
  const run = (file: string) => execFileSync(process.execPath, [file], { encoding: 'utf8' }).trim();

  before(() => {
    root = mkdtempSync(join(tmpdir(), 'outpost-bundle-'));
    sources = join(root, 'src');
    mkdirSync(sources);
    entry = join(sources, 'main.ts');
    outfile = join(root, 'dist', 'main.mjs');
    write('main.ts', "import { word } from './word.ts';\nconsole.log(word satisfies string);\n");
    write('word.ts', "export const word: string = 'first';\n");
  });
  after(() => rmSync(root, { recursive: true, force: true }));

  void it('builds a missing bundle that runs the sources', async () => {
    assert.equal(await freshBundle(entry, outfile, sources), outfile);
    assert.equal(run(outfile), 'first');
    assert.ok(readFileSync(`${outfile}.map`, 'utf8').includes('word.ts'), 'a source map beside it');
  });

  void it('keeps a bundle newer than every source', async () => {
    ageSources(1_000);
    markBundle(2_000);
    assert.equal(await freshBundle(entry, outfile, sources), outfile);
    assert.equal(readFileSync(outfile, 'utf8'), MARKER);
  });

  void it('rebuilds after a source file changed', async () => {
    write('word.ts', "export const word: string = 'second';\n");
    ageSources(1_000);
    utimesSync(join(sources, 'word.ts'), 3_000, 3_000);
    markBundle(2_000);
    assert.equal(await freshBundle(entry, outfile, sources), outfile);
    assert.equal(run(outfile), 'second');
  });

  void it('rebuilds after a source file was deleted (its folder changed)', async () => {
    write('unused.ts', 'export const unused = 1;\n');
    ageSources(1_000);
    markBundle(2_000);
    rmSync(join(sources, 'unused.ts'));
    assert.equal(await freshBundle(entry, outfile, sources), outfile);
    assert.equal(run(outfile), 'second');
  });

  void it('answers undefined and leaves the old bundle whole when the sources do not build', async () => {
    ageSources(1_000);
    markBundle(2_000);
    write('word.ts', 'export const word: string = ;\n');
    assert.equal(await freshBundle(entry, outfile, sources), undefined);
    assert.equal(readFileSync(outfile, 'utf8'), MARKER);
    assert.deepEqual(
      readdirSync(join(root, 'dist')).filter((name) => name.endsWith('.tmp')),
      [],
      'no temporary file left behind',
    );
  });
});
