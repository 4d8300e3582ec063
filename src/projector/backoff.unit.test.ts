import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { Backoff, pause } from './backoff.ts';

void describe('Backoff', () => {
  void it('doubles up to the cap, with jitter within the upper half', () => {
    const low = new Backoff({ baseMs: 100, capMs: 1000, random: () => 0 });
    const high = new Backoff({ baseMs: 100, capMs: 1000, random: () => 1 });
    assert.deepEqual(
      Array.from({ length: 6 }, () => low.nextDelayMs()),
      [50, 100, 200, 400, 500, 500],
    );
    assert.deepEqual(
      Array.from({ length: 6 }, () => high.nextDelayMs()),
      [100, 200, 400, 800, 1000, 1000],
    );
  });

  void it('starts over after a reset', () => {
    const backoff = new Backoff({ baseMs: 10, capMs: 1000, random: () => 1 });
    backoff.nextDelayMs();
    backoff.nextDelayMs();
    backoff.reset();
    assert.equal(backoff.nextDelayMs(), 10);
  });

  void it('ends a pause as soon as the signal aborts', async () => {
    const controller = new AbortController();
    const started = Date.now();
    const sleeping = pause(60_000, controller.signal);
    controller.abort();
    await sleeping;
    assert.ok(Date.now() - started < 1000);
  });

  void it('sleeps past the 24.8 days one setTimeout can take, in steps', async (t) => {
    t.mock.timers.enable({ apis: ['setTimeout'] });
    const flush = () => new Promise((resolve) => setImmediate(resolve));
    let done = false;
    const day = 24 * 3600 * 1000;
    void pause(30 * day, new AbortController().signal).then(() => {
      done = true;
    });
    for (let elapsed = 0; elapsed < 29 * day; elapsed += day) {
      t.mock.timers.tick(day);
      await flush();
      assert.equal(done, false, `still asleep after ${elapsed / day + 1} days`);
    }
    // The second step starts when the first is seen to end, at the next tick here: within a day.
    t.mock.timers.tick(2 * day);
    await flush();
    assert.equal(done, true, 'awake after 30 days and a little');
  });
});
