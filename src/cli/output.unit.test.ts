import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { table } from './output.ts';

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
