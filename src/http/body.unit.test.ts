import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { depthOf, storableProblems } from './body.ts';

void describe('storableProblems', () => {
  void it('accepts ordinary JSON, unicode included', () => {
    assert.deepEqual(
      storableProblems({ a: [1, 2.5, 'Ångström 🔭', null, true], b: { c: -9007199254740991 } }),
      [],
    );
  });

  void it('names the path of NUL characters in values and keys', () => {
    assert.deepEqual(storableProblems({ a: ['ok', 'x\u0000'] }), [
      { path: 'a.1', message: 'contains a NUL character' },
    ]);
    assert.equal(storableProblems({ m: { 'k\u0000': 1 } })[0]?.path, 'm');
  });

  void it('names the path of unpaired surrogates, which JSON.parse accepts and jsonb refuses', () => {
    const parsed = JSON.parse(
      '{"high": "a\\ud800", "low": "\\udc00b", "reversed": "\\udc00\\ud800", "pair": "\\ud83d\\udd2d", "m": {"\\ud800": 1}}',
    );
    assert.equal(parsed.pair, '🔭');
    assert.deepEqual(storableProblems(parsed), [
      { path: 'high', message: 'contains an unpaired UTF-16 surrogate (not valid Unicode)' },
      { path: 'low', message: 'contains an unpaired UTF-16 surrogate (not valid Unicode)' },
      { path: 'reversed', message: 'contains an unpaired UTF-16 surrogate (not valid Unicode)' },
      { path: 'm', message: 'has a key with an unpaired UTF-16 surrogate (not valid Unicode)' },
    ]);
  });

  void it('flags integers JSON.parse has rounded', () => {
    const parsed = JSON.parse('{"n": 9007199254740993, "f": 1.5e300}');
    assert.deepEqual(
      storableProblems(parsed).map((p) => p.path),
      ['n', 'f'],
    );
  });

  void it('flags integer literals past 2^53, not doubles, given the text they were parsed from', () => {
    // As clients write them: JSON.stringify would spell 3.0857e16 in digits.
    const source = `{"parsec_m": 3.0857e16, "avogadro": 6.02214076E23, "huge": -1.5e300,
      "label": "9007199254740993", "key 9007199254740993": 1, "n": 9007199254740993,
      "neg": -12345678901234567890, "exact": 1152921504606846976, "dotted": 18014398509481985.0, "python": 9500000000000000.0,
      "endless": ${'9'.repeat(400)}}`;
    assert.deepEqual(
      storableProblems(JSON.parse(source), source).map((p) => [p.path, p.message]),
      [
        ['n', 'integer beyond Number.MAX_SAFE_INTEGER'],
        ['neg', 'integer beyond Number.MAX_SAFE_INTEGER'],
        ['exact', 'integer beyond Number.MAX_SAFE_INTEGER'],
        ['dotted', 'integer beyond Number.MAX_SAFE_INTEGER'],
        ['endless', 'number beyond the range of a double'],
      ],
    );
  });

  void it('flags a __proto__ key, which copying by assignment would drop', () => {
    const parsed = JSON.parse('{"m": {"__proto__": {"x": 1}, "ok": 1}}');
    assert.deepEqual(storableProblems(parsed), [
      { path: 'm', message: 'has a key named __proto__, which would be lost' },
    ]);
  });

  void it('flags numbers JSON.parse made infinite, which would be stored as null', () => {
    const parsed = JSON.parse('{"m": {"up": 1e999, "down": -1e999, "fine": 1.5e-300}}');
    assert.deepEqual(storableProblems(parsed), [
      { path: 'm.up', message: 'number beyond the range of a double' },
      { path: 'm.down', message: 'number beyond the range of a double' },
    ]);
  });

  void it('measures nesting depth', () => {
    assert.equal(depthOf({}), 1);
    assert.equal(depthOf({ a: { b: [1] } }), 3);
    assert.equal(depthOf('x'), 0);
  });
});
