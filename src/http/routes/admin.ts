import type { Context } from 'hono';
import { z } from 'zod';
import {
  integrityReport,
  REFRESH_VISIBLE_WAIT_MS,
  refreshIntegrity,
} from '../../db/queries/integrity.ts';
import { replicaReached } from '../../db/queries/replica.ts';
import { noAnomalies } from '../../integrity/problems.ts';
import { UndecodableEntryError } from '../../log/codec.ts';
import {
  AmbiguousDeadLetterError,
  deadLetterIdIn,
  isDeadLetterCursor,
  RetryNotYetError,
  retriedBeside,
} from '../../log/dead-letters.ts';
import { inspectPending } from '../../ops/pending.ts';
import {
  futureStartWarning,
  ReplayRangeError,
  replay,
  replayBound,
  replayRange,
} from '../../ops/replay.ts';
import { databaseReason, isDatabaseAnswer } from '../../projector/errors.ts';
import { refuseUnlessLogKeepsWrites, refuseWhenCountMoved } from '../accept.ts';
import { requireAdmin } from '../admin-auth.ts';
import { onceForKey } from '../admin-idempotency.ts';
import { hasBody, issueDetails, readJson, readUnusedBody } from '../body.ts';
import { type AppDeps, requestLogger } from '../context.ts';
import { ApiError, notFound } from '../errors.ts';
import { mainCall, replicaCall } from '../outages.ts';
import { pageLimit, queryWholeNumber } from '../schemas.ts';
import { type App, readQuery } from './shared.ts';

// Strict: a misspelt filter (`?partiton=3`) ignored would answer with the whole log as if filtered.
const PendingQuery = z.strictObject({
  partition: queryWholeNumber.optional(),
  min_idle_ms: queryWholeNumber.optional(),
  consumer: z.string().min(1).max(200).optional(),
  limit: pageLimit,
});

const DeadListQuery = z.strictObject({
  limit: pageLimit,
  cursor: z.string().refine(isDeadLetterCursor, 'not a cursor this API returned').optional(),
});

const ReplayBody = z.strictObject({
  from: z.string().min(1).max(64),
  to: z.string().min(1).max(64).optional(),
  partition: z.number().int().min(0).optional(),
  dry_run: z.boolean().default(false),
});

const DiscardBody = z.strictObject({ reason: z.string().trim().min(1).max(2000) });

/** `?reason=`, held to what a body's reason must be; undefined when not given. */
const discardReasonOfQuery = (given: string | undefined): string | undefined => {
  if (!given?.trim()) {
    return undefined;
  }
  const parsed = DiscardBody.safeParse({ reason: given });
  if (!parsed.success) {
    throw new ApiError(
      'validation_failed',
      'query parameters are invalid',
      issueDetails(parsed.error),
    );
  }
  return parsed.data.reason;
};

export const registerAdminRoutes = (app: App, deps: AppDeps) => {
  const tokens = () => deps.tokens?.current;
  app.use('/admin/*', requireAdmin(deps.config.adminToken, tokens));
  app.use('/admin', requireAdmin(deps.config.adminToken, tokens));

  registerIntegrityRoutes(app, deps);

  app.post('/admin/replay', async (c) => {
    const { value, raw } = await readJson(c, ReplayBody, deps.config.maxBodyBytes);
    if (value.partition !== undefined && value.partition >= deps.config.partitions) {
      throw new ApiError('validation_failed', `partition must be below ${deps.config.partitions}`, [
        { path: 'partition', message: 'no such partition' },
      ]);
    }
    for (const [path, bound] of [
      ['from', value.from],
      ['to', value.to],
    ] as const) {
      if (bound !== undefined) {
        try {
          replayBound(bound);
        } catch (err) {
          throw new ApiError('validation_failed', (err as Error).message, [
            { path, message: 'not an entry id or ISO-8601 time' },
          ]);
        }
      }
    }
    try {
      replayRange(value.from, value.to);
    } catch (err) {
      if (!(err instanceof ReplayRangeError)) {
        throw err;
      }
      throw new ApiError('validation_failed', err.message, [
        { path: 'to', message: 'before from' },
      ]);
    }
    // The JSON sent, as DESIGN compares it: `{from}` and `{from, dry_run: false}` are two bodies.
    // The log's room is looked at under the key: one already answered is answered again.
    return onceForKey(c, deps, raw, async () => {
      // A dry run too: it would report on partitions the site's processes no longer write.
      refuseWhenCountMoved(deps);
      if (!value.dry_run) {
        refuseUnlessLogKeepsWrites(deps);
      }
      const report = await mainCall(
        deps,
        'tell which events it lacks',
        replay(
          { eventLog: deps.eventLog, main: deps.main },
          { from: value.from, to: value.to, partition: value.partition, dryRun: value.dry_run },
        ),
      );
      requestLogger(c).info({ report }, 'replay finished');
      const warning = futureStartWarning(value.from);
      return c.json(warning === undefined ? report : { ...report, warning });
    });
  });

  app.get('/admin/pending', async (c) => {
    const query = readQuery(c, PendingQuery);
    refuseWhenCountMoved(deps);
    if (query.partition !== undefined && query.partition >= deps.config.partitions) {
      throw new ApiError('validation_failed', `partition must be below ${deps.config.partitions}`, [
        { path: 'partition', message: 'no such partition' },
      ]);
    }
    const report = await inspectPending(
      {
        eventLog: deps.eventLog,
        main: deps.main,
        replica: deps.replica,
        replicaIsMain: deps.config.replicaIsMain,
      },
      {
        partition: query.partition,
        minIdleMs: query.min_idle_ms,
        consumer: query.consumer,
        limit: query.limit,
      },
    );
    return c.json(report);
  });

  app.get('/admin/dead-letters', async (c) => {
    const query = readQuery(c, DeadListQuery);
    refuseWhenCountMoved(deps);
    return c.json(await deps.deadLetters.list(query.limit, query.cursor));
  });

  const deadLetterOf = async (id: string) => {
    refuseWhenCountMoved(deps);
    const dead = await deps.deadLetters.find(id).catch((err: unknown) => {
      throw err instanceof AmbiguousDeadLetterError ? new ApiError('conflict', err.message) : err;
    });
    if (!dead) {
      throw notFound('dead letter');
    }
    return dead;
  };

  app.get('/admin/dead-letters/:id', async (c) => c.json(await deadLetterOf(deadLetterParam(c))));

  app.post('/admin/dead-letters/:id/retry', async (c) => {
    const id = deadLetterParam(c);
    const sent = await readUnusedBody(c, deps.config.maxBodyBytes);
    return onceForKey(c, deps, sent, async () => {
      refuseUnlessLogKeepsWrites(deps);
      // deadLetterOf refuses it while the site's partition count is not this process's.
      const dead = await deadLetterOf(id);
      const retried = await deps.deadLetters.retryAggregate(dead).catch((err: unknown) => {
        if (err instanceof UndecodableEntryError) {
          throw new ApiError(
            'conflict',
            `dead letter ${dead.id} cannot be retried: ${err.message}; discard it with a reason`,
          );
        }
        if (err instanceof RetryNotYetError) {
          throw new ApiError(
            'conflict',
            `dead letter ${dead.id} cannot be retried yet: ${err.message}`,
          );
        }
        throw err;
      });
      // The aggregate's other letters went back with it: said, or they would leave the dead
      // letters with nothing said of where they went.
      const alsoRetried = retriedBeside(retried, dead.dead_letter_id).map((other) => ({
        event_id: other.eventId,
        entry_id: other.entryId,
      }));
      const entryId = retried.get(dead.dead_letter_id)?.entryId;
      if (!entryId) {
        // Discarded or retried by another request meanwhile; its aggregate's other letters may
        // still have gone back with the block lifted.
        throw new ApiError(
          'not_found',
          alsoRetried.length === 0
            ? 'dead letter not found'
            : `dead letter not found (gone meanwhile); the other ${alsoRetried.length} of its aggregate went back to the log`,
          alsoRetried.length === 0
            ? undefined
            : alsoRetried.map((other) => ({
                path: 'also_retried',
                message: `event ${other.event_id} as entry ${other.entry_id}`,
              })),
        );
      }
      requestLogger(c).info(
        { eventId: dead.event_id, entryId, alsoRetried: alsoRetried.length },
        'dead letter retried',
      );
      return c.json({
        id: dead.id,
        event_id: dead.event_id,
        partition: dead.partition,
        entry_id: entryId,
        retried: true,
        also_retried: alsoRetried,
      });
    });
  });

  app.delete('/admin/dead-letters/:id', async (c) => {
    const id = deadLetterParam(c);
    const fromQuery = discardReasonOfQuery(c.req.query('reason'));
    const unused =
      fromQuery === undefined ? null : await readUnusedBody(c, deps.config.maxBodyBytes);
    const body =
      fromQuery === undefined && hasBody(c)
        ? await readJson(c, DiscardBody, deps.config.maxBodyBytes)
        : undefined;
    const reason = fromQuery ?? body?.value.reason;
    if (reason === undefined) {
      // With no reason given at all, an id that names no dead letter is 404, not 400 for the
      // missing reason (DESIGN: unknown id 404). A body that is there but wrong is still 400.
      await deadLetterOf(id);
      throw new ApiError('validation_failed', 'discarding needs a reason', [
        { path: 'reason', message: 'give {"reason": "..."} in the body or ?reason=' },
      ]);
    }
    // The JSON sent, or the query's reason as given (with any body beside it): compared as sent,
    // like every keyed request.
    const sent = body
      ? body.raw
      : { reason: c.req.query('reason'), ...(unused !== null && { body: unused }) };
    return onceForKey(c, deps, sent, async () => {
      const dead = await deadLetterOf(id);
      const auditId = await deps.deadLetters.discard(dead, reason, 'admin-api');
      if (!auditId) {
        throw notFound('dead letter');
      }
      requestLogger(c).warn({ eventId: dead.event_id, reason, auditId }, 'dead letter discarded');
      return c.json({
        id: dead.id,
        event_id: dead.event_id,
        discarded: true,
        reason,
        audit_id: auditId,
      });
    });
  });
};

export const registerIntegrityRoutes = (app: App, deps: AppDeps) => {
  app.post('/admin/integrity/refresh', async (c) => {
    const sent = await readUnusedBody(c, deps.config.maxBodyBytes);
    return onceForKey(c, deps, sent, async () => {
      const snapshot = await mainCall(
        deps,
        'refresh the integrity views',
        refreshIntegrity(deps.config.mainDatabaseUrl, 'manual', true),
      ).catch((err: unknown) => {
        if (err instanceof ApiError || !isDatabaseAnswer(err)) {
          throw err;
        }
        // PostgreSQL refused the refresh itself (a view's rows, a lock, a migration not run):
        // what it said is what an operator needs, not "internal error".
        throw new ApiError(
          'internal',
          `the main database refused the integrity refresh: ${databaseReason(err)}; the last snapshot stands (GET /admin/integrity)`,
          undefined,
          { cause: err },
        );
      });
      if (!snapshot) {
        throw new Error('integrity refresh returned no snapshot');
      }
      // GET /admin/integrity reads the replica: it shows this refresh once it has replayed it.
      await replicaReached(
        deps.replica,
        deps.config.replicaIsMain,
        snapshot.lsn,
        REFRESH_VISIBLE_WAIT_MS,
      );
      return c.json({
        refreshed_at: snapshot.refreshed_at,
        duration_ms: snapshot.duration_ms,
        anomalies: snapshot.anomalies,
      });
    });
  });

  app.get('/admin/integrity', async (c) => {
    // The unchecked pool: a report is worth giving from a replica behind what was acknowledged.
    const { snapshot, samples } = await replicaCall(deps, () => integrityReport(deps.replica, 5));
    return c.json({
      refreshed_at: snapshot?.refreshed_at ?? null,
      duration_ms: snapshot?.duration_ms ?? null,
      mode: snapshot?.mode ?? null,
      anomalies: snapshot?.anomalies ?? noAnomalies(),
      samples,
    });
  });
};

/** A dead letter's path id: an event id, or an undecodable entry's; anything else names none. */
const deadLetterParam = (c: Context): string => {
  const id = deadLetterIdIn(c.req.param('id') ?? '');
  if (id === undefined) {
    throw notFound('dead letter');
  }
  return id;
};
