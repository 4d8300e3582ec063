import { createHash, randomUUID } from 'node:crypto';
import type { Context } from 'hono';
import stringify from 'safe-stable-stringify';
import { adminIdempotencyKey } from '../log/keys.ts';
import { idempotencyScope, logUnavailable, redisRefusal } from './accept.ts';
import { type AppDeps, requestLogger } from './context.ts';
import { ApiError } from './errors.ts';

const sha256 = (text: string) => createHash('sha256').update(text).digest('hex');

const REMEMBER_SECONDS = 24 * 3600;
/**
 * How long a claim outlives its process: a process that dies mid-action frees the key after
 * this, so the operator can try again. A running action renews its claim every second, however
 * long it runs (a replay waits up to ten minutes for its events, a refresh for a long lock).
 */
const CLAIM_SECONDS = 60;
const RENEW_EVERY_MS = 1000;

type Stored = { state: 'running' | 'done'; hash: string; status?: number; body?: string };

const parse = (value: string): Stored => {
  const [state, hash = '', status, ...body] = value.split('\n');
  return state === 'done'
    ? { state, hash, status: Number(status), body: body.join('\n') }
    : { state: 'running', hash };
};

const unreachable = (err: unknown) =>
  logUnavailable(err, 'the local log cannot be reached right now');

/**
 * Runs an admin action once per `Idempotency-Key` (DESIGN §6: every POST, PATCH and DELETE):
 * the same key with the same request within 24 h answers the first success again and does
 * nothing; with another request it is 409 `idempotency_key_reused`; while the first is still
 * running it is 409 `conflict`. Admin actions are not appends, so the key is claimed before the
 * action and the outcome stored after it; a failed action releases the key.
 */
export const onceForKey = async (
  c: Context,
  deps: AppDeps,
  request: unknown,
  action: () => Promise<Response>,
): Promise<Response> => {
  const scope = idempotencyScope(c);
  if (scope === undefined) {
    return action();
  }
  const redis = deps.eventLog.redis;
  const key = adminIdempotencyKey(deps.config.namespace, sha256(scope));
  const hash = sha256(stringify(request) ?? 'null');
  // The holder's own value: the request's hash alone would let another process's attempt with
  // the same body pass for this one when it renews, stores or frees the key.
  const running = `running\n${hash}\n${randomUUID()}`;
  let earlier: string | null;
  try {
    // The claim and what held the key before it, in one step: read apart, a first run that
    // failed and freed the key in between was taken for one still running.
    earlier = (await redis.call('SET', key, running, 'NX', 'GET', 'EX', CLAIM_SECONDS)) as
      | string
      | null;
  } catch (err) {
    // A Redis refusing writes still reads: a request it has answered is answered again.
    const answered = redisRefusal(err) && (await redis.get(key).catch(() => null));
    if (answered && parse(answered).state === 'done') {
      return answerEarlierRun(c, answered, hash);
    }
    throw unreachable(err);
  }
  // Its own value: ioredis sent the claim again after its first reply was lost with the
  // connection, and the first had taken the key.
  if (earlier !== null && earlier !== running) {
    return answerEarlierRun(c, earlier, hash);
  }
  const claim = holdClaim(c, deps, key, running);
  let done: string | undefined;
  try {
    const response = await action();
    if (response.status >= 200 && response.status < 300) {
      done = `done\n${hash}\n${response.status}\n${await response.clone().text()}`;
    }
    return response;
  } finally {
    // Whatever happened, the renewals stop: the outcome is stored, or the key freed.
    await (done === undefined ? claim.release() : claim.store(done));
  }
};

/** The answer to a request whose key another run holds: its outcome, or why not yet. */
const answerEarlierRun = (c: Context, value: string, hash: string): Response => {
  const stored = parse(value);
  if (stored.hash !== hash) {
    throw new ApiError(
      'idempotency_key_reused',
      'this Idempotency-Key was used with a different request',
    );
  }
  if (stored.state === 'running') {
    throw new ApiError('conflict', 'a request with this Idempotency-Key is still running', [], {
      retryAfterSeconds: 5,
    });
  }
  c.header('Idempotent-Replayed', 'true');
  return c.body(stored.body ?? '', (stored.status ?? 200) as 200, {
    'content-type': 'application/json',
  });
};

/**
 * Keeps a claimed key for as long as its action runs, then stores the outcome or frees the key,
 * each only while the key is still this claim's: a claim that lapsed (Redis unreachable for a
 * minute) and was taken by a retry is left to that retry, never overwritten or deleted.
 */
const holdClaim = (c: Context, deps: AppDeps, key: string, running: string) => {
  const eventLog = deps.eventLog;
  let renewal: Promise<void> | undefined;
  let lost = false;
  const lose = () => {
    if (!lost) {
      lost = true;
      requestLogger(c).warn(
        { key },
        'another request took this Idempotency-Key while the action ran; its outcome is not stored',
      );
    }
  };
  let failing = false;
  const timer = setInterval(() => {
    // One renewal at a time: behind a Redis that answers slowly, ticks must not queue up.
    renewal ??= eventLog
      .holdKey(key, running, running, CLAIM_SECONDS)
      .then(
        (held) => {
          failing = false;
          if (!held) {
            lose();
          }
        },
        (err: unknown) => {
          // The next tick tries again; only a minute of failures lets the claim lapse.
          if (!failing) {
            failing = true;
            requestLogger(c).warn(
              { err, key },
              'cannot renew the claim on this Idempotency-Key; it lapses a minute after the last renewal',
            );
          }
        },
      )
      .finally(() => {
        renewal = undefined;
      });
  }, RENEW_EVERY_MS);
  timer.unref();
  // A renewal still out after the outcome would take the key back for a minute.
  const stopRenewing = async () => {
    clearInterval(timer);
    await renewal;
  };
  return {
    async store(done: string) {
      await stopRenewing();
      const stored = await eventLog.holdKey(key, running, done, REMEMBER_SECONDS).catch((err) => {
        requestLogger(c).warn({ err }, 'idempotency record not stored');
        return true;
      });
      if (!stored) {
        lose();
      }
    },
    async release() {
      await stopRenewing();
      await eventLog.releaseKey(key, running).catch(() => undefined);
    },
  };
};
