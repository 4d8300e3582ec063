import { compareEntryIds } from '../log/entry-id.ts';
import type { LiveFeed } from './live-feed.ts';
import { type LiveDelivery, type LiveFilter, matches } from './live-message.ts';

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
  /** Told when the resume position is older than what the stream still holds. */
  onGap?: (oldest: string) => void;
  /**
   * Asked at every heartbeat whether the token that opened the session still grants it: a
   * revoked token must stop a feed already open, not only the next request.
   */
  authorized?: () => boolean;
};

const REPLAY_PAGE = 500;

/**
 * One connected client: subscribes first, then replays from its resume position, so nothing
 * published in between is lost, and skips every id it has already queued, so nothing is sent
 * twice. Messages wait in a queue of its own while the socket is busy; once that queue holds more
 * than `maxBufferedBytes` the client is dropped rather than allowed to grow memory without bound.
 */
export class LiveSession {
  readonly #options: LiveSessionOptions;
  readonly #queue: { delivery: LiveDelivery; json: string }[] = [];
  #queuedBytes = 0;
  #lastQueued: string | undefined;
  /** Live messages that arrived while the replay was running. */
  #held: LiveDelivery[] | undefined = [];
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

  /** Runs until the client goes away or is dropped. */
  async run(): Promise<void> {
    const { feed, since } = this.#options;
    this.#unsubscribe = feed.subscribe(
      (delivery) => {
        if (this.#held) {
          this.#held.push(delivery);
        } else {
          this.#offer(delivery);
        }
      },
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
    try {
      if (since !== undefined) {
        await this.#replay(since);
      }
    } catch (err) {
      this.#drop({ code: 'resume_failed', message: `resume failed: ${(err as Error).message}` });
    }
    const held = this.#held ?? [];
    this.#held = undefined;
    for (const delivery of held) {
      this.#offer(delivery);
    }
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
    this.#done();
  }

  async #replay(since: string) {
    const oldest = await this.#options.feed.oldestId();
    if (oldest !== undefined && compareEntryIds(oldest, since) > 0) {
      this.#options.onGap?.(oldest);
    }
    let after = since;
    for (;;) {
      const page = await this.#options.feed.range(after, REPLAY_PAGE);
      for (const delivery of page) {
        this.#offer(delivery);
      }
      const last = page.at(-1);
      if (this.#closed || page.length < REPLAY_PAGE || !last) {
        return;
      }
      after = last.id;
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
        this.#options.onSent?.();
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
