import { createHash, timingSafeEqual } from 'node:crypto';
import type { MiddlewareHandler } from 'hono';
import type { TokenSet } from '../auth/api-tokens.ts';
import { bearerToken } from './auth.ts';
import { ApiError } from './errors.ts';

const digest = (text: string) => createHash('sha256').update(text).digest();

/**
 * Bearer-token check for everything under /admin, before anything else runs: the admin token, or
 * an API token with the scope `admin`. Digests of equal length are compared in constant time, so
 * the comparison leaks neither content nor length.
 */
export const requireAdmin = (
  token: string | undefined,
  tokens: () => TokenSet | undefined = () => undefined,
): MiddlewareHandler => {
  const expected = token === undefined ? undefined : digest(token);
  return async (c, next) => {
    const apiTokens = tokens();
    if (expected === undefined && !apiTokens?.hasScope('admin')) {
      throw new ApiError(
        'admin_disabled',
        'admin endpoints are disabled: set OUTPOST_ADMIN_TOKEN to enable them',
      );
    }
    const presented = bearerToken(c.req.header('authorization'));
    if (presented === undefined) {
      throw new ApiError(
        'unauthorized',
        'admin endpoints need Authorization: Bearer <OUTPOST_ADMIN_TOKEN>',
      );
    }
    const isAdminToken = expected !== undefined && timingSafeEqual(digest(presented), expected);
    if (!isAdminToken && !apiTokens?.lookup(presented)?.scopes.has('admin')) {
      throw new ApiError('forbidden', 'the admin token is wrong');
    }
    await next();
  };
};
