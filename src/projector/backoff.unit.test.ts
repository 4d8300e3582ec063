import assert from 'node:assert/strict';
import { EventEmitter, getEventListeners } from 'node:events';
import { describe, it } from 'node:test';
import { Backoff, pause, pauseUnlessReconnected } from './backoff.ts';

void describe('Backoff', () => {
  /** Lets the callbacks of timers the mock clock fired run. */
  const flush = () => new Promise((resolve) => setImmediate(resolve));

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

  /** A stand-in for an ioredis client: its status, and 'ready' once it is made again. */
  const connectionAway = () => {
    const connection = Object.assign(new EventEmitter(), { status: 'reconnecting' });
    const madeAgain = () => {
      connection.status = 'ready';
      connection.emit('ready');
    };
    return { connection, madeAgain };
  };

  /** A pause of `ms` on these connections, and whether it has ended. */
  const pausedOn = (
    ms: number,
    connections: Parameters<typeof pauseUnlessReconnected>[1],
    signal: AbortSignal,
  ) => {
    let done = false;
    void pauseUnlessReconnected(ms, connections, signal).then(() => {
      done = true;
    });
    return () => done;
  };

  void it('ends a pause once every connection is ready again, and leaves no listener behind', async (t) => {
    t.mock.timers.enable({ apis: ['setTimeout'] });
    const reader = connectionAway();
    const shared = connectionAway();
    const signal = new AbortController().signal;
    const ended = pausedOn(60_000, [reader.connection, shared.connection], signal);
    t.mock.timers.tick(30_000);
    await flush();
    assert.equal(ended(), false, 'still paused before the connections are made again');
    reader.madeAgain();
    await flush();
    assert.equal(ended(), false, 'still paused while the other connection is away');
    shared.madeAgain();
    await flush();
    assert.equal(ended(), true, 'awake once both are ready');
    for (const { connection } of [reader, shared]) {
      assert.equal(connection.listenerCount('ready'), 0);
    }
    assert.equal(getEventListeners(signal, 'abort').length, 0);
  });

  void it('runs its course, and leaves no listener, when the connection is not made again', async (t) => {
    t.mock.timers.enable({ apis: ['setTimeout'] });
    const { connection } = connectionAway();
    const signal = new AbortController().signal;
    const ended = pausedOn(1_000, [connection], signal);
    t.mock.timers.tick(999);
    await flush();
    assert.equal(ended(), false);
    t.mock.timers.tick(1);
    await flush();
    assert.equal(ended(), true);
    assert.equal(connection.listenerCount('ready'), 0);
    assert.equal(getEventListeners(signal, 'abort').length, 0);
  });

  void it('ends a pause as soon as the signal aborts, whatever the connection does', async () => {
    const controller = new AbortController();
    const { connection } = connectionAway();
    const started = Date.now();
    const sleeping = pauseUnlessReconnected(60_000, [connection], controller.signal);
    controller.abort();
    await sleeping;
    assert.ok(Date.now() - started < 1000);
    assert.equal(connection.listenerCount('ready'), 0);
  });
});
