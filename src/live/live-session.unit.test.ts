import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { compareEntryIds } from '../log/entry-id.ts';
import type { LiveDelivery, LiveItem, QuietMark } from './live-message.ts';
import { type DropReason, LiveSession } from './live-session.ts';

/** An in-memory live stream with the feed's interface; `publish` also reaches subscribers. */
const memoryFeed = () => {
  const stream: LiveDelivery[] = [];
  const listeners = new Set<(item: LiveItem) => void>();
  let afterLastPage: () => void = () => undefined;
  let next = 1_000;
  let ranges = 0;
  const publish = (n: number) => {
    for (let i = 0; i < n; i += 1) {
      const delivery: LiveDelivery = {
        id: `${next}-0`,
        message: {
          event_id: `0190a000-0000-7000-8000-${String(next).padStart(12, '0')}`,
          aggregate_id: '0190a000-0000-7000-8000-000000000001',
          aggregate_type: 'executed_obs_unit',
          type: 'ExecutedObsUnitStarted',
          state: 'applied',
          partition: 0,
          entry_id: `${next}-0`,
          at: new Date(next).toISOString(),
        },
      };
      next += 1;
      stream.push(delivery);
      for (const listener of listeners) {
        listener(delivery);
      }
    }
  };
  /** A quiet mark, as the live reader hands one on: written after the session went live. */
  const markQuiet = (again?: QuietMark) => {
    const mark: QuietMark = again ?? { id: `${next}-0`, quiet: true };
    next += again ? 0 : 1;
    for (const listener of listeners) {
      listener(mark);
    }
    return mark;
  };
  /**
   * `unheard` messages the process's reader never handed on before the trimming overtook it,
   * after which the stream keeps its last `kept` messages (all of them, if `kept` is undefined).
   * Then the reader's notice, and the messages it reads after it, handed on as it reads them.
   */
  const overtakeReader = (unheard: number, kept?: number) => {
    const heard = new Set(listeners);
    listeners.clear();
    publish(unheard);
    for (const listener of heard) {
      listeners.add(listener);
    }
    if (kept !== undefined) {
      stream.splice(0, stream.length - kept);
    }
    const [first, ...rest] = stream.slice(-Math.min(unheard, kept ?? unheard));
    for (const listener of listeners) {
      if (first) {
        listener({ id: first.id, overtaken: true });
        listener(first);
      }
      for (const delivery of rest) {
        listener(delivery);
      }
    }
  };
  return {
    stream,
    publish,
    markQuiet,
    overtakeReader,
    /** How many ranges of the stream sessions have read. */
    ranges: () => ranges,
    /** Runs `then` once, when a range first comes back short: the end of a replay. */
    onLastPage: (then: () => void) => {
      afterLastPage = then;
    },
    feed: {
      subscribe: (listener: (item: LiveItem) => void) => {
        listeners.add(listener);
        return () => listeners.delete(listener);
      },
      range: async (after: string, count: number, { including = false } = {}) => {
        ranges += 1;
        const page = stream
          .filter((d) => compareEntryIds(d.id, after) > (including ? -1 : 0))
          .slice(0, count);
        if (page.length < count) {
          // The replay's last page is read: what is published now reaches the session live.
          const published = afterLastPage;
          afterLastPage = () => undefined;
          published();
        }
        return page;
      },
      oldestId: async () => stream[0]?.id,
    },
  };
};

const waitUntil = async (condition: () => boolean, what: string, timeoutMs = 10_000) => {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    assert.ok(Date.now() < deadline, `timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
};

/**
 * A session resuming from before the first message, with a sink that takes one message per turn
 * of the event loop and waits for `gate` before its first.
 */
const resumingSession = (
  feed: ReturnType<typeof memoryFeed>['feed'],
  maxBufferedBytes: number,
  gate: Promise<void> = Promise.resolve(),
  { heartbeatMs = 60_000, since = '0-0' } = {},
) => {
  const received: string[] = [];
  const drops: DropReason[] = [];
  const gaps: { after: string; oldest: string; receivedBefore: number }[] = [];
  let maxQueued = 0;
  const session: LiveSession = new LiveSession({
    feed,
    filter: {},
    since,
    maxBufferedBytes,
    heartbeatMs,
    onGap: (after, oldest) => gaps.push({ after, oldest, receivedBefore: received.length }),
    sink: {
      send: async (delivery) => {
        maxQueued = Math.max(maxQueued, session.queuedBytes);
        await gate;
        await new Promise((resolve) => setImmediate(resolve));
        received.push(delivery.id);
      },
      close: (reason) => drops.push(reason),
      heartbeat: () => undefined,
    },
  });
  const running = session.run();
  return { session, running, received, drops, gaps, maxQueued: () => maxQueued };
};

/**
 * A session resuming from the first of 3,000 messages, its replay started and its sink waiting
 * for `open` before it takes the first.
 */
const resumingFromTheFirstOf3000 = async () => {
  const memory = memoryFeed();
  memory.publish(3_000);
  let open: () => void = () => undefined;
  const gate = new Promise<void>((resolve) => {
    open = resolve;
  });
  const client = resumingSession(memory.feed, 16_384, gate, { since: memory.stream[0]?.id });
  await waitUntil(() => client.session.queuedBytes > 0, 'the replay to start');
  return { ...memory, client, open };
};

/** A session gone live on an empty stream. */
const liveSession = async () => {
  const memory = memoryFeed();
  const client = resumingSession(memory.feed, 16_384);
  await waitUntil(() => !client.session.catchingUp, 'the session to go live');
  return { ...memory, client };
};

/** A live session that has been sent three messages. */
const liveAfterThreeMessages = async () => {
  const live = await liveSession();
  live.publish(3);
  await waitUntil(() => live.client.received.length === 3, 'the first messages');
  return live;
};

/** Ends the session, which must have sent every message of the stream, in order, undropped. */
const stopHavingSentAll = async (
  client: ReturnType<typeof resumingSession>,
  stream: readonly LiveDelivery[],
) => {
  client.session.stop();
  await client.running;
  assert.deepEqual(client.drops, []);
  assert.deepEqual(
    client.received,
    stream.map((d) => d.id),
  );
};

void describe('LiveSession stopped before it ran', () => {
  void it('subscribes to nothing: a client gone while its stream was set up leaves no listener', async () => {
    const { feed } = memoryFeed();
    let subscribed = 0;
    const counting = {
      ...feed,
      subscribe: (listener: (item: LiveItem) => void) => {
        subscribed += 1;
        const unsubscribe = feed.subscribe(listener);
        return () => {
          subscribed -= 1;
          return unsubscribe();
        };
      },
    };
    const session = new LiveSession({
      feed: counting,
      filter: {},
      since: '0-0',
      maxBufferedBytes: 16_384,
      heartbeatMs: 60_000,
      sink: { send: async () => undefined, close: () => undefined, heartbeat: () => undefined },
    });
    session.stop();
    await session.run();
    assert.equal(subscribed, 0);
  });
});

void describe('LiveSession live', () => {
  void it('sends a gap notice, once, for a quiet mark that reaches it live, after what was sent before it', async () => {
    const { publish, stream, markQuiet, client } = await liveAfterThreeMessages();
    // Written by the first client after a quiet spell while this one, which joined beside it
    // without waiting, was already live.
    const mark = markQuiet();
    markQuiet(mark);
    publish(2);
    await waitUntil(() => client.received.length === 5, 'the messages after it');
    assert.deepEqual(
      client.gaps.filter((gap) => gap.oldest === mark.id),
      [{ after: stream[2]?.id, oldest: mark.id, receivedBefore: 3 }],
    );
    await stopHavingSentAll(client, stream);
  });
});

void describe('LiveSession behind an overtaken reader', () => {
  void it('tells a live session of the gap after what it was sent, from what the reader hands on', async () => {
    const { publish, stream, overtakeReader, client, ranges } = await liveAfterThreeMessages();
    const sentBefore = client.received.slice();
    const rangesBefore = ranges();
    // Twenty messages the reader never handed on; the trimming kept the last ten of them.
    overtakeReader(20, 10);
    publish(2);
    await waitUntil(() => client.received.length === 3 + 12, 'what the stream still holds');
    assert.deepEqual(client.gaps, [
      { after: sentBefore.at(-1), oldest: stream[0]?.id, receivedBefore: 3 },
    ]);
    assert.deepEqual(client.received, [...sentBefore, ...stream.map((d) => d.id)]);
    // From what the reader hands on: each of a process's sessions reading the stream again would
    // multiply the reads just when the process is behind.
    assert.equal(ranges(), rangesBefore);
    assert.deepEqual(client.drops, []);
    client.session.stop();
    await client.running;
  });

  void it('tells a resuming session whose own position is still in the stream of no gap, and sends nothing twice', async () => {
    const { publish, stream, overtakeReader, client, open } = await resumingFromTheFirstOf3000();
    // The reader was overtaken while this session read the stream on its own, from a position
    // the trimming never reached.
    overtakeReader(20);
    open();
    await waitUntil(
      () => client.received.length === stream.length - 1,
      'every message after since',
    );
    publish(2);
    await waitUntil(() => client.received.length === stream.length - 1, 'the live messages after');
    assert.deepEqual(client.gaps, []);
    assert.deepEqual(
      client.received,
      stream.slice(1).map((d) => d.id),
    );
    assert.deepEqual(client.drops, []);
    client.session.stop();
    await client.running;
  });
});

void describe('LiveSession live, with messages still queued', () => {
  void it("sends a quiet mark's gap notice after what was queued before it and before what follows", async () => {
    const { publish, stream, markQuiet, client } = await liveSession();
    // All at once: three queued and not yet sent when the mark arrives, two right after it.
    publish(3);
    const mark = markQuiet();
    publish(2);
    await waitUntil(() => client.received.length === 5, 'every message');
    assert.deepEqual(client.gaps, [{ after: stream[2]?.id, oldest: mark.id, receivedBefore: 3 }]);
    await stopHavingSentAll(client, stream);
  });
});

void describe('LiveSession resuming', () => {
  void it('sends a backlog many times its buffer at the pace the client reads, within the buffer', async () => {
    const { feed, publish, stream } = memoryFeed();
    publish(3_000);
    const bytes = stream.reduce((sum, d) => sum + JSON.stringify(d.message).length, 0);
    const maxBufferedBytes = 16_384;
    assert.ok(bytes > 20 * maxBufferedBytes, `a backlog of ${bytes} bytes`);

    const client = resumingSession(feed, maxBufferedBytes);
    await waitUntil(
      () => client.received.length === stream.length || client.drops.length > 0,
      'the backlog to be sent',
    );
    await stopHavingSentAll(client, stream);
    const largest = Math.max(...stream.map((d) => JSON.stringify(d.message).length));
    assert.ok(
      client.maxQueued() <= maxBufferedBytes / 2 + largest,
      `queued at most ${client.maxQueued()} bytes`,
    );
  });

  void it('reads back from the stream what it let go while catching up, each once and in order', async () => {
    const { feed, publish, stream, onLastPage } = memoryFeed();
    publish(2_000);
    // Published once the replay has read its last page, so the pages already read do not hold
    // them: past what the session holds, they come back only by reading the stream again.
    onLastPage(() => publish(12_000));
    const client = resumingSession(feed, 16_384);
    await waitUntil(
      () => client.received.length >= stream.length || client.drops.length > 0,
      'every message to be sent',
    );
    assert.equal(stream.length, 14_000);
    publish(5);
    await waitUntil(() => client.received.length === stream.length, 'live messages after it');
    await stopHavingSentAll(client, stream);
  });

  void it('tells a client the stream was trimmed past it, after what it was sent before the gap', async () => {
    // From the first message, which is still there: no gap yet.
    const { stream, client, open } = await resumingFromTheFirstOf3000();
    const trimmed = stream.splice(0, 2_000).map((d) => d.id);
    open();
    await waitUntil(() => !client.session.catchingUp, 'the catch-up to end');
    // The catch-up ends once its last message is queued, which the sink may not have sent yet.
    await waitUntil(() => client.received.at(-1) === stream.at(-1)?.id, 'the last message sent');
    client.session.stop();
    await client.running;

    assert.equal(client.gaps.length, 1, JSON.stringify(client.gaps));
    const [gap] = client.gaps;
    assert.equal(gap?.oldest, stream[0]?.id);
    assert.equal(client.received[(gap?.receivedBefore ?? 0) - 1], gap?.after, 'sent up to it');
    assert.deepEqual(
      client.received.slice(gap?.receivedBefore),
      stream.map((d) => d.id),
    );
    assert.deepEqual(
      client.received.slice(0, gap?.receivedBefore),
      trimmed.slice(1, 1 + (gap?.receivedBefore ?? 0)),
    );
    assert.deepEqual(client.drops, []);
  });

  void it('drops a client that takes nothing for two heartbeats while catching up', async () => {
    const { feed, publish } = memoryFeed();
    publish(1_000);
    const started = Date.now();
    const client = resumingSession(feed, 16_384, new Promise<void>(() => undefined), {
      heartbeatMs: 50,
    });
    await waitUntil(() => client.drops.length > 0, 'the drop');
    await client.running;
    assert.equal(client.drops[0]?.code, 'slow_client');
    // Timers count from the event loop's cached clock, a few milliseconds early at most.
    assert.ok(Date.now() - started >= 90, 'not before two heartbeats');
  });

  void it('still drops a client that stops reading live messages', async () => {
    const { feed, publish } = memoryFeed();
    const client = resumingSession(feed, 4_096, new Promise<void>(() => undefined));
    await waitUntil(() => !client.session.catchingUp, 'the empty replay');
    publish(100);
    await waitUntil(() => client.drops.length > 0, 'the drop');
    await client.running;
    assert.equal(client.drops[0]?.code, 'slow_client');
  });
});
