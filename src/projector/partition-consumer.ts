import type { Redis } from 'ioredis';
import type pg from 'pg';
import { decodeEntry, type LogEntry, type RawEntry, UndecodableEntryError } from '../log/codec.ts';
import type { EventLog } from '../log/event-log.ts';
import { CONSUMER_GROUP } from '../log/keys.ts';
import type { Logger } from '../observability/logger.ts';
import type { Metrics } from '../observability/metrics.ts';
import { applyBatch } from './apply-batch.ts';
import { Backoff, pause } from './backoff.ts';
import { classifyFailure } from './errors.ts';

export type ConsumerDeps = {
  pool: pg.Pool;
  eventLog: EventLog;
  /** A connection of its own: XREADGROUP BLOCK would stall every other command sharing it. */
  reader: Redis;
  consumer: string;
  batchSize: number;
  maxAttempts: number;
  logger: Logger;
  metrics: Metrics;
  onBatch?: (stats: { applied: number; ms: number }) => void;
  onFailure?: () => void;
};

type StreamReply = [stream: string, entries: [string, string[] | null][]][] | null;

const BLOCK_MS = 1000;

/**
 * Applies one partition's stream in order. On start, and after any failure, it first re-reads its
 * own pending entries (id 0), so an entry read before a crash is applied before anything newer.
 */
export class PartitionConsumer {
  readonly #deps: ConsumerDeps;
  readonly #partition: number;
  readonly #abort = new AbortController();
  readonly #transientBackoff = new Backoff({ baseMs: 100, capMs: 10_000 });
  readonly #retryBackoff = new Backoff({ baseMs: 200, capMs: 30_000 });
  #running: Promise<void> | undefined;
  #stopping: Promise<void> | undefined;
  #rereadOwnPending = true;
  #lastError: string | undefined;

  constructor(deps: ConsumerDeps, partition: number) {
    this.#deps = deps;
    this.#partition = partition;
  }

  get lastError(): string | undefined {
    return this.#lastError;
  }

  start(): void {
    this.#running ??= this.#run();
  }

  /** Finishes the batch in flight, reads nothing new; a second call awaits the first. */
  stop(): Promise<void> {
    this.#stopping ??= (async () => {
      this.#abort.abort();
      // Interrupts a blocking XREADGROUP; the entries it would have read stay in the stream.
      this.#deps.reader.disconnect();
      await this.#running;
    })();
    return this.#stopping;
  }

  async #run(): Promise<void> {
    const { logger } = this.#deps;
    while (!this.#abort.signal.aborted) {
      try {
        const entries = this.#rereadOwnPending
          ? await this.#readOwnPending()
          : await this.#readNew();
        if (this.#abort.signal.aborted) {
          break;
        }
        if (entries.length > 0) {
          await this.#process(entries);
        }
        this.#transientBackoff.reset();
        this.#lastError = undefined;
      } catch (err) {
        if (this.#abort.signal.aborted) {
          break;
        }
        this.#lastError = (err as Error).message;
        this.#deps.onFailure?.();
        const delay = this.#transientBackoff.nextDelayMs();
        logger.warn(
          { err, partition: this.#partition, retryInMs: delay },
          'projection failed, retrying',
        );
        this.#rereadOwnPending = true;
        await pause(delay, this.#abort.signal);
      }
    }
  }

  #cursor = '0';

  async #readOwnPending(): Promise<RawEntry[]> {
    const raw = await this.#read(this.#cursor);
    if (raw.length === 0) {
      this.#rereadOwnPending = false;
      this.#cursor = '0';
      return [];
    }
    this.#cursor = raw.at(-1)?.[0] ?? this.#cursor;
    const lsns = await this.#deps.eventLog.appliedLsnOf(
      raw.map(([id]) => id),
      this.#partition,
    );
    // Entries already applied and waiting for the replica belong to the acker, not to us.
    return raw.filter((_, i) => lsns[i] === null);
  }

  #readNew(): Promise<RawEntry[]> {
    return this.#read('>');
  }

  async #read(from: string): Promise<RawEntry[]> {
    const { reader, eventLog, consumer, batchSize } = this.#deps;
    const stream = eventLog.keys(this.#partition).stream;
    const args: (string | number)[] = ['GROUP', CONSUMER_GROUP, consumer, 'COUNT', batchSize];
    if (from === '>') {
      args.push('BLOCK', BLOCK_MS);
    }
    const reply = (await reader.call(
      'XREADGROUP',
      ...args,
      'STREAMS',
      stream,
      from,
    )) as StreamReply;
    const entries = reply?.[0]?.[1] ?? [];
    // A pending entry whose stream entry was trimmed away comes back with null fields.
    return entries.map(([id, fields]) => [id, fields ?? []] as RawEntry);
  }

  async #process(raw: RawEntry[]): Promise<void> {
    const started = performance.now();
    const decoded: LogEntry[] = [];
    for (const entry of raw) {
      try {
        decoded.push(decodeEntry(entry));
      } catch (err) {
        if (!(err instanceof UndecodableEntryError)) {
          throw err;
        }
        await this.#failEntry({ entryId: entry[0], event: undefined }, err);
      }
    }
    if (decoded.length === 0) {
      return;
    }
    const { applied, duplicates, failed, commitLsn } = await this.#applyIsolating(decoded);
    await this.#deps.eventLog.recordApplied(
      this.#partition,
      [...applied, ...duplicates].map(({ entryId, event }) => ({
        lsn: commitLsn,
        entryId,
        eventId: event.event_id,
        aggregateId: event.aggregate_id,
        aggregateType: event.aggregate_type,
      })),
    );
    for (const { entry, error } of failed) {
      await this.#failEntry(entry, error);
    }
    const ms = performance.now() - started;
    this.#deps.metrics.eventsApplied.inc(applied.length);
    this.#deps.metrics.batchDuration.observe(ms / 1000);
    this.#deps.onBatch?.({ applied: applied.length, ms });
    this.#deps.logger.debug(
      {
        partition: this.#partition,
        applied: applied.length,
        duplicates: duplicates.length,
        commitLsn,
        ms,
      },
      'batch applied',
    );
  }

  /**
   * A batch that fails on data in PostgreSQL (a constraint, a value it cannot store) is applied
   * again one event at a time, so one poison event cannot hold back the events around it.
   */
  async #applyIsolating(entries: LogEntry[]) {
    try {
      return await applyBatch(this.#deps.pool, entries, this.#partition);
    } catch (err) {
      if (classifyFailure(err) === 'transient' || entries.length === 1) {
        if (entries.length === 1 && classifyFailure(err) === 'data') {
          const only = entries[0] as LogEntry;
          return {
            applied: [],
            duplicates: [],
            failed: [{ entry: only, error: err as Error }],
            commitLsn: '0/0',
          };
        }
        throw err;
      }
      const combined = {
        applied: [] as LogEntry[],
        duplicates: [] as LogEntry[],
        failed: [] as { entry: LogEntry; error: Error }[],
        commitLsn: '0/0',
      };
      for (const entry of entries) {
        const one = await this.#applyIsolating([entry]);
        combined.applied.push(...one.applied);
        combined.duplicates.push(...one.duplicates);
        combined.failed.push(...one.failed);
        if (one.applied.length + one.duplicates.length > 0) {
          combined.commitLsn = one.commitLsn;
        }
      }
      return combined;
    }
  }

  async #failEntry(entry: { entryId: string; event: LogEntry['event'] | undefined }, error: Error) {
    const { eventLog, maxAttempts, logger } = this.#deps;
    this.#deps.onFailure?.();
    const history = await eventLog.recordAttempt(this.#partition, entry.entryId, error.message);
    if (history.length >= maxAttempts && entry.event) {
      const deadId = await eventLog.deadLetter(entry as LogEntry, this.#partition, history);
      logger.warn(
        {
          partition: this.#partition,
          entryId: entry.entryId,
          eventId: entry.event.event_id,
          deadId,
          err: error,
        },
        'event moved to dead letters',
      );
      return;
    }
    logger.warn(
      { partition: this.#partition, entryId: entry.entryId, attempt: history.length, err: error },
      'event failed to apply, will retry',
    );
    const delay = this.#retryBackoff.nextDelayMs();
    setTimeout(() => {
      this.#rereadOwnPending = true;
    }, delay).unref();
  }
}
