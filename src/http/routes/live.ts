import type { IncomingMessage, Server } from 'node:http';
import type { Duplex } from 'node:stream';
import { setTimeout as delay } from 'node:timers/promises';
import { upgradeWebSocket } from '@hono/node-server';
import type { Context } from 'hono';
import { streamSSE } from 'hono/streaming';
import type { WebSocket } from 'ws';
import type { LiveFeed } from '../../live/live-feed.ts';
import { filterOf, LiveQuery, type LiveQuery as LiveQueryType } from '../../live/live-message.ts';
import { LiveSession, type LiveSink } from '../../live/live-session.ts';
import { isStreamEntryId } from '../../log/entry-id.ts';
import { logUnavailable } from '../accept.ts';
import { authorize, bearerToken, requiredScope } from '../auth.ts';
import { type AppDeps, requestLogger } from '../context.ts';
import { ApiError, errorBody } from '../errors.ts';
import { type App, readQuery } from './shared.ts';

/** Proxies commonly cut connections idle for 30-60 s; a comment or ping every 15 s keeps them. */
export const LIVE_HEARTBEAT_MS = 15_000;
/** A dropped client is given this long to read the reason before its socket is destroyed. */
const DROP_GRACE_MS = 1_000;
const DEFAULT_CLIENT_BUFFER_BYTES = 1024 * 1024;

const feedOf = (deps: AppDeps) => {
  if (!deps.live) {
    throw new ApiError('log_unavailable', 'the live feed is not running in this process');
  }
  return deps.live;
};

const resumePosition = (c: Context, query: LiveQueryType): string | undefined => {
  const since = c.req.header('last-event-id') ?? query.since;
  if (since !== undefined && !isStreamEntryId(since)) {
    throw new ApiError('validation_failed', 'Last-Event-ID is not an id this feed sent', [
      { path: 'Last-Event-ID', message: 'not a live-feed id' },
    ]);
  }
  return since;
};

const announce = (feed: LiveFeed) =>
  feed.announceListener().catch((err: unknown) => {
    // Announcing a listener is a write: a Redis refusing writes is named as such.
    throw logUnavailable(err, 'the live feed cannot be reached right now');
  });

export const registerLiveRoutes = (app: App, deps: AppDeps) => {
  const maxBufferedBytes = deps.config.liveClientBufferBytes ?? DEFAULT_CLIENT_BUFFER_BYTES;
  const heartbeatMs = deps.config.liveHeartbeatMs ?? LIVE_HEARTBEAT_MS;
  const { metrics } = deps;
  /** Whether the request's token still grants the feed, as the scope check at connect saw it. */
  const stillAuthorized = (c: Context) => {
    const scope = requiredScope(c.req.method, c.req.path);
    const token = bearerToken(c.req.header('authorization')) ?? c.req.query('access_token');
    return () => {
      try {
        authorize(deps.tokens?.current, token, scope ?? 'read');
        return true;
      } catch {
        return false;
      }
    };
  };

  app.get('/events/live', async (c) => {
    const query = readQuery(c, LiveQuery);
    const since = resumePosition(c, query);
    const feed = feedOf(deps);
    if (c.req.method === 'HEAD') {
      // Hono answers HEAD with the GET handler and drops the body unread: a stream started
      // here would never learn that nobody reads it, and its session would run for good.
      return c.body(null, 200, {
        'content-type': 'text/event-stream',
        'cache-control': 'no-cache',
      });
    }
    if (c.req.header('upgrade') !== undefined) {
      // A WebSocket handshake sent here reaches this handler through node-server's upgrade
      // path, which reads no stream: answered with one, its session would run for good too.
      throw new ApiError(
        'validation_failed',
        'this URL streams Server-Sent Events: open /events/live/ws as a WebSocket',
      );
    }
    await announce(feed);
    const logger = requestLogger(c);
    const outgoing = (c.env as { outgoing?: { destroy(): void } } | undefined)?.outgoing;
    return streamSSE(c, async (stream) => {
      let closing: Promise<unknown> | undefined;
      const sink: LiveSink = {
        send: async (delivery, json) => {
          await stream.writeSSE({ id: delivery.id, data: json });
        },
        heartbeat: () => {
          void stream.write(': heartbeat\n\n');
        },
        close: (reason) => {
          if (reason.code !== 'shutting_down') {
            logger.warn({ transport: 'sse', reason: reason.code }, 'live client dropped');
          }
          // Queued behind what the socket still holds: a client that reads again sees why.
          closing = stream.writeSSE({ event: 'dropped', data: JSON.stringify(reason) });
          setTimeout(() => {
            outgoing?.destroy();
            void stream.close();
          }, DROP_GRACE_MS).unref();
        },
      };
      const session = new LiveSession({
        feed,
        filter: filterOf(query),
        since,
        maxBufferedBytes,
        heartbeatMs,
        sink,
        authorized: stillAuthorized(c),
        onSent: () => metrics.liveMessagesSent.inc({ transport: 'sse' }),
        onDropped: () => metrics.liveClientsDropped.inc({ transport: 'sse' }),
        onGap: (after, oldest) => {
          void stream.writeSSE({ event: 'gap', data: JSON.stringify({ since: after, oldest }) });
        },
      });
      stream.onAbort(() => session.stop());
      metrics.liveClients.inc({ transport: 'sse' });
      try {
        await stream.write(': connected\n\n');
        await session.run();
        // The stream ends when this returns: the reason goes out first, if the client takes it
        // within the grace (a slow client's socket is destroyed then anyway).
        if (closing) {
          await Promise.race([
            closing.catch(() => undefined),
            delay(DROP_GRACE_MS, undefined, { ref: false }),
          ]);
        }
      } finally {
        metrics.liveClients.dec({ transport: 'sse' });
      }
    });
  });

  app.get(
    '/events/live/ws',
    async (c, next) => {
      if (c.req.header('upgrade')?.toLowerCase() !== 'websocket') {
        return c.json(
          { error: { code: 'upgrade_required', message: 'open this URL as a WebSocket' } },
          426,
        );
      }
      const feed = feedOf(deps);
      readQuery(c, LiveQuery);
      await announce(feed);
      await next();
    },
    upgradeWebSocket(
      (c) => {
        const query = readQuery(c, LiveQuery);
        const logger = requestLogger(c);
        const authorized = stillAuthorized(c);
        return {
          onOpen: (_event, ctx) => {
            // Hono's onClose needs CloseEvent, which Node 20 lacks: use the ws socket itself.
            const socket = ctx.raw as WebSocket;
            let alive = true;
            socket.on('pong', () => {
              alive = true;
            });
            const sink: LiveSink = {
              send: (delivery, json) =>
                new Promise<void>((resolve, reject) => {
                  socket.send(`{"id":${JSON.stringify(delivery.id)},"message":${json}}`, (err) =>
                    err ? reject(err) : resolve(),
                  );
                }),
              heartbeat: () => {
                if (!alive) {
                  socket.terminate();
                  return;
                }
                alive = false;
                socket.ping();
              },
              close: (reason) => {
                if (reason.code === 'shutting_down') {
                  socket.close(1001, reason.message);
                } else {
                  logger.warn({ transport: 'ws', reason: reason.code }, 'live client dropped');
                  // 1008 policy violation for what the client did (too slow, its token revoked);
                  // 1011 for a resume the server failed, which a client should retry. The
                  // protocol limits a reason to 123 bytes.
                  const code = reason.code === 'resume_failed' ? 1011 : 1008;
                  socket.close(code, reason.message.slice(0, 120));
                }
                setTimeout(() => socket.terminate(), DROP_GRACE_MS).unref();
              },
            };
            const session = new LiveSession({
              feed: feedOf(deps),
              filter: filterOf(query),
              since: query.since,
              maxBufferedBytes,
              heartbeatMs,
              sink,
              authorized,
              onSent: () => metrics.liveMessagesSent.inc({ transport: 'ws' }),
              onDropped: () => metrics.liveClientsDropped.inc({ transport: 'ws' }),
              onGap: (after, oldest) => {
                socket.send(JSON.stringify({ gap: { since: after, oldest } }));
              },
            });
            metrics.liveClients.inc({ transport: 'ws' });
            socket.once('close', () => {
              metrics.liveClients.dec({ transport: 'ws' });
              session.stop();
            });
            void session.run().catch((err: unknown) => {
              logger.warn({ err }, 'live session failed');
              socket.terminate();
            });
          },
        };
      },
      { onError: (err) => deps.logger.debug({ err }, 'live WebSocket event handler failed') },
    ),
  );
};

/**
 * The live feed reads nothing a client sends over its WebSocket: a data frame larger than this
 * closes the socket (1009) instead of being buffered whole (ws allows 100 MiB by default).
 */
export const LIVE_WS_MAX_PAYLOAD_BYTES = 4 * 1024;

const UPGRADE_REFUSED_BODY = JSON.stringify(
  errorBody(
    'validation_failed',
    'only /events/live/ws upgrades, to websocket: send this request without an Upgrade header',
  ),
);
const UPGRADE_REFUSED = [
  'HTTP/1.1 400 Bad Request',
  'content-type: application/json',
  `content-length: ${Buffer.byteLength(UPGRADE_REFUSED_BODY)}`,
  'connection: close',
  '',
  UPGRADE_REFUSED_BODY,
].join('\r\n');

/**
 * Answers every upgrade but to websocket with 400. Once a server listens for upgrades, Node hands
 * it every request with an Upgrade header (`curl --http2` sends `Upgrade: h2c`) without its
 * timeouts, and @hono/node-server leaves those it does not take untouched: each held a socket
 * for good, unanswered and unauthenticated. Wrapped rather than added beside it: node-server
 * answers a failed WebSocket handshake only while its listener is the server's one.
 */
export const refuseOtherUpgrades = (server: Server): void => {
  for (const listener of server.listeners('upgrade')) {
    const upgrade = listener as (request: IncomingMessage, socket: Duplex, head: Buffer) => void;
    server.off('upgrade', upgrade);
    server.on('upgrade', (request: IncomingMessage, socket: Duplex, head: Buffer) => {
      if (request.headers.upgrade?.toLowerCase() === 'websocket') {
        upgrade(request, socket, head);
        return;
      }
      socket.on('error', () => undefined);
      // Destroyed once the answer is out: an upgraded socket has no timeouts, and one the client
      // keeps half open would otherwise stay.
      socket.end(UPGRADE_REFUSED, () => socket.destroy());
    });
  }
};
