import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { nextPoll } from './acker.ts';

const pass = { behind: false, nudgedDuringPass: false, quickPolls: 15, intervalMs: 20 };

void describe('the acker’s polling', () => {
  void it('polls the replica again soon while applied records wait for it', () => {
    assert.deepEqual(nextPoll({ ...pass, behind: true }), { sleepMs: 2, quickPolls: 14 });
  });

  void it('polls soon after a nudge that came during the pass, even if the pass found nothing behind', () => {
    assert.deepEqual(nextPoll({ ...pass, nudgedDuringPass: true }), { sleepMs: 2, quickPolls: 14 });
  });

  void it('waits the interval when nothing waits and nothing new came, or the quick polls ran out', () => {
    assert.deepEqual(nextPoll(pass), { sleepMs: 20, quickPolls: 0 });
    assert.deepEqual(nextPoll({ ...pass, behind: true, nudgedDuringPass: true, quickPolls: 0 }), {
      sleepMs: 20,
      quickPolls: 0,
    });
  });

  void it('never waits longer than the interval for a quick poll', () => {
    assert.deepEqual(nextPoll({ ...pass, behind: true, intervalMs: 1 }), {
      sleepMs: 1,
      quickPolls: 14,
    });
  });
});
