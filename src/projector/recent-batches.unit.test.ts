import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { RECENT_WINDOW_MS, RecentBatches } from './recent-batches.ts';

void describe('RecentBatches', () => {
  const start = 1_000_000;

  void it('rates the last minute only: an outage after a day of good batches reads as one', () => {
    const recent = new RecentBatches(start);
    for (let at = start; at < start + 3_600_000; at += 1000) {
      recent.written(at, 10, 5);
    }
    const outage = start + 3_600_000;
    for (let at = outage; at < outage + 2 * RECENT_WINDOW_MS; at += 30_000) {
      recent.failed(at);
    }
    const figures = recent.figures(outage + 2 * RECENT_WINDOW_MS);
    assert.equal(figures.successRate, 0);
    assert.equal(figures.rate, 0);
    assert.equal(figures.averageBatchMs, 0);
  });

  void it('divides by the window, not by the time since its first batch', () => {
    const recent = new RecentBatches(start);
    const afterIdle = start + 10 * RECENT_WINDOW_MS;
    recent.written(afterIdle, 600, 40);
    assert.equal(recent.figures(afterIdle + 500).rate, 10, '600 events in the last 60 s');
    assert.equal(recent.figures(afterIdle + 500).averageBatchMs, 40);
  });

  void it('divides by the time since start while the process is younger than the window', () => {
    const recent = new RecentBatches(start);
    recent.written(start + 5_000, 100, 10);
    recent.written(start + 9_000, 100, 30);
    recent.failed(start + 9_500);
    const figures = recent.figures(start + 10_000);
    assert.equal(figures.rate, 20);
    assert.equal(figures.averageBatchMs, 20);
    assert.equal(figures.successRate, 2 / 3);
  });

  void it('reads as healthy with nothing attempted', () => {
    assert.deepEqual(new RecentBatches(start).figures(start + RECENT_WINDOW_MS), {
      rate: 0,
      averageBatchMs: 0,
      successRate: 1,
    });
  });
});
