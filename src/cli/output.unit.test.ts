import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { table, wholeNumberFlag } from './output.ts';

void describe('table', () => {
  void it('aligns columns under upper-case headers, objects as JSON and missing values as -', () => {
    assert.equal(
      table([
        { id: 'a', n: 1, data: { x: 1 } },
        { id: 'bbb', n: null, extra: true },
      ]),
      ['ID   N  DATA     EXTRA', 'a    1  {"x":1}  -', 'bbb  -  -        true'].join('\n'),
    );
  });

  void it('keeps a value with line breaks on its own row', () => {
    const rendered = table([
      { error: 'violates check constraint\nDETAIL:  Failing row\n' },
      { error: 'b' },
    ]);
    assert.deepEqual(rendered.split('\n'), [
      'ERROR',
      'violates check constraint; DETAIL:  Failing row',
      'b',
    ]);
  });

  void it('says (none) for no rows', () => {
    assert.equal(table([]), '(none)');
  });
});

void describe('flags', () => {
  void it('takes a whole number within bounds and names the flag otherwise', () => {
    assert.equal(wholeNumberFlag(undefined, '--limit'), undefined);
    assert.equal(wholeNumberFlag('7', '--partition', { below: 8 }), 7);
    for (const [value, message] of [
      ['0x1', /--partition takes a whole number, not "0x1"/],
      ['1e0', /takes a whole number/],
      ['', /takes a whole number, not ""/],
      ['-1', /takes a whole number/],
      ['8', /--partition must be below 8/],
    ] as const) {
      assert.throws(() => wholeNumberFlag(value, '--partition', { below: 8 }), message, value);
    }
    assert.throws(() => wholeNumberFlag('0', '--limit', { min: 1 }), /--limit must be at least 1/);
    // Not rounded and sent on for Redis to refuse without naming the flag.
    assert.throws(
      () => wholeNumberFlag('99999999999999999999', '--limit', { min: 1 }),
      /--limit must be at most 9007199254740991/,
    );
  });
});
