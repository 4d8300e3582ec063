import type pg from 'pg';
import { isRedisAway } from '../log/redis.ts';
import { isDatabaseFailure, isDatabaseUnreachable } from '../projector/errors.ts';
import { ReplicaBehindError } from '../read/acknowledged-replay.ts';
import { partsOf } from '../reason.ts';
import type { AppDeps } from './context.ts';
import { ApiError } from './errors.ts';
import { ReplicaAwayError } from './replica-link.ts';

type LogDeps = Pick<AppDeps, 'eventLog'>;

/**
 * Whether an error means the local log is away (`isRedisAway`). The app's error handler answers
 * such errors 503 `log_unavailable`, whichever route met them.
 */
export const logIsAway = (deps: LogDeps, err: unknown) => isRedisAway(deps.eventLog.redis, err);

/**
 * Awaits work and answers `problem` for a failure of the part it names, as `isItsFailure` tells;
 * the log being away and our own bugs go on to the app's handler.
 */
const blaming = async <T>(
  deps: LogDeps,
  work: Promise<T>,
  isItsFailure: (err: unknown) => boolean,
  problem: {
    code: 'replica_unavailable' | 'main_unavailable';
    message: string | ((met: unknown) => string);
    retryAfterSeconds: number;
  },
): Promise<T> => {
  try {
    return await work;
  } catch (err) {
    // Met part-way (a replay that had given events back): told by the error met, and said with
    // what was done before it (here, and by the app's error handler for the others).
    const { met, done } = partsOf(err);
    if (logIsAway(deps, met) || !isItsFailure(met)) {
      throw err;
    }
    const message = typeof problem.message === 'string' ? problem.message : problem.message(met);
    throw new ApiError(problem.code, `${message}${done}`, undefined, {
      cause: met,
      retryAfterSeconds: problem.retryAfterSeconds,
    });
  }
};

/**
 * Work that reads the replica (and, for merged reads, the log). Only a database's failure is the
 * replica's: an operator told `replica_unavailable` checks the replica, so it must be true. While
 * the replica is taken as away (it did not answer in time lately) the work is not started and the
 * answer is that 503 at once, not after another timeout.
 */
export const replicaCall = <T>(
  deps: LogDeps & Pick<AppDeps, 'replicaLink'>,
  read: (replica: pg.Pool) => Promise<T>,
): Promise<T> => blaming(deps, deps.replicaLink.call(read), isReplicaFailure, REPLICA_UNAVAILABLE);

const REPLICA_UNAVAILABLE = {
  code: 'replica_unavailable',
  message: (met: unknown) =>
    met instanceof ReplicaBehindError ? met.message : 'the read replica cannot be reached',
  retryAfterSeconds: 2,
} as const;

const isReplicaFailure = (err: unknown) =>
  err instanceof ReplicaAwayError || err instanceof ReplicaBehindError || isDatabaseFailure(err);

/**
 * What a write must know before it is accepted (that an id it names exists, a unit's status),
 * read from the replica, or from the main database while the replica does not answer (or has not
 * replayed what is acknowledged, ReplicaBehindError): the main database holds all the replica has
 * replayed, and more. A replica outage then stops
 * acknowledgements, not writes; only when neither database answers is the write refused, 503
 * `replica_unavailable`, as the replica is the one this site reads.
 */
export const writeCheck = <T>(
  deps: Pick<AppDeps, 'eventLog' | 'replicaLink' | 'main' | 'config'>,
  read: (database: pg.Pool) => Promise<T>,
): Promise<T> =>
  blaming(
    deps,
    deps.replicaLink.call(read).catch(async (err: unknown) => {
      const replicaAway =
        err instanceof ReplicaAwayError ||
        err instanceof ReplicaBehindError ||
        isDatabaseUnreachable(err);
      if (deps.config.replicaIsMain || logIsAway(deps, err) || !replicaAway) {
        throw err;
      }
      return read(deps.main).catch(() => Promise.reject(err));
    }),
    isReplicaFailure,
    REPLICA_UNAVAILABLE,
  );

/**
 * Work the main database must do now (a replay, an integrity refresh): its outage is a 503 to wait
 * out; any other failure stays an error of ours.
 */
export const mainCall = <T>(deps: LogDeps, what: string, work: Promise<T>): Promise<T> =>
  blaming(deps, work, isDatabaseUnreachable, {
    code: 'main_unavailable',
    message: `the main database cannot ${what} now`,
    retryAfterSeconds: 30,
  });
