import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { formatLsn, lsnReached, parseLsn } from './lsn.ts';

void describe('lsn', () => {
  void it('compares LSNs as 64-bit numbers, not as text', () => {
    assert.ok(parseLsn('0/10') > parseLsn('0/9'));
    assert.ok(parseLsn('1/0') > parseLsn('0/FFFFFFFF'));
    assert.ok(parseLsn('A/0') > parseLsn('9/FFFFFFFF'));
    assert.ok(lsnReached('0/16B3748', parseLsn('0/16B3748')));
    assert.ok(!lsnReached('0/16B3749', parseLsn('0/16B3748')));
  });

  void it('round-trips through text beyond 2^53', () => {
    for (const text of ['0/0', '0/16B3748', 'FFFFFFFF/FFFFFFFF', '1234ABCD/1']) {
      assert.equal(formatLsn(parseLsn(text)), text);
    }
    assert.equal(parseLsn('FFFFFFFF/FFFFFFFF'), 2n ** 64n - 1n);
  });

  void it('refuses text that is not an LSN', () => {
    for (const bad of ['', '0', '0/', '/0', 'G/0', '0/123456789', 'null']) {
      assert.throws(() => parseLsn(bad), /not a pg_lsn/);
    }
  });
});
