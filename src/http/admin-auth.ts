import { createHash, timingSafeEqual } from 'node:crypto';
import type { MiddlewareHandler } from 'hono';
import { ApiError } from './errors.ts';

const digest = (text: string) => createHash('sha256').update(text).digest();

/**
 * Bearer-token check for everything under /admin, before anything else runs. Digests of equal
 * length are compared in constant time, so the comparison leaks neither content nor length.
 */
export const requireAdmin = (token: string | undefined): MiddlewareHandler => {
  const expected = token === undefined ? undefined : digest(token);
  return async (_c, next) => {
    if (expected === undefined) {
      throw new ApiError(
        'admin_disabled',
        'admin endpoints are disabled: set OUTPOST_ADMIN_TOKEN to enable them',
      );
    }
    const header = _c.req.header('authorization');
    const match = header === undefined ? null : /^Bearer\s+(.+)$/i.exec(header.trim());
    if (!match?.[1]) {
      throw new ApiError(
        'unauthorized',
        'admin endpoints need Authorization: Bearer <OUTPOST_ADMIN_TOKEN>',
      );
    }
    if (!timingSafeEqual(digest(match[1]), expected)) {
      throw new ApiError('forbidden', 'the admin token is wrong');
    }
    await next();
  };
};
