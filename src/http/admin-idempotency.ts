import { createHash } from 'node:crypto';
import type { Context } from 'hono';
import stringify from 'safe-stable-stringify';
import { adminIdempotencyKey } from '../log/keys.ts';
import { idempotencyScope, logUnavailable, redisRefusal } from './accept.ts';
import { type AppDeps, requestLogger } from './context.ts';
import { ApiError } from './errors.ts';

const sha256 = (text: string) => createHash('sha256').update(text).digest('hex');

const REMEMBER_SECONDS = 24 * 3600;
/**
 * How long a running action holds its key. A replay waits up to ten minutes for its events; a
 * process that dies mid-action frees the key after this, so the operator can try again.
 */
const CLAIM_SECONDS = 15 * 60;

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
  const claimed = await redis
    .set(key, `running\n${hash}`, 'EX', CLAIM_SECONDS, 'NX')
    .catch(async (err: unknown) => {
      // A Redis refusing writes still reads: a request it has answered is answered again below.
      const answered = redisRefusal(err) && (await redis.get(key).catch(() => null));
      if (answered && parse(answered).state === 'done') {
        return null;
      }
      throw unreachable(err);
    });
  if (claimed === null) {
    const value = await redis.get(key).catch((err: unknown) => {
      throw unreachable(err);
    });
    const stored = parse(value ?? 'running\n');
    if (value !== null && stored.hash !== hash) {
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
  }
  let response: Response;
  try {
    response = await action();
  } catch (err) {
    await redis.del(key).catch(() => undefined);
    throw err;
  }
  if (response.status >= 200 && response.status < 300) {
    const body = await response.clone().text();
    await redis
      .set(key, `done\n${hash}\n${response.status}\n${body}`, 'EX', REMEMBER_SECONDS)
      .catch((err: unknown) => requestLogger(c).warn({ err }, 'idempotency record not stored'));
  } else {
    await redis.del(key).catch(() => undefined);
  }
  return response;
};
