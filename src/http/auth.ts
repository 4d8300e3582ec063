import type { MiddlewareHandler } from 'hono';
import type { Grant, Scope, TokenSet } from '../auth/api-tokens.ts';
import { ApiError } from './errors.ts';

/** Operational endpoints stay open: load balancers, Prometheus and browsers reach them. */
const OPEN_PATHS = new Set(['/health', '/buffer-stats', '/metrics', '/openapi.json', '/docs']);

/** Endpoints a browser opens (EventSource, WebSocket), which cannot set an Authorization header. */
export const QUERY_TOKEN_PATHS = new Set(['/events/live', '/events/live/ws']);

/** The scope a request needs; undefined for open endpoints and for /admin (checked apart). */
export const requiredScope = (method: string, path: string): Scope | undefined => {
  if (path === '/admin' || path.startsWith('/admin/') || OPEN_PATHS.has(path)) {
    return undefined;
  }
  return method === 'GET' || method === 'HEAD' ? 'read' : 'write';
};

/** The bearer token of `Authorization: Bearer <token>`, or undefined. */
export const bearerToken = (header: string | undefined): string | undefined => {
  const match = header === undefined ? null : /^Bearer\s+(.+)$/i.exec(header.trim());
  return match?.[1];
};

/**
 * Decides a request against the tokens in force: no tokens configured lets everything through;
 * otherwise 401 without a token or with one that is not (or no longer) configured, 403 with a
 * token that lacks the scope. The token itself never reaches an error message or a log line.
 */
export const authorize = (
  tokens: TokenSet | undefined,
  token: string | undefined,
  scope: Scope,
): Grant | undefined => {
  if (tokens === undefined) {
    return undefined;
  }
  if (token === undefined) {
    throw new ApiError('unauthorized', `this endpoint needs Authorization: Bearer <token>`);
  }
  const grant = tokens.lookup(token);
  if (grant === undefined) {
    throw new ApiError('unauthorized', 'the token is not known (revoked or mistyped)');
  }
  if (!grant.scopes.has(scope)) {
    throw new ApiError('forbidden', `the token ${grant.name} lacks the scope ${scope}`);
  }
  return grant;
};

/** Scope check for everything outside /admin; the token's name becomes the events' writer. */
export const requireScope =
  (tokens: () => TokenSet | undefined): MiddlewareHandler =>
  async (c, next) => {
    const scope = requiredScope(c.req.method, c.req.path);
    if (scope !== undefined) {
      const token =
        bearerToken(c.req.header('authorization')) ??
        (QUERY_TOKEN_PATHS.has(c.req.path) ? c.req.query('access_token') : undefined);
      const grant = authorize(tokens(), token, scope);
      if (grant) {
        c.set('writer', grant.name);
      }
    }
    await next();
  };
