import { compareEntryIds } from '../log/entry-id.ts';
import type { LiveFeed } from './live-feed.ts';
import {
  type LiveDelivery,
  type LiveFilter,
  type LiveItem,
  matches,
  type QuietMark,
  type ReaderOvertaken,
} from './live-message.ts';

/** What a transport (SSE, WebSocket) does for a session. */
export type LiveSink = {
  /** Resolves once the message is handed to the socket: a client that stops reading stalls it. */
  send(delivery: LiveDelivery, json: string): Promise<void>;
  /** Tells the client why (where the transport can) and closes the connection. */
  close(reason: DropReason): void;
  /** A keep-alive for proxies that cut idle connections. */
  heartbeat(): void;
};

export type DropReason = {
  code: 'slow_client' | 'resume_failed' | 'shutting_down' | 'unauthorized';
  message: string;
};

export type LiveSessionOptions = {
  feed: Pick<LiveFeed, 'subscribe' | 'range' | 'oldestId'>;
  filter: LiveFilter;
  /** Resume after this live-feed id; absent: from now on. */
  since?: string;
  /** Bytes queued for the client (not yet taken by the socket) beyond which it is dropped. */
  maxBufferedBytes: number;
  heartbeatMs: number;
  sink: LiveSink;
  onSent?: () => void;
  onDropped?: () => void;
  /**
   * Told when the stream no longer holds what follows `after` (a resume position, or the last
   * message a slow client was sent): messages up to `oldest` may be missing.
   */
  onGap?: (after: string, oldest: string) => void;
  /**
   * Asked at every heartbeat whether the token that opened the session still grants it: a
   * revoked token must stop a feed already open, not only the next request.
   */
  authorized?: () => boolean;
};

const REPLAY_PAGE = 500;
/**
 * Live messages kept while a replay runs. Past this many the rest are let go and read back from
 * the stream, which holds them too, so a long resume costs no more memory than a short one.
 */
const MAX_HELD = 2_000;
/** Heartbeat intervals a resuming client may take nothing before it is dropped as slow. */
const STALLED_HEARTBEATS = 2;

/**
 * One connected client: subscribes first, then replays from its resume position, so nothing
 * published in between is lost, and skips every id it has already queued, so nothing is sent
 * twice. Messages wait in a queue of its own while the socket is busy; once that queue holds more
 * than `maxBufferedBytes` the client is dropped rather than allowed to grow memory without bound.
 * A resume is sent at the pace the client reads instead: the replay, and then the messages that
 * arrived during it, wait while the queue is above half its bound, so a client coming back from
 * far behind catches up rather than being dropped the moment it asks (and again each time it
 * reconnects). One that takes nothing for two heartbeats meanwhile is dropped as slow. A client
 * that reads more slowly than the site publishes never reaches live messages: it goes on reading
 * the stream, and is told of a gap if the stream's trimming overtakes it.
 */
export class LiveSession {
  readonly #options: LiveSessionOptions;
  readonly #queue: { delivery: LiveDelivery; json: string }[] = [];
  #queuedBytes = 0;
  #lastQueued: string | undefined;
  /** Live messages (and quiet marks) that arrived while catching up; undefined once live. */
  #held: LiveItem[] | undefined = [];
  /** The last mark a gap notice was sent for. */
  #lastGapMark: string | undefined;
  /** Live messages were let go while catching up: they are read back from the stream. */
  #heldLetGo = false;
  /** Messages the socket has taken, and a wake-up for the catch-up waiting on it. */
  #sent = 0;
  #roomWaiter: (() => void) | undefined;
  #pumping = false;
  #closed = false;
  #unsubscribe: (() => void) | undefined;
  #heartbeat: NodeJS.Timeout | undefined;
  #done: () => void = () => undefined;
  readonly #finished = new Promise<void>((resolve) => {
    this.#done = resolve;
  });

  constructor(options: LiveSessionOptions) {
    this.#options = options;
    this.#lastQueued = options.since;
  }

  get queuedBytes(): number {
    return this.#queuedBytes;
  }

  /** Whether the session is still sending its resume and what arrived meanwhile. */
  get catchingUp(): boolean {
    return this.#held !== undefined && !this.#closed;
  }

  /** Runs until the client goes away or is dropped. */
  async run(): Promise<void> {
    if (this.#closed) {
      // Gone before it began (a client that hung up while its stream was being set up): a
      // subscription taken now would never be given back.
      return;
    }
    this.#unsubscribe = this.#options.feed.subscribe(
      (delivery) => this.#receive(delivery),
      () => {
        if (!this.#closed) {
          this.stop();
          this.#options.sink.close({ code: 'shutting_down', message: 'the server is stopping' });
        }
      },
    );
    this.#heartbeat = setInterval(() => {
      if (this.#options.authorized && !this.#options.authorized()) {
        this.#drop({
          code: 'unauthorized',
          message: 'the token that opened this feed was revoked',
        });
        return;
      }
      if (!this.#pumping && !this.#closed) {
        this.#options.sink.heartbeat();
      }
    }, this.#options.heartbeatMs);
    this.#heartbeat.unref();
    await this.#catchUpOrDrop(this.#options.since);
    await this.#finished;
  }

  /** The client went away (or the server stops): release everything. Idempotent. */
  stop(): void {
    if (this.#closed) {
      return;
    }
    this.#closed = true;
    this.#unsubscribe?.();
    clearInterval(this.#heartbeat);
    this.#queue.length = 0;
    this.#queuedBytes = 0;
    this.#held = undefined;
    this.#roomWaiter?.();
    this.#done();
  }

  #receive(item: LiveItem) {
    if (this.#held === undefined) {
      if ('message' in item) {
        this.#offer(item);
      } else {
        this.#gapWhileLive(item);
      }
    } else if ('overtaken' in item) {
      // Catching up: its next round reads the stream again from what it queued, which tells of
      // a gap only where its own position was trimmed (a resume that read the stream past the
      // reader loses nothing there).
      this.#heldLetGo = true;
    } else if (this.#heldLetGo || this.#held.length >= MAX_HELD) {
      this.#heldLetGo = true;
    } else if (!('message' in item) || matches(this.#options.filter, item.message)) {
      this.#held.push(item);
    }
  }

  /**
   * A mark reaching a live session: a quiet spell before it, or the process's reader overtaken by
   * the stream's trimming just before it. What arrives after it is held, as during a catch-up,
   * until what was queued before it has gone out and the gap notice with it, so the client knows
   * where the gap falls; then the session is live again. A mark at or before the last message
   * queued lies behind the session and tells it nothing.
   */
  #gapWhileLive(mark: QuietMark | ReaderOvertaken) {
    if (this.#lastQueued !== undefined && compareEntryIds(mark.id, this.#lastQueued) <= 0) {
      return;
    }
    this.#held = [mark];
    void this.#catchUpOrDrop(undefined);
  }

  /**
   * A gap notice for a mark: before a quiet mark nobody listened for a while, so nothing was
   * published; before an overtaken one the stream's trimming took what the reader had not read.
   * What happened there is missing, right after what was queued so far. Once per mark: a replay
   * from what was queued (after live messages were let go) meets a quiet mark again, and a
   * client that joined while the first after the spell waited to write it meets it live. Sent
   * once what was queued before it has gone out, so the client knows where it falls.
   */
  async #gapNotice(mark: QuietMark | ReaderOvertaken, after?: string) {
    if (this.#lastGapMark !== undefined && compareEntryIds(mark.id, this.#lastGapMark) <= 0) {
      return;
    }
    this.#lastGapMark = mark.id;
    const since = this.#lastQueued ?? after ?? this.#options.since;
    await this.#room(0);
    if (!this.#closed && since !== undefined) {
      this.#options.onGap?.(since, mark.id);
    }
  }

  /**
   * The replay from the resume position, then what arrived meanwhile, still holding what arrives
   * while that is sent so nothing overtakes it; and again from the stream after the last message
   * queued, for as long as live messages had to be let go.
   */
  async #catchUpOrDrop(from: string | undefined) {
    try {
      await this.#catchUp(from);
    } catch (err) {
      this.#drop({ code: 'resume_failed', message: `resume failed: ${(err as Error).message}` });
    }
  }

  async #catchUp(from: string | undefined) {
    let after = from;
    for (;;) {
      if (after !== undefined) {
        await this.#replay(after);
      }
      while (this.#held && this.#held.length > 0) {
        for (const item of this.#held.splice(0)) {
          if ('message' in item) {
            this.#offer(item);
            await this.#room();
          } else {
            await this.#gapNotice(item);
          }
        }
      }
      if (this.#closed) {
        return;
      }
      if (!this.#heldLetGo) {
        this.#held = undefined;
        return;
      }
      // What was let go was published after everything held, and is in the stream.
      this.#heldLetGo = false;
      after = this.#lastQueued;
    }
  }

  async #replay(since: string) {
    const { feed, onGap } = this.#options;
    let after = since;
    for (;;) {
      // From `after` itself: while it is still in the stream nothing after it was trimmed, so the
      // stream's first entry is looked up only when it is not (a reader slower than the trimming,
      // or a resume position from long ago).
      const [first, ...rest] = await feed.range(after, REPLAY_PAGE + 1, { including: true });
      const resumedAt = first !== undefined && compareEntryIds(first.id, after) === 0;
      const page = resumedAt ? rest : [first, ...rest].filter((d) => d !== undefined);
      if (!resumedAt) {
        const oldest = await feed.oldestId();
        if (!this.#closed && oldest !== undefined && compareEntryIds(oldest, after) > 0) {
          // After everything sent before the gap, so the client knows where it falls.
          await this.#room(0);
          if (this.#closed) {
            return;
          }
          onGap?.(after, oldest);
        }
      }
      for (const item of page) {
        if ('quiet' in item) {
          await this.#gapNotice(item, after);
          if (this.#closed) {
            return;
          }
        } else {
          this.#offer(item);
          await this.#room();
        }
      }
      const last = page.at(-1);
      if (this.#closed || page.length < REPLAY_PAGE || !last) {
        return;
      }
      after = last.id;
    }
  }

  /**
   * Waits while the client's queue holds more than `limit` bytes (half its bound by default);
   * drops the client if it takes nothing for two heartbeats meanwhile.
   */
  async #room(limit = this.#options.maxBufferedBytes / 2): Promise<void> {
    const stallMs = STALLED_HEARTBEATS * this.#options.heartbeatMs;
    while (!this.#closed && this.#queuedBytes > limit) {
      const sentBefore = this.#sent;
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, stallMs);
        this.#roomWaiter = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.#roomWaiter = undefined;
      if (this.#sent === sentBefore && this.#queuedBytes > limit) {
        this.#drop({
          code: 'slow_client',
          message: `slow client: took nothing for ${stallMs / 1000} s while catching up`,
        });
      }
    }
  }

  #offer(delivery: LiveDelivery) {
    if (this.#closed) {
      return;
    }
    if (this.#lastQueued !== undefined && compareEntryIds(delivery.id, this.#lastQueued) <= 0) {
      return;
    }
    this.#lastQueued = delivery.id;
    if (!matches(this.#options.filter, delivery.message)) {
      return;
    }
    const json = JSON.stringify(delivery.message);
    this.#queue.push({ delivery, json });
    this.#queuedBytes += json.length;
    if (this.#queuedBytes > this.#options.maxBufferedBytes) {
      this.#drop({
        code: 'slow_client',
        message: `slow client: more than ${this.#options.maxBufferedBytes} bytes waiting to be read`,
      });
      return;
    }
    void this.#pump();
  }

  async #pump() {
    if (this.#pumping) {
      return;
    }
    this.#pumping = true;
    try {
      for (let next = this.#queue[0]; next && !this.#closed; next = this.#queue[0]) {
        await this.#options.sink.send(next.delivery, next.json);
        if (this.#closed) {
          return;
        }
        // Counted until the socket has taken it: a stalled send keeps its bytes on the bound.
        this.#queue.shift();
        this.#queuedBytes -= next.json.length;
        this.#sent += 1;
        this.#options.onSent?.();
        this.#roomWaiter?.();
      }
    } catch {
      this.stop();
    } finally {
      this.#pumping = false;
    }
  }

  #drop(reason: DropReason) {
    if (this.#closed) {
      return;
    }
    this.#options.onDropped?.();
    this.stop();
    this.#options.sink.close(reason);
  }
}
