import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { isDiscardedEntry } from './dead-letters.ts';

void describe('isDiscardedEntry', () => {
  // A record filed at 2000-0 for event E, whose letter came from entry 1000-0.
  const discards = new Map([
    ['e', '2000-0'],
    ['1000-0', '2000-0'],
  ]);

  void it('finds the entry a record names, whatever the event it decodes to', () => {
    assert.equal(isDiscardedEntry(discards, '1000-0', undefined), true);
    assert.equal(isDiscardedEntry(discards, '1000-0', 'other'), true);
  });

  void it('finds an entry of the event older than the record: a duplicate of it', () => {
    assert.equal(isDiscardedEntry(discards, '1500-3', 'e'), true);
  });

  void it('lets through an entry of the event put back after the record, by a retry', () => {
    assert.equal(isDiscardedEntry(discards, '2000-1', 'e'), false);
    assert.equal(isDiscardedEntry(discards, '2500-0', 'e'), false);
  });

  void it('lets through what no record names', () => {
    assert.equal(isDiscardedEntry(discards, '1500-0', 'f'), false);
    assert.equal(isDiscardedEntry(discards, '1500-0', undefined), false);
  });
});
