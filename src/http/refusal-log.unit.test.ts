import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { refusalLog } from './refusal-log.ts';

void describe('refusal log', () => {
  void it('logs the first refusal of a code, then one a window with how many it left out', () => {
    const refusals = refusalLog(10_000);
    assert.equal(refusals('log_unavailable', 0), 0);
    assert.equal(refusals('log_unavailable', 1), undefined);
    assert.equal(refusals('log_unavailable', 9_999), undefined);
    // Another code has a window of its own.
    assert.equal(refusals('replica_unavailable', 5_000), 0);
    assert.equal(refusals('log_unavailable', 10_000), 2);
    assert.equal(refusals('log_unavailable', 10_001), undefined);
    assert.equal(refusals('log_unavailable', 30_000), 1);
  });
});
