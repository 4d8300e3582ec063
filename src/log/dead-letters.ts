import type { Redis } from 'ioredis';
import { AGGREGATE_TYPES, type Envelope, EVENT_TYPES, isEventType } from '../domain/events.ts';
import { isCanonicalUuid, isUuid, partitionOf } from '../domain/ids.ts';
import {
  aggregateTypeOf,
  decodeEntry,
  encodeEntryFields,
  entryRecord,
  isAggregateType,
  type RawEntry,
  UndecodableEntryError,
} from './codec.ts';
import {
  compareEntryIds,
  entryTime,
  isStreamEntryId,
  LAST_ENTRY_ID,
  minEntryId,
} from './entry-id.ts';
import { type Attempt, attemptsOf, type EventLog, script } from './event-log.ts';
import { CONSUMER_GROUP } from './keys.ts';
import { forEachHashPage, pipelineReplies } from './redis.ts';

/** A dead letter put back in its stream: its event and the event's new entry. */
export type RetriedLetter = { eventId: string; entryId: string };

/** The letters a retry put back beside the one it was named by (`retryAggregate`'s answer). */
export const retriedBeside = (
  retried: ReadonlyMap<string, RetriedLetter>,
  namedDeadLetterId: string,
): RetriedLetter[] =>
  [...retried].filter(([deadId]) => deadId !== namedDeadLetterId).map(([, letter]) => letter);

/** What a dead letter says about the event it holds, as the admin API and CLI show it. */
export type DeadLetter = {
  id: string;
  dead_letter_id: string;
  partition: number;
  original_entry_id: string;
  event_id: string;
  aggregate_id: string;
  aggregate_type: string;
  type: string;
  error: string;
  attempts: Attempt[];
  dead_at: string;
  data: unknown;
  written_by: string | null;
  /** The aggregates whose dead letters it followed into the dead letters, not failing itself. */
  follows?: string[];
};

/**
 * A retry refused for now, changing nothing: done now, it would put the aggregate's events back out
 * of order. Asked again once its cause is gone (the projector has caught up, or an operator has
 * dealt with another letter), it goes through; `whyNot` says why, in a line of the `retry --all`
 * table.
 */
export class RetryNotYetError extends Error {
  constructor(
    readonly dead: DeadLetter,
    message: string,
    readonly whyNot: string,
  ) {
    super(message);
    this.name = 'RetryNotYetError';
  }
}

/**
 * Later events of the letter's aggregate are still in the stream, unprocessed: put back after
 * them, the letters would apply after events accepted later. Once processed, those follow the
 * aggregate's block into the dead letters, and a retry takes them too.
 */
/**
 * The letter followed another aggregate into the dead letters (a file its unit's dead start), and
 * that one's creation is there still: retried now, it would only follow it back.
 */
export class FollowsDeadLetterError extends RetryNotYetError {
  constructor(dead: DeadLetter, upstream: string) {
    super(
      dead,
      `${dead.aggregate_type} ${dead.aggregate_id} followed ${upstream} into the dead letters, and the creation of ${upstream} is still held there: retried now, it would only follow it back. Retry or discard the letters of ${upstream} first (outpost dead list)`,
      `it follows ${upstream}, whose creation is still in the dead letters: retry or discard that first`,
    );
    this.name = 'FollowsDeadLetterError';
  }
}

export class LaterEventsInFlightError extends RetryNotYetError {
  constructor(dead: DeadLetter, count: number) {
    super(
      dead,
      `${count} later event(s) of ${dead.aggregate_type} ${dead.aggregate_id} are still waiting to be processed; retried now, this letter would apply after them. Once the projector reaches them they join the dead letters, and a retry then puts them all back in order (outpost pending shows them)`,
      `${count} later event(s) of its aggregate still to be processed: retry once they are dead-lettered too`,
    );
    this.name = 'LaterEventsInFlightError';
  }
}

/**
 * Each read of the aggregate's letters was followed, before the retry could act on it, by another
 * of its events filed among them: the projector is dead-lettering the aggregate's backlog now.
 */
export class LettersStillArrivingError extends RetryNotYetError {
  constructor(dead: DeadLetter, reads: number) {
    super(
      dead,
      `the projector kept dead-lettering later events of ${dead.aggregate_type} ${dead.aggregate_id} during ${reads} reads of its letters; retry once they are all filed (outpost pending shows those still to come)`,
      'later events of its aggregate are being dead-lettered now: retry once they are all filed',
    );
    this.name = 'LettersStillArrivingError';
  }
}

/**
 * A retry refused while a letter naming the same aggregate cannot be decoded: it cannot be put
 * back, and it holds the aggregate's block (its events after it must not apply past it) until an
 * operator discards it.
 */
export class UndecodableLetterOfAggregateError extends RetryNotYetError {
  constructor(dead: DeadLetter, undecodable: { id: string; reason: string }) {
    super(
      dead,
      `dead letter ${undecodable.id} of ${dead.aggregate_type} ${dead.aggregate_id} cannot be decoded by this build (${undecodable.reason}), so it cannot be put back, and it holds the aggregate's later events. Written by a newer build, it is retried under that build; otherwise discard it first (outpost dead discard ${undecodable.id} --reason "<why>"), then retry`,
      `an undecodable letter of its aggregate, ${undecodable.id}: retry under the build that wrote it, or discard it first`,
    );
    this.name = 'UndecodableLetterOfAggregateError';
  }
}

/** The failed entry as the projector saw it; raw fields when it could not even be decoded. */
export type FailedEntry = {
  entryId: string;
  fields: string[];
  eventId: string;
  aggregateId: string;
  aggregateType: string;
  /** The event type, or `unknown` when the entry could not be decoded that far. */
  type: string;
};

type Commands = {
  /** The dead-letter id; null when the blocks it follows are lifted; ['not_owner']. */
  outpostDeadLetter(numKeys: number, ...args: string[]): Promise<string | null | ['not_owner']>;
  outpostDeadRetry(numKeys: number, ...args: string[]): Promise<(string | number | null)[]>;
  outpostDeadDiscard(numKeys: number, ...args: string[]): Promise<string | null>;
  outpostRenameDeadLetter(numKeys: number, ...args: string[]): Promise<number>;
};

const META_FIELDS = ['original_entry_id', 'error', 'attempts', 'follows'];

/**
 * A dead-letter entry's fields by name. What the dead-lettering added comes after the event's own
 * fields and wins over them: an entry written past the API may carry an `attempts` or an
 * `original_entry_id` of its own, which read first would stand for the letter's (and one that is
 * no JSON would fail every page of the list that reaches it).
 */
const letterRecord = (fields: readonly string[]): Record<string, string> => {
  const record = entryRecord(fields);
  for (let i = 0; i + 1 < fields.length; i += 2) {
    const name = fields[i] as string;
    if (META_FIELDS.includes(name)) {
      record[name] = fields[i + 1] as string;
    }
  }
  return record;
};

const createsAggregate = (type: string): boolean => isEventType(type) && EVENT_TYPES[type].creates;

/** The event's own fields of a dead-letter entry, without what the dead-lettering added. */
const eventFieldsOf = (fields: string[]): string[] => {
  const out: string[] = [];
  for (let i = 0; i + 1 < fields.length; i += 2) {
    if (!META_FIELDS.includes(fields[i] as string)) {
      out.push(fields[i] as string, fields[i + 1] as string);
    }
  }
  return out;
};

type RetryLetter = {
  dead_letter_id: string;
  event_id: string;
  type: string;
  fields: string[];
  originalEntryId: string;
  /** The aggregates whose letters it followed into the dead letters. */
  follows: string[];
};
type AggregateLetters = {
  /** In the order the partition's stream took their events (by original entry id). */
  letters: RetryLetter[];
  /** Letters naming the aggregate that cannot be decoded, by their id as listed. */
  undecodable: { id: string; reason: string; dead_letter_id: string }[];
};
type PartitionLetters = {
  /** The newest letter read. */
  newest: string;
  /** The partition's last letter filed (#lastFiled), asked just before the read. */
  lastFiled: string;
  /**
   * The letters naming each aggregate, as read: decoded only when that aggregate is retried, so
   * a single retry decodes its own letters and not the partition's.
   */
  byAggregate: Map<string, RawEntry[]>;
};

/**
 * Reads of partitions' dead letters, shared by the retries of one run (`retry --all`) so that
 * each retry does not read and decode the whole partition again: with thousands of letters that
 * was quadratic (2,000 single-letter aggregates took 18.5 s). A read is used again only while no
 * letter was filed since (one filed since could be the aggregate's), and then only for those of
 * the aggregate's letters still there (retried or discarded since by another operator, they are
 * gone): what a new read would give.
 */
export type LetterReads = Map<number, PartitionLetters>;

/**
 * Dead letters live in a stream per partition, next to the stream they came from, with an index
 * by event_id (the id operators use) and a set of aggregates blocked behind them.
 */
export class DeadLetters {
  readonly #redis: Redis & Commands;

  constructor(readonly eventLog: EventLog) {
    const redis = eventLog.redis;
    redis.defineCommand('outpostDeadLetter', {
      lua: script('dead-letter', 'inflight', 'live', 'holder'),
    });
    redis.defineCommand('outpostDeadRetry', {
      lua: script('dead-retry', 'inflight', 'letters', 'live'),
    });
    redis.defineCommand('outpostDeadDiscard', { lua: script('dead-discard', 'letters') });
    redis.defineCommand('outpostRenameDeadLetter', { lua: script('rename-dead-letter') });
    this.#redis = redis as Redis & Commands;
  }

  /**
   * Files under the name this build gives it each letter an earlier build indexed otherwise, so
   * that `dead show`, `retry` and `discard` reach it by the name `dead list` shows: a letter of an
   * event packed as builds since 2026-12-02 pack it, which an earlier build could not decode and
   * indexed as `undecodable-<entry id>`, is listed by its event id; one whose event id is an
   * upper-case UUID, indexed under it, is listed as `undecodable-<partition>-<entry id>`. Only
   * names that are not an event id in lower case are looked at; runs at every start and finds
   * nothing once they are all renamed. Answers how many it renamed.
   */
  async renameEarlierBuildLetters(): Promise<number> {
    let renamed = 0;
    for (const keys of this.eventLog.allKeys()) {
      await forEachHashPage(this.#redis, keys.deadIndex, async (entries) => {
        const named = entries.filter(([name]) => !isUsableEventId(name));
        if (named.length === 0) {
          return;
        }
        const pipeline = this.#redis.pipeline();
        for (const [, deadId] of named) {
          pipeline.xrange(keys.deadLetters, deadId, deadId);
        }
        const letters = (await pipelineReplies(pipeline)) as RawEntry[][];
        for (const [i, [name, deadId]] of named.entries()) {
          const fields = letters[i]?.[0]?.[1];
          if (fields === undefined) {
            continue;
          }
          // Its record only: a letter whose attempts or data do not decode is still renamed.
          const record = letterRecord(fields);
          const listed = deadLetterIdOf(record.event_id, record.original_entry_id || deadId);
          if (listed !== name) {
            renamed += await this.#redis.outpostRenameDeadLetter(
              2,
              keys.deadIndex,
              keys.deadLetters,
              name,
              listed,
              deadId,
            );
          }
        }
      });
    }
    return renamed;
  }

  /** How many aggregates of the site have their later events follow a dead letter. */
  async blockedAggregates(): Promise<number> {
    const pipeline = this.#redis.pipeline();
    for (const keys of this.eventLog.allKeys()) {
      pipeline.scard(keys.blockedAggregates);
    }
    return (await pipelineReplies(pipeline)).reduce((sum: number, n) => sum + Number(n), 0);
  }

  /** Whether an aggregate's events follow a dead letter of its own instead of applying. */
  async isBlocked(aggregateId: string): Promise<boolean> {
    const keys = this.eventLog.keys(partitionOf(aggregateId, this.eventLog.partitions));
    return (await this.#redis.sismember(keys.blockedAggregates, aggregateId)) === 1;
  }

  /**
   * Files `entry` as a dead letter and blocks its aggregate; its dead-letter id. `follows`: the
   * aggregates whose block it follows, when it did not fail on its own; if none of them is still
   * blocked (an operator lifted the block since they were read), nothing is filed and the answer
   * is null. Given `consumer`, only while that consumer holds the entry (NotHolderError).
   */
  async add(
    partition: number,
    entry: FailedEntry,
    history: Attempt[],
    { follows = [], consumer = '' }: { follows?: readonly string[]; consumer?: string } = {},
  ): Promise<string | null> {
    const keys = this.eventLog.keys(partition);
    const live = this.eventLog.liveScriptArgs(partition);
    const allKeys = [
      keys.stream,
      keys.deadLetters,
      keys.eventIndex(entry.eventId),
      keys.attempts,
      keys.inflight(entry.aggregateType, entry.aggregateId),
      keys.deadIndex,
      keys.blockedAggregates,
      keys.legacyEventIndex,
      keys.legacyInflightIndex(entry.aggregateType),
      keys.inflightBucketsInUse(entry.aggregateType),
      ...live.keys,
      ...(isAggregateType(entry.aggregateType)
        ? []
        : AGGREGATE_TYPES.flatMap((type) => [
            keys.inflight(type, entry.aggregateId),
            keys.inflightBucketsInUse(type),
          ])),
    ];
    const filed = await this.#redis.outpostDeadLetter(
      allKeys.length,
      ...allKeys,
      CONSUMER_GROUP,
      entry.entryId,
      entry.eventId,
      entry.aggregateId,
      entry.aggregateType,
      entry.type,
      ...live.args,
      consumer,
      String(follows.length),
      ...follows,
      ...entry.fields,
      'original_entry_id',
      entry.entryId,
      'error',
      history.at(-1)?.error ?? 'unknown',
      'attempts',
      JSON.stringify(history),
      // What it followed, so a retry can tell it would only follow again.
      ...(follows.length > 0 ? ['follows', follows.join(' ')] : []),
    );
    if (Array.isArray(filed)) {
      throw new NotHolderError(partition, entry.entryId, consumer);
    }
    return filed;
  }

  #view(partition: number, entry: RawEntry): DeadLetter {
    return this.#decoded(partition, entry).letter;
  }

  /** A dead letter as operators see it, and the event it holds, unless that cannot be decoded. */
  #decoded(
    partition: number,
    [deadId, fields]: RawEntry,
  ): { letter: DeadLetter; event: Envelope | undefined } {
    const record = letterRecord(fields);
    let event: Envelope | undefined;
    try {
      event = decodeEntry([deadId, eventFieldsOf(fields)]).event;
    } catch {
      event = undefined;
    }
    // An undecodable entry is shown with its raw fields: all an operator has to judge it by.
    const data = event ? event.data : entryRecord(eventFieldsOf(fields));
    const letter: DeadLetter = {
      id: shownIdOf(record.event_id, record.original_entry_id ?? deadId, partition),
      dead_letter_id: deadId,
      partition,
      original_entry_id: record.original_entry_id ?? '',
      event_id: record.event_id ?? '',
      aggregate_id: record.aggregate_id ?? '',
      aggregate_type: aggregateTypeOf(record) ?? '',
      type: record.type ?? '',
      error: record.error ?? '',
      attempts: attemptsOf(record.attempts),
      dead_at: new Date(entryTime(deadId)).toISOString(),
      data,
      written_by: record.written_by ?? null,
      ...(record.follows ? { follows: record.follows.split(' ') } : {}),
    };
    return { letter, event };
  }

  /** Dead letters in partition order, then entry order; the cursor is `<partition>:<entry id>`. */
  async list(
    limit: number,
    cursor?: string,
  ): Promise<{ items: DeadLetter[]; next_cursor: string | null }> {
    const [startPartition, after] = cursor ? parseCursor(cursor) : [0, undefined];
    const items: DeadLetter[] = [];
    for (const keys of this.eventLog.allKeys().slice(startPartition)) {
      const from = keys.partition === startPartition && after ? `(${after}` : '-';
      const entries = (await this.#redis.xrange(
        keys.deadLetters,
        from,
        '+',
        'COUNT',
        limit - items.length + 1,
      )) as RawEntry[];
      for (const entry of entries) {
        if (items.length === limit) {
          const last = items.at(-1);
          return { items, next_cursor: last ? `${last.partition}:${last.dead_letter_id}` : null };
        }
        items.push(this.#view(keys.partition, entry));
      }
    }
    return { items, next_cursor: null };
  }

  /**
   * The dead letter an operator names, wherever it is: an event id is looked up in its own
   * partition first, an undecodable entry's id in the partition it names, and one in the form
   * earlier builds listed, which names no partition, in every one; two letters under that name
   * (entry ids are per partition) are refused rather than one picked.
   */
  async find(id: string): Promise<DeadLetter | undefined> {
    const partitions = this.eventLog.allKeys();
    if (isUuid(id)) {
      const own = await this.get(id, partitionOf(id, partitions.length));
      if (own) {
        return own;
      }
    }
    const named = UNDECODABLE_IN_PARTITION.exec(id);
    if (named) {
      const partition = Number(named[1]);
      return partition < partitions.length
        ? this.get(undecodableId(named[2] as string), partition)
        : undefined;
    }
    const pipeline = this.#redis.pipeline();
    for (const keys of partitions) {
      pipeline.hget(keys.deadIndex, id);
    }
    const deadIds = await pipelineReplies(pipeline);
    const holding = deadIds.flatMap((deadId, partition) => (deadId === null ? [] : [partition]));
    if (holding.length > 1) {
      throw new AmbiguousDeadLetterError(id, holding);
    }
    const [partition] = holding;
    return partition === undefined
      ? undefined
      : this.#letter(partition, deadIds[partition] as string);
  }

  async get(eventId: string, partition: number): Promise<DeadLetter | undefined> {
    return (await this.getWithEvent(eventId, partition))?.letter;
  }

  /** `get`, with the event the letter holds (its version and acceptance time), if decodable. */
  async getWithEvent(
    eventId: string,
    partition: number,
  ): Promise<{ letter: DeadLetter; event: Envelope | undefined } | undefined> {
    const deadId = await this.#redis.hget(this.eventLog.keys(partition).deadIndex, eventId);
    return deadId ? this.#entry(partition, deadId) : undefined;
  }

  async #letter(partition: number, deadId: string): Promise<DeadLetter | undefined> {
    return (await this.#entry(partition, deadId))?.letter;
  }

  async #entry(partition: number, deadId: string) {
    const key = this.eventLog.keys(partition).deadLetters;
    const [entry] = (await this.#redis.xrange(key, deadId, deadId)) as RawEntry[];
    return entry && this.#decoded(partition, entry);
  }

  /**
   * Appends the event again (same event_id), with every other dead letter of its aggregate, and
   * lifts the aggregate's block; the new entry id of this one.
   */
  async retry(dead: DeadLetter): Promise<string | undefined> {
    return (await this.retryAggregate(dead)).get(dead.dead_letter_id)?.entryId;
  }

  /**
   * Appends every dead letter of `dead`'s aggregate again, in the order the site accepted them,
   * in one step, then lifts the aggregate's block. Retrying only the named one would either
   * leave the block (and it would follow the others straight back) or lift it while older events
   * of the aggregate are still dead, letting newer ones apply first. Answers each letter retried,
   * with its event's new entry id, by dead-letter id. Retries of many aggregates share `reads`.
   */
  async retryAggregate(
    dead: DeadLetter,
    reads: LetterReads = new Map(),
  ): Promise<Map<string, RetriedLetter>> {
    if (dead.id !== dead.event_id) {
      // Named by its entry: without an event id it could never be applied, nor deduplicated.
      throw new UndecodableEntryError(
        dead.original_entry_id,
        dead.event_id === ''
          ? 'it has no event id (a UUID)'
          : `its event id ${dead.event_id} is not a lower-case UUID`,
      );
    }
    return untilLettersSettle(dead, async () => {
      const { letters, undecodable, newest } = await this.#lettersOf(dead, reads);
      if (undecodable[0] !== undefined) {
        throw new UndecodableLetterOfAggregateError(dead, undecodable[0]);
      }
      if (!letters.some((l) => l.dead_letter_id === dead.dead_letter_id)) {
        return new Map<string, RetriedLetter>();
      }
      const keys = this.eventLog.keys(dead.partition);
      const upstream = await this.#stillFollowed(dead, letters, reads);
      if (upstream !== undefined) {
        throw new FollowsDeadLetterError(dead, upstream);
      }
      const live = this.eventLog.liveScriptArgs(dead.partition);
      const allKeys = [
        keys.stream,
        keys.deadLetters,
        keys.deadIndex,
        keys.blockedAggregates,
        keys.inflight(dead.aggregate_type, dead.aggregate_id),
        keys.inflightBucketsInUse(dead.aggregate_type),
        ...live.keys,
        keys.legacyInflightIndex(dead.aggregate_type),
        ...letters.map((l) => keys.eventIndex(l.event_id)),
      ];
      const oldest = minEntryId(letters.map((l) => l.originalEntryId)) ?? dead.original_entry_id;
      const ids = await this.#redis.outpostDeadRetry(
        allKeys.length,
        ...allKeys,
        dead.aggregate_id,
        dead.aggregate_type,
        ...live.args,
        oldest,
        newest,
        String(letters.length),
        ...letters.flatMap((l) => [
          l.dead_letter_id,
          l.event_id,
          l.type,
          String(l.fields.length),
          ...l.fields,
        ]),
      );
      if (ids[0] === LETTERS_CHANGED) {
        return LETTERS_CHANGED;
      }
      if (ids[0] === 'in_flight') {
        throw new LaterEventsInFlightError(dead, Number(ids[1]));
      }
      const retried = new Map<string, RetriedLetter>();
      letters.forEach((letter, i) => {
        const id = ids[i];
        if (typeof id === 'string') {
          retried.set(letter.dead_letter_id, { eventId: letter.event_id, entryId: id });
        }
      });
      return retried;
    });
  }

  /**
   * An aggregate that `letters` followed into the dead letters whose creation is still among them:
   * retried now, they would follow it back, as what derives from an aggregate that is not there
   * does. Once its creation is gone from them (retried and applied, or discarded) it holds them
   * back no more, whatever of it is dead since: an applied unit holds back none of its files. A
   * file lives in its unit's partition, a package in its files' unit's: what they followed is in
   * this partition, among the letters `reads` holds for it (read by #lettersOf just before), each
   * asked again in case it was retried or discarded since.
   */
  async #stillFollowed(
    dead: DeadLetter,
    letters: readonly RetryLetter[],
    reads: LetterReads,
  ): Promise<string | undefined> {
    const byAggregate = reads.get(dead.partition)?.byAggregate;
    const creations: { upstream: string; deadId: string }[] = [];
    for (const upstream of new Set(letters.flatMap((letter) => letter.follows))) {
      for (const [deadId, fields] of byAggregate?.get(upstream) ?? []) {
        const { type } = letterRecord(fields);
        if (upstream !== dead.aggregate_id && type !== undefined && createsAggregate(type)) {
          creations.push({ upstream, deadId });
        }
      }
    }
    if (creations.length === 0) {
      return undefined;
    }
    const pipeline = this.#redis.pipeline();
    for (const { deadId } of creations) {
      pipeline.xrange(this.eventLog.keys(dead.partition).deadLetters, deadId, deadId);
    }
    const found = (await pipelineReplies(pipeline)) as RawEntry[][];
    return creations.find((_, i) => (found[i]?.length ?? 0) > 0)?.upstream;
  }

  /**
   * The decodable dead letters of `dead`'s aggregate, in stream order, with the event fields to
   * append again; the ids of those naming it that cannot be decoded; and the partition's newest
   * letter, after which the retry script looks for letters of the aggregate filed since (left
   * behind, they would stay dead with the block lifted). From `reads` while no letter was filed
   * since it was read, else read now and kept there. Either way only those still there: another
   * operator may have retried or discarded some since they were read (in a run, or while later
   * pages were), and one of them would refuse the retry for nothing (as undecodable, or as the
   * oldest, behind its own new entry).
   */
  async #lettersOf(
    dead: DeadLetter,
    reads: LetterReads,
  ): Promise<AggregateLetters & { newest: string }> {
    const key = this.eventLog.keys(dead.partition).deadLetters;
    const lastFiled = await this.#lastFiled(key);
    let read = reads.get(dead.partition);
    if (read?.lastFiled !== lastFiled) {
      read = await this.#readLetters(key, lastFiled);
      reads.set(dead.partition, read);
    }
    const { letters, undecodable } = decodeLetters(
      dead.partition,
      read.byAggregate.get(dead.aggregate_id),
    );
    const pipeline = this.#redis.pipeline();
    for (const { dead_letter_id } of [...letters, ...undecodable]) {
      pipeline.xrange(key, dead_letter_id, dead_letter_id);
    }
    const found = await pipelineReplies(pipeline);
    const left = new Set(
      [...letters, ...undecodable]
        .filter((_, i) => (found[i] as RawEntry[]).length > 0)
        .map((letter) => letter.dead_letter_id),
    );
    return {
      letters: letters.filter((letter) => left.has(letter.dead_letter_id)),
      undecodable: undecodable.filter((letter) => left.has(letter.dead_letter_id)),
      newest: read.newest,
    };
  }

  /**
   * A partition's letters grouped by the aggregate they name, read in pages: a whole read of
   * thousands held the event loop (and every write of an API process) for tens of milliseconds
   * at a time. Letters filed during the read are at the stream's end, where the last page finds
   * them; one retried or discarded meanwhile is answered as gone by the retry script.
   */
  async #readLetters(key: string, lastFiled: string): Promise<PartitionLetters> {
    const byAggregate = new Map<string, RawEntry[]>();
    let newest = NO_LETTER;
    for (let start = '-'; ; start = `(${newest}`) {
      const page = (await this.#redis.xrange(key, start, '+', 'COUNT', READ_PAGE)) as RawEntry[];
      for (const entry of page) {
        // An entry naming no aggregate blocks a stand-in of its own, which a retry never lifts.
        const aggregateId = entryRecord(entry[1]).aggregate_id;
        if (aggregateId) {
          const letters = byAggregate.get(aggregateId);
          if (letters === undefined) {
            byAggregate.set(aggregateId, [entry]);
          } else {
            letters.push(entry);
          }
        }
      }
      newest = page.at(-1)?.[0] ?? newest;
      if (page.length < READ_PAGE) {
        return { newest, lastFiled, byAggregate };
      }
    }
  }

  /**
   * The id of the last letter filed in a partition, whether retried or discarded since: unlike the
   * newest letter left, it changes only when one is filed.
   */
  async #lastFiled(key: string): Promise<string> {
    try {
      const info = (await this.#redis.xinfo('STREAM', key)) as unknown[];
      return String(info[info.indexOf('last-generated-id') + 1]);
    } catch (err) {
      if (err instanceof Error && /no such key/i.test(err.message)) {
        return NO_LETTER;
      }
      throw err;
    }
  }

  async discard(dead: DeadLetter, reason: string, by: string): Promise<string | undefined> {
    const keys = this.eventLog.keys(dead.partition);
    const audit = [
      'event_id',
      dead.event_id,
      'dead_letter_id',
      dead.dead_letter_id,
      'original_entry_id',
      dead.original_entry_id,
      'aggregate_id',
      dead.aggregate_id,
      'aggregate_type',
      dead.aggregate_type,
      'type',
      dead.type,
      'error',
      dead.error,
      // The event and its history outlive the stream entry retention trims: a discard found
      // wrong later can still be read, and written again.
      'attempts',
      JSON.stringify(dead.attempts),
      'data',
      JSON.stringify(dead.data ?? null),
      'reason',
      reason,
      'by',
      by,
      'discarded_at',
      new Date().toISOString(),
    ];
    // An entry without an aggregate id blocked a stand-in named after it, which nothing else lifts.
    const blocks =
      dead.aggregate_id === '' ? undecodableId(dead.original_entry_id) : dead.aggregate_id;
    const statusKeys =
      dead.aggregate_type === 'executed_obs_unit' && dead.aggregate_id !== ''
        ? [keys.unitState(dead.aggregate_id)]
        : [];
    const id = await this.#redis.outpostDeadDiscard(
      4 + statusKeys.length,
      keys.deadLetters,
      keys.deadIndex,
      keys.discarded,
      keys.blockedAggregates,
      ...statusKeys,
      dead.dead_letter_id,
      indexNameOf(dead),
      blocks,
      dead.aggregate_id === '' ? 'always' : 'last',
      SETS_UNIT_STATUS.has(dead.type) ? 'status' : 'with_block',
      ...audit,
    );
    return id ?? undefined;
  }
}

/** Events that give a unit its start or end status: discarded, the status they set goes too. */
const SETS_UNIT_STATUS = new Set(['ExecutedObsUnitStarted', 'ExecutedObsUnitFinished']);

/** The newest letter of a partition without any. */
const NO_LETTER = '0-0';

/** Letters read per XRANGE call: each page holds the caller's event loop about 4 ms. */
const READ_PAGE = 1_000;

/**
 * An aggregate's letters, the decodable ones with the event fields to append again in the order
 * the stream took their events. Undecodable ones hold its block as the discard script sees it
 * (lib/letters.lua).
 */
const decodeLetters = (partition: number, entries: readonly RawEntry[] = []): AggregateLetters => {
  const decoded: AggregateLetters = { letters: [], undecodable: [] };
  for (const [deadId, raw] of entries) {
    const fields = eventFieldsOf(raw);
    const record = letterRecord(raw);
    let event: Envelope;
    try {
      event = decodeEntry([deadId, fields]).event;
    } catch (err) {
      decoded.undecodable.push({
        id: shownIdOf(record.event_id, record.original_entry_id ?? deadId, partition),
        reason: (err as Error).message,
        dead_letter_id: deadId,
      });
      continue;
    }
    decoded.letters.push({
      dead_letter_id: deadId,
      event_id: event.event_id,
      type: event.type,
      fields,
      originalEntryId: record.original_entry_id ?? deadId,
      follows: record.follows?.split(' ') ?? [],
    });
  }
  // In the order the stream took them, which the write guard checked them in and the projector
  // met them in; not by acceptance time, which the API host's clock stamps before its awaits
  // (an idempotency claim, a status seed), and two hosts' clocks may disagree. A letter keeps
  // its place through a retry: an aggregate's letters are always put back together and in
  // order, never behind a later event of it still in the stream (that retry is refused). Its
  // creation goes first all the same: nothing of an aggregate applies before it, and a replay
  // after a restore gives back a lost start behind the patch that failed for want of it. Put
  // back in stream order, the patch failed again and the start followed it, at every retry.
  const createsFirst = (letter: { type: string }) =>
    isEventType(letter.type) && EVENT_TYPES[letter.type].creates ? 0 : 1;
  decoded.letters.sort(
    (a, b) =>
      createsFirst(a) - createsFirst(b) || compareEntryIds(a.originalEntryId, b.originalEntryId),
  );
  return decoded;
};

/** The retry script's answer when a letter of the aggregate was filed since its caller's read. */
const LETTERS_CHANGED = 'letters_changed';
const LETTER_READS = 5;

/**
 * Runs `attempt` (read an aggregate's letters, then act on them in a script) again while the
 * script finds a letter of the aggregate filed since the read: left behind, it would stay dead
 * with the block lifted.
 */
const untilLettersSettle = async <T>(
  dead: DeadLetter,
  attempt: () => Promise<T | typeof LETTERS_CHANGED>,
) => {
  for (let read = 1; ; read += 1) {
    const outcome = await attempt();
    if (outcome !== LETTERS_CHANGED) {
      return outcome;
    }
    if (read === LETTER_READS) {
      throw new LettersStillArrivingError(dead, LETTER_READS);
    }
  }
};

const CURSOR = /^(\d+):(\d+-\d+)$/;

/**
 * Whether `cursor` is one `list` could have returned. The list reads on after the cursor's entry,
 * and Redis refuses an id past its range, or the last.
 */
export const isDeadLetterCursor = (cursor: string): boolean => {
  const entryId = CURSOR.exec(cursor)?.[2];
  return entryId !== undefined && isStreamEntryId(entryId) && entryId !== LAST_ENTRY_ID;
};

const parseCursor = (cursor: string): [number, string | undefined] => {
  const match = CURSOR.exec(cursor);
  if (!match) {
    throw new Error(`invalid cursor ${cursor}`);
  }
  return [Number(match[1]), match[2]];
};

const UNDECODABLE = 'undecodable-';

/** An entry without a usable event id is dead-lettered, and named to operators, by its entry id. */
const undecodableId = (entryId: string) => `${UNDECODABLE}${entryId}`;

const isUsableEventId = (eventId: string | undefined): eventId is string =>
  eventId !== undefined && isCanonicalUuid(eventId);

/**
 * A letter's name in its partition's dead index: its event id, else its entry's stand-in. An id
 * in upper case (written past the API) is no usable event id: the codec refuses it, and operators
 * name letters in lower case, so a letter under it could never be shown, retried or discarded.
 */
const deadLetterIdOf = (eventId: string | undefined, entryId: string) =>
  isUsableEventId(eventId) ? eventId : undecodableId(entryId);

/**
 * The name operators know a letter by: its event id, or for an entry without one its partition
 * and entry id. Entry ids are per partition, so the entry id alone, which the dead index holds and
 * earlier builds listed, can name a letter in each of two partitions.
 */
const shownIdOf = (eventId: string | undefined, entryId: string, partition: number) =>
  isUsableEventId(eventId) ? eventId : `${UNDECODABLE}${partition}-${entryId}`;

/** `undecodable-<partition>-<entry id>`. */
const UNDECODABLE_IN_PARTITION = /^undecodable-(\d+)-(\d+-\d+)$/;

const indexNameOf = (dead: DeadLetter) =>
  deadLetterIdOf(dead.event_id, dead.original_entry_id || dead.dead_letter_id);

/** A consumer no longer holds the entry it would file: another took it over, or settled it. */
export class NotHolderError extends Error {
  constructor(partition: number, entryId: string, consumer: string) {
    super(
      `partition ${partition}: ${consumer} no longer holds entry ${entryId}; filing no dead letter`,
    );
    this.name = 'NotHolderError';
  }
}

/** An undecodable entry's id in the form earlier builds listed, held by letters of several partitions. */
export class AmbiguousDeadLetterError extends Error {
  constructor(id: string, partitions: readonly number[]) {
    super(
      `${id} names dead letters in partitions ${partitions.join(', ')}: name one as ${partitions
        .map((p) => shownIdOf(undefined, id.slice(UNDECODABLE.length), p))
        .join(' or ')}, as outpost dead list shows them now`,
    );
  }
}

/**
 * The dead letter an operator's text names, as the index spells it (an event id in lower case), or
 * undefined if it could name none: an event id, or an undecodable entry's id.
 */
export const deadLetterIdIn = (text: string): string | undefined => {
  if (isUuid(text)) {
    return text.toLowerCase();
  }
  const entryId = text.startsWith(UNDECODABLE)
    ? (UNDECODABLE_IN_PARTITION.exec(text)?.[2] ?? text.slice(UNDECODABLE.length))
    : undefined;
  return entryId !== undefined && isStreamEntryId(entryId) ? text : undefined;
};

/**
 * Events an operator discarded from the dead letters, by event id and by the entry that held
 * them. Their entries stay in the stream until the retention trims them, acknowledged and never
 * applied: a replay must not bring them back, nor count an undecodable one as failing, and a
 * consumer group created again must not apply them when it delivers them a second time. (Audits
 * of earlier builds name no entry.)
 *
 * Read once whole, then brought up to date by reading only the records filed since. A discard
 * files its record in the same script that takes the letter out of the dead index, so a page
 * whose dead-index look is followed by an update cannot miss one discarded in between (during a
 * long replay) and bring it back.
 */
export const discardedIds = (eventLog: EventLog, partition: number) => {
  const discards = new Map<string, string>();
  let after = '-';
  return async (): Promise<Discards> => {
    const audits = (await eventLog.redis.xrange(
      eventLog.keys(partition).discarded,
      after,
      '+',
    )) as RawEntry[];
    for (const [id, fields] of audits) {
      const { event_id, original_entry_id } = entryRecord(fields);
      for (const known of [event_id, original_entry_id]) {
        if (known) {
          discards.set(known, id);
        }
      }
      after = `(${id}`;
    }
    return discards;
  };
};

/** What discard records name (event ids, and the entries that held them) → the record's own id. */
export type Discards = ReadonlyMap<string, string>;

/**
 * Whether an entry holds what an operator discarded: the entry a record names, or an entry of the
 * event older than the record. A later entry of the same event was put back after the discard (a
 * duplicate entry of it, dead-lettered on its own once the block was lifted, then retried by an
 * operator) and is to apply.
 */
export const isDiscardedEntry = (
  discards: Discards,
  entryId: string,
  eventId: string | undefined,
): boolean => {
  if (discards.has(entryId)) {
    return true;
  }
  const discardedAt = eventId ? discards.get(eventId) : undefined;
  return discardedAt !== undefined && compareEntryIds(entryId, discardedAt) < 0;
};

export const failedEntryOf = (raw: RawEntry): FailedEntry => {
  const record = entryRecord(raw[1]);
  return {
    entryId: raw[0],
    fields: raw[1].length > 0 ? raw[1] : ['raw', '(trimmed)'],
    eventId: deadLetterIdOf(record.event_id, raw[0]),
    aggregateId: record.aggregate_id || undecodableId(raw[0]),
    aggregateType: aggregateTypeOf(record) ?? 'unknown',
    type: record.type ?? 'unknown',
  };
};

export const failedEntryOfEvent = (
  entryId: string,
  event: Parameters<typeof encodeEntryFields>[0],
): FailedEntry => ({
  entryId,
  fields: encodeEntryFields(event),
  eventId: deadLetterIdOf(event.event_id, entryId),
  aggregateId: event.aggregate_id,
  aggregateType: event.aggregate_type,
  type: event.type,
});
