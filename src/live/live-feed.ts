import type { Redis } from 'ioredis';
import type { Config } from '../config.ts';
import { DEFAULT_LIVE_MAX_LEN, liveListenersKey, liveStreamKey } from '../log/keys.ts';
import { blockingConnection } from '../log/redis.ts';
import { FailureSpell } from '../observability/failure-spell.ts';
import type { Logger } from '../observability/logger.ts';
import { Backoff, pause, pauseUnlessReconnected } from '../projector/backoff.ts';
import { reasonOf } from '../reason.ts';
import {
  addLiveMessage,
  decodeLiveOrMark,
  type LiveDelivery,
  type LiveItem,
  type LiveMessage,
  QUIET_FIELD,
  type QuietMark,
  type ReaderOvertaken,
} from './live-message.ts';

type StreamReply = [stream: string, entries: [string, string[]][]][] | null;

const BLOCK_MS = 1_000;
const READ_COUNT = 1_000;
/**
 * Publishing costs a Redis write per state change, a fifth of the projector's CPU under a drain.
 * It is skipped while no process of the site has had a live client for this long; a client that
 * reconnects within it still resumes without a gap.
 */
const LISTENER_TTL_MS = 600_000;
const LISTENER_CHECK_MS = 1_000;
/**
 * How often a process with live clients marks the site as listened to again. The mark outlives
 * this many times over, but it can go sooner (a Redis outage longer than its TTL, a Redis back
 * without its data): until it is set again nothing is published.
 */
const LISTENER_MARK_EVERY_MS = 5_000;
/**
 * A "nobody listens" answer is kept this long, so a projector batch or an acknowledgement costs no
 * Redis round trip for the check; the first client after a quiet spell waits it out before its
 * stream starts. (The append asks inside its script.)
 */
const QUIET_CHECK_MS = 250;

export type LiveFeedDeps = {
  /** The process's shared connection: publishing and resume ranges. */
  redis: Redis;
  /** The live stream (`keys.ts` `liveStreamKey`). */
  key: string;
  /** Exists while the site has live clients (`keys.ts` `liveListenersKey`). */
  listenersKey: string;
  /** Approximate length the stream is trimmed to: how far back a client can resume. */
  maxLen: number;
  logger: Logger;
};

/**
 * The site's live feed. Every process publishes state changes to one Redis stream and reads it
 * back with a plain XREAD (no group: every process sees every message) on a connection of its
 * own, then fans each message out to its connected clients in-process. A stream rather than
 * pub/sub so a client that reconnects resumes from its last id with XRANGE instead of losing
 * what happened while it was away.
 */
export class LiveFeed {
  readonly #deps: LiveFeedDeps;
  readonly #listeners = new Map<(item: LiveItem) => void, () => void>();
  readonly #abort = new AbortController();
  readonly #backoff = new Backoff({ baseMs: 100, capMs: 5_000 });
  #reader: Redis | undefined;
  #running: Promise<void> | undefined;
  #stopping: Promise<void> | undefined;
  #lastError: string | undefined;
  #listened = false;
  #listenedCheckedAt = 0;
  #markTimer: NodeJS.Timeout | undefined;

  readonly #failures: FailureSpell;

  constructor(deps: LiveFeedDeps) {
    this.#deps = deps;
    this.#failures = new FailureSpell(deps.logger, 'reading the live feed');
  }

  /**
   * Whether any process of the site had a live client within the listener TTL: a yes is kept for
   * a second, a no for QUIET_CHECK_MS (see `announceListener`). Never rejects: when Redis cannot
   * answer, the last answer stands (the step asking is about to meet the same Redis anyway).
   */
  async listening(): Promise<boolean> {
    if (this.#listeners.size > 0) {
      return true;
    }
    const keepMs = this.#listened ? LISTENER_CHECK_MS : QUIET_CHECK_MS;
    if (Date.now() - this.#listenedCheckedAt < keepMs) {
      return this.#listened;
    }
    this.#listenedCheckedAt = Date.now();
    try {
      this.#listened = (await this.#deps.redis.exists(this.#deps.listenersKey)) === 1;
    } catch (err) {
      this.#deps.logger.warn({ err }, 'live feed listener check failed');
    }
    return this.#listened;
  }

  /**
   * Marks the site as listened to before a client's stream starts. When nobody listened before,
   * other processes may still hold a "nobody listens" answer for up to QUIET_CHECK_MS and skip
   * publishing: wait that out, so the client misses nothing published once its stream began. And
   * nothing was published since the listeners key lapsed: a quiet mark in the stream, once the
   * wait is over, tells a client resuming from before it that messages may be missing there.
   */
  async announceListener(): Promise<void> {
    const { redis, listenersKey, key, maxLen } = this.#deps;
    const previous = await redis.call(
      'SET',
      listenersKey,
      '1',
      'PX',
      String(LISTENER_TTL_MS),
      'GET',
    );
    if (previous === null) {
      await new Promise((resolve) => setTimeout(resolve, QUIET_CHECK_MS));
      // After the wait: what a process skipped meanwhile, on its cached answer, lies before it.
      await redis.xadd(key, 'MAXLEN', '~', maxLen, '*', QUIET_FIELD, '1');
    }
  }

  /**
   * As a new client's announcement does: a mark found gone means messages went unpublished while
   * this process's clients were live, and the quiet mark it leaves reaches them as a gap notice.
   */
  #markListening(): void {
    void this.announceListener().catch((err: unknown) =>
      this.#deps.logger.warn({ err }, 'live feed listener mark failed'),
    );
  }

  /**
   * Appends messages to the live stream. The feed is a view of the log, not part of it: a failure
   * here is logged and never fails the write, projection or acknowledgement that caused it.
   */
  async publish(messages: readonly LiveMessage[]): Promise<void> {
    if (messages.length === 0) {
      return;
    }
    const { redis, key, maxLen } = this.#deps;
    try {
      if (!(await this.listening())) {
        return;
      }
      const pipeline = redis.pipeline();
      for (const message of messages) {
        addLiveMessage(pipeline, key, maxLen, message);
      }
      const replies = (await pipeline.exec()) ?? [];
      const failed = replies.find(([err]) => err);
      if (failed) {
        throw failed[0];
      }
    } catch (err) {
      this.#deps.logger.warn({ err, messages: messages.length }, 'live feed publish failed');
    }
  }

  /** Messages after `afterId` (or from it, `including`), oldest first, at most `count`. */
  async range(
    afterId: string,
    count: number,
    { including = false }: { including?: boolean } = {},
  ): Promise<(LiveDelivery | QuietMark)[]> {
    const raw = (await this.#deps.redis.xrange(
      this.#deps.key,
      including ? afterId : `(${afterId}`,
      '+',
      'COUNT',
      count,
    )) as [string, string[]][];
    return raw.flatMap(([id, fields]) => decodeLiveOrMark(id, fields) ?? []);
  }

  /** The oldest id still in the stream, or undefined when it is empty. */
  async oldestId(): Promise<string | undefined> {
    const [first] = (await this.#deps.redis.xrange(this.#deps.key, '-', '+', 'COUNT', 1)) as [
      string,
      string[],
    ][];
    return first?.[0];
  }

  /**
   * Calls `listener` with every message read from now on, and `onEnd` when the feed stops (the
   * process shuts down); returns the unsubscribe.
   */
  subscribe(listener: (item: LiveItem) => void, onEnd: () => void): () => void {
    this.#listeners.set(listener, onEnd);
    this.#markListening();
    this.#markTimer ??= setInterval(() => {
      if (this.#listeners.size > 0) {
        this.#markListening();
      }
    }, LISTENER_MARK_EVERY_MS);
    this.#markTimer.unref();
    return () => this.#listeners.delete(listener);
  }

  get lastError(): string | undefined {
    return this.#lastError;
  }

  async start(): Promise<void> {
    if (this.#running) {
      return;
    }
    // A blocking XREAD would stall every command sharing its connection.
    this.#reader = blockingConnection(this.#deps.redis);
    this.#reader.on('error', () => undefined);
    await this.#reader.connect();
    const [last] = (await this.#deps.redis.xrevrange(this.#deps.key, '+', '-', 'COUNT', 1)) as [
      string,
      string[],
    ][];
    this.#running = this.#run(last?.[0] ?? '0-0');
  }

  /** Interrupts the blocking read; a second call awaits the first. */
  stop(): Promise<void> {
    this.#stopping ??= (async () => {
      this.#abort.abort();
      clearInterval(this.#markTimer);
      this.#reader?.disconnect();
      await this.#running;
      const ends = [...this.#listeners.values()];
      this.#listeners.clear();
      for (const end of ends) {
        end();
      }
    })();
    return this.#stopping;
  }

  /**
   * The messages after `cursor` (waiting for some), and whether trimming may have removed
   * messages between the cursor and the first of them: the cursor's own entry is gone right
   * after the read (Redis answers one connection's commands in order). Trimming removes the
   * oldest first, so while the cursor is there nothing after it is gone (as a resume's replay
   * reads it, LiveSession); once it is not, the reader has fallen a whole stream behind.
   */
  async #readAfter(cursor: string): Promise<{ gapBefore: boolean; entries: [string, string[]][] }> {
    const { key } = this.#deps;
    const reader = this.#reader;
    if (!reader) {
      return { gapBefore: false, entries: [] };
    }
    const [read, kept] = (await reader
      .pipeline()
      .call('XREAD', 'COUNT', READ_COUNT, 'BLOCK', BLOCK_MS, 'STREAMS', key, cursor)
      .xrange(key, cursor, cursor)
      .exec()) ?? [[null, null]];
    if (read?.[0]) {
      throw read[0];
    }
    const entries = (read?.[1] as StreamReply)?.[0]?.[1] ?? [];
    return {
      // 0-0 names no entry: a reader that began on an empty stream has nothing to lose yet.
      gapBefore:
        entries.length > 0 &&
        cursor !== '0-0' &&
        !kept?.[0] &&
        ((kept?.[1] as unknown[] | undefined) ?? []).length === 0,
      entries,
    };
  }

  async #run(from: string): Promise<void> {
    let cursor = from;
    while (!this.#abort.signal.aborted) {
      try {
        const { gapBefore, entries } = await this.#readAfter(cursor);
        const [first] = entries;
        if (gapBefore && first) {
          // What lay between the cursor and the first entry read may be gone: each session reads
          // on from the stream from what it last queued, which says where its gap is, if any.
          const overtaken: ReaderOvertaken = { id: first[0], overtaken: true };
          for (const listener of this.#listeners.keys()) {
            listener(overtaken);
          }
        }
        for (const [id, fields] of entries) {
          cursor = id;
          // Quiet marks too: one written while a client that joined beside the first after a
          // quiet spell was already live reaches it only here.
          const item = decodeLiveOrMark(id, fields);
          if (item) {
            for (const listener of this.#listeners.keys()) {
              listener(item);
            }
          }
        }
        if (this.#lastError !== undefined && this.#listeners.size > 0) {
          // Back from a failure, which may have outlasted the mark: set again now, not at the
          // next round.
          this.#markListening();
        }
        this.#backoff.reset();
        this.#lastError = undefined;
        this.#failures.ended();
      } catch (err) {
        if (this.#abort.signal.aborted) {
          break;
        }
        const delay = this.#backoff.nextDelayMs();
        this.#lastError = reasonOf(err);
        this.#failures.failed(
          err,
          { retryInMs: delay },
          `reading the live feed failed: ${this.#lastError}`,
        );
        // Read again as soon as the reader is connected again, not up to 5 s later.
        await (this.#reader
          ? pauseUnlessReconnected(delay, [this.#reader], this.#abort.signal)
          : pause(delay, this.#abort.signal));
      }
    }
  }
}

/** The feed of the site `config` names, on the process's shared Redis connection. */
export const siteLiveFeed = (config: Config, redis: Redis, logger: Logger): LiveFeed =>
  new LiveFeed({
    redis,
    key: liveStreamKey(config.namespace),
    listenersKey: liveListenersKey(config.namespace),
    maxLen: config.liveMaxLen ?? DEFAULT_LIVE_MAX_LEN,
    logger,
  });
