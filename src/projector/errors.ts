import { reasonOf } from '../reason.ts';
/**
 * Failures are classified, never caught wholesale: a transient failure (database unreachable,
 * serialization conflict, timeout) leaves the entries pending and never counts as an attempt; a
 * data failure counts, and after enough attempts moves the event aside.
 */
export type FailureClass = 'transient' | 'data';

// Node's own codes (EPIPE, EPERM) are five capitals too; no SQLSTATE class begins with E.
const SQLSTATE = /^[0-9A-DF-Z][0-9A-Z]{4}$/;
// The classes in which PostgreSQL says that what was sent cannot be stored: a cardinality, data or
// integrity violation, a program limit (an index row too large) or a trigger's RAISE. Every other
// answer is about the database, not the event — a revoked privilege, a changed password, a schema
// restored from before a migration, a lock or a timeout — and must not count against it: counted,
// it would move the whole backlog into the dead letters within minutes.
const DATA_SQLSTATE_CLASSES = ['21', '22', '23', '54', 'P0'];
const TRANSIENT_NODE_CODES = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ETIMEDOUT',
  'EPIPE',
  // A local firewall dropping what the process sends.
  'EPERM',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ENOTFOUND',
  'EAI_AGAIN',
]);
const DATA_ERROR_NAMES = new Set(['FoldError', 'UndecodableEntryError']);
const TRANSIENT_MESSAGES = [
  /timeout/i,
  /Connection terminated/i,
  /connection.*(closed|ended|lost)/i,
  /Client has encountered a connection error/i,
  /Connection is closed/i,
  /Cannot use a pool after calling end/i,
  /the database system is (starting up|shutting down|in recovery)/i,
];

/**
 * A batch first reads which of its events are applied and writes only the others, one row of each
 * (apply-batch.ts). Its write then meets an event's own id already there only when a write of the
 * same event commits late, after that read: its reply lost with the connection while the
 * statement went on. Applied again, the batch finds the event and records it; counted as an
 * attempt, it could move an applied event into the dead letters.
 */
const EVENT_ALREADY_WRITTEN = { code: '23505', constraint: 'events_pkey' };

export const classifyFailure = (err: unknown): FailureClass => {
  const { code, message, constraint } = (err ?? {}) as {
    code?: unknown;
    message?: unknown;
    constraint?: unknown;
  };
  if (code === EVENT_ALREADY_WRITTEN.code && constraint === EVENT_ALREADY_WRITTEN.constraint) {
    return 'transient';
  }
  if (typeof code === 'string') {
    if (TRANSIENT_NODE_CODES.has(code)) {
      return 'transient';
    }
    if (SQLSTATE.test(code)) {
      return DATA_SQLSTATE_CLASSES.includes(code.slice(0, 2)) ? 'data' : 'transient';
    }
  }
  if (typeof message === 'string' && TRANSIENT_MESSAGES.some((pattern) => pattern.test(message))) {
    return 'transient';
  }
  return err instanceof Error && DATA_ERROR_NAMES.has(err.name) ? 'data' : 'transient';
};

const UNREACHABLE_SQLSTATE_CLASSES = ['08', '53', '57'];
// Class 57 but answered: a statement timeout or a cancel, which a retry meets again.
const QUERY_CANCELED = '57014';

/**
 * Whether a failure says the database cannot be reached or cannot serve right now, as opposed to a
 * fault in the work sent to it: what the API answers 503 for instead of 500.
 */
export const isDatabaseUnreachable = (err: unknown): boolean => {
  const { code, message } = (err ?? {}) as { code?: unknown; message?: unknown };
  if (typeof code === 'string') {
    if (TRANSIENT_NODE_CODES.has(code) || code === '3D000') {
      return true;
    }
    if (SQLSTATE.test(code)) {
      return code !== QUERY_CANCELED && UNREACHABLE_SQLSTATE_CLASSES.includes(code.slice(0, 2));
    }
  }
  return typeof message === 'string' && TRANSIENT_MESSAGES.some((pattern) => pattern.test(message));
};

/**
 * Whether the database cancelled a statement for running past statement_timeout: a batch that
 * does may only be too large for the link, so it is tried in halves. (The client's own query
 * timeout, set 2 s later, means a dead link instead, which halves would only wait out again.)
 */
export const isStatementTimeout = (err: unknown): boolean =>
  (err as { code?: unknown } | undefined)?.code === QUERY_CANCELED;

/** pg-pool's answer when every connection of the pool stayed in use for its connect timeout. */
const POOL_WAIT_TIMEOUT = 'timeout exceeded when trying to connect';

/**
 * Whether a database did not answer in time: a connection not made within its connect timeout
 * (pg: "timeout expired", pg-pool: "... due to connection timeout"), a query unanswered past the
 * client's query timeout, or the system's own connect timeout. Not a statement timeout, which the
 * database answered, nor a pool whose connections were all in use (isPoolWaitTimeout): a busy
 * pool in front of a healthy database says the same.
 */
export const isLinkTimeout = (err: unknown): boolean => {
  const { code, message } = (err ?? {}) as { code?: unknown; message?: unknown };
  if (code === 'ETIMEDOUT') {
    return true;
  }
  return (
    code === undefined &&
    typeof message === 'string' &&
    message !== POOL_WAIT_TIMEOUT &&
    /timeout/i.test(message)
  );
};

/** Whether a pool had no connection free for its whole connect timeout. */
export const isPoolWaitTimeout = (err: unknown): boolean =>
  (err as { message?: unknown } | undefined)?.message === POOL_WAIT_TIMEOUT;

/** Whether the database itself answered with this error (it carries a SQLSTATE). */
export const isDatabaseAnswer = (err: unknown): boolean => {
  const { code } = (err ?? {}) as { code?: unknown };
  return typeof code === 'string' && SQLSTATE.test(code);
};

/** The database's refusal of the request itself: a value it rejects (22), a privilege or name (42). */
export const isRequestRefused = (err: unknown): boolean =>
  isDatabaseAnswer(err) &&
  ['22', '42'].includes(String((err as { code: string }).code).slice(0, 2));

/** A database's failure in its own words, with its SQLSTATE when the server answered. */
export const databaseReason = (err: unknown): string =>
  isDatabaseAnswer(err)
    ? `${reasonOf(err)} (SQLSTATE ${String((err as { code: string }).code)})`
    : reasonOf(err);

/** Whether a failure came from a database: an error it answered with, or one reaching it. */
export const isDatabaseFailure = (err: unknown): boolean =>
  isDatabaseAnswer(err) || isDatabaseUnreachable(err);
