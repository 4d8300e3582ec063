import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  compareEntryIds,
  entryIdAt,
  isStreamEntryId,
  LAST_ENTRY_ID,
  minEntryId,
  timeMs,
} from './entry-id.ts';

void describe('entry ids', () => {
  void it('compares as integers, not as text', () => {
    assert.ok(compareEntryIds('1700000000000-10', '1700000000000-9') > 0);
    assert.ok(compareEntryIds('999-0', '1000-0') < 0);
    assert.equal(compareEntryIds('5-1', '5-1'), 0);
    assert.equal(minEntryId(['10-0', '9-5', '100-0']), '9-5');
    assert.equal(entryIdAt(1234.9), '1234-0');
  });

  void it('takes as ids only what Redis takes: each part at most 2^64 - 1', () => {
    for (const id of ['0', '1700000000000-0', '18446744073709551615-18446744073709551615']) {
      assert.ok(isStreamEntryId(id), id);
    }
    for (const id of ['', '-1', '1-', '1-2-3', '18446744073709551616', '1-18446744073709551616']) {
      assert.ok(!isStreamEntryId(id), id);
    }
    assert.equal(LAST_ENTRY_ID, '18446744073709551615-18446744073709551615');
  });

  void it("reads Redis's TIME as milliseconds, the unit entry ids count in", () => {
    assert.equal(timeMs(['1700000000', '123999']), 1_700_000_000_123);
    assert.equal(timeMs([1700000000, 0]), 1_700_000_000_000);
  });
});
