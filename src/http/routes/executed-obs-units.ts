import type { Context } from 'hono';
import { OPEN_STATUSES } from '../../domain/events.ts';
import { newIdInPartition, partitionOf } from '../../domain/ids.ts';
import type { Guard } from '../../log/event-log.ts';
import { listMerged, readInflightOnly, readMerged } from '../../read/merged.ts';
import {
  accept,
  envelope,
  idempotencyScope,
  type NewEvent,
  partitionForNewRoot,
  recordedOrRefused,
  respond,
} from '../accept.ts';
import { readJson } from '../body.ts';
import type { AppDeps } from '../context.ts';
import { ApiError, notFound } from '../errors.ts';
import { replicaCall, writeCheck } from '../outages.ts';
import { FinishUnitBody, PatchUnitBody, StartUnitBody, UnitListQuery } from '../schemas.ts';
import {
  type App,
  decodeCursor,
  readDeps,
  readQuery,
  registerAggregateGet,
  seedUnitStatus,
  uuidParam,
} from './shared.ts';

const UNIT = 'executed obs unit';

export const registerUnitRoutes = (app: App, deps: AppDeps) => {
  const now = () => (deps.now ?? (() => new Date()))().getTime();

  app.post('/executed_obs_units/start', async (c) => {
    const started = performance.now();
    const scope = idempotencyScope(c);
    const { value, raw } = await readJson(c, StartUnitBody, deps.config.maxBodyBytes);
    const partition = partitionForNewRoot(scope, deps.config.partitions);
    if (value.instrument_configuration_id) {
      try {
        await requireKnown(deps, 'instrument_configuration', value.instrument_configuration_id);
      } catch (err) {
        const outcome = await recordedOrRefused(c, deps, { scope, rawBody: raw, partition }, err);
        return respond(c, deps, outcome, started);
      }
    }
    const id = newIdInPartition(partition, deps.config.partitions);
    const acceptedAt = now();
    const event = envelope(deps, partition, acceptedAt, {
      type: 'ExecutedObsUnitStarted',
      aggregate_id: id,
      data: {
        obs_unit_id: value.obs_unit_id,
        instrument: value.instrument,
        start_time: value.start_time ?? new Date(acceptedAt).toISOString(),
        instrument_configuration_id: value.instrument_configuration_id ?? null,
        notes: value.notes ?? null,
        metadata: value.metadata ?? {},
      },
    });
    const outcome = await accept(c, deps, {
      scope,
      rawBody: raw,
      partition,
      events: [event],
      guard: { unitId: id, next: 'running', require: false },
      response: {
        status: 201,
        body: {
          id,
          event_id: event.event_id,
          status: 'running',
          accepted_at: new Date(acceptedAt).toISOString(),
        },
      },
    });
    return respond(c, deps, outcome, started);
  });

  app.post('/executed_obs_units/:id/finish', async (c) => {
    const id = uuidParam(c, 'id', UNIT);
    const scope = idempotencyScope(c);
    const { value, raw } = await readJson(c, FinishUnitBody, deps.config.maxBodyBytes);
    const acceptedAt = now();
    return transition(c, deps, {
      id,
      scope,
      raw,
      acceptedAt,
      event: {
        type: 'ExecutedObsUnitFinished',
        aggregate_id: id,
        data: {
          status: value.status,
          end_time: value.end_time ?? new Date(acceptedAt).toISOString(),
          ...(value.notes !== undefined ? { notes: value.notes } : {}),
        },
      },
      guard: { unitId: id, allowed: OPEN_STATUSES, next: value.status, require: true },
    });
  });

  app.patch('/executed_obs_units/:id', async (c) => {
    const id = uuidParam(c, 'id', UNIT);
    const scope = idempotencyScope(c);
    const { value, raw } = await readJson(c, PatchUnitBody, deps.config.maxBodyBytes);
    return transition(c, deps, {
      id,
      scope,
      raw,
      acceptedAt: now(),
      event: { type: 'ExecutedObsUnitUpdated', aggregate_id: id, data: value },
      guard: { unitId: id, allowed: OPEN_STATUSES, next: value.status ?? '=', require: true },
    });
  });

  registerAggregateGet(app, deps, '/executed_obs_units/:id', 'executed_obs_unit', UNIT);

  app.get('/executed_obs_units', async (c) => {
    const query = readQuery(c, UnitListQuery);
    const filters = [
      ...(query.obs_unit_id ? [{ column: 'obs_unit_id', value: query.obs_unit_id }] : []),
      ...(query.status ? [{ column: 'status', value: query.status }] : []),
    ];
    // Decoded first: a cursor no page gave is a 400 whether or not the replica answers.
    const cursor = decodeCursor(query.cursor);
    const page = await replicaCall(deps, (replica) =>
      listMerged(readDeps(deps, replica), 'executed_obs_unit', filters, cursor, query.limit),
    );
    return c.json(page);
  });
};

/**
 * Finish and patch: the append script checks the unit's status atomically. When Redis no longer
 * remembers the unit, its status is seeded from the replica and the append is tried once more.
 */
const transition = async (
  c: Context,
  deps: AppDeps,
  request: {
    id: string;
    scope: string | undefined;
    raw: unknown;
    acceptedAt: number;
    event: NewEvent;
    guard: Guard;
  },
) => {
  const started = performance.now();
  const partition = partitionOf(request.id, deps.config.partitions);
  const event = envelope(deps, partition, request.acceptedAt, request.event);
  const attempt = (guard: Guard) =>
    accept(c, deps, {
      scope: request.scope,
      rawBody: request.raw,
      partition,
      events: [event],
      guard,
      response: { status: 202, body: { id: request.id, event_id: event.event_id } },
    });
  let outcome = await attempt(request.guard);
  if (outcome.kind === 'unknown') {
    const seed = await seedUnitStatus(deps, request.id);
    if (seed === undefined) {
      throw notFound(UNIT);
    }
    if (seed.site !== deps.config.site) {
      // Its events are ordered by its own site's log: one appended here could apply before or
      // after that site's, and a finish at both sites would leave the second a dead letter.
      throw new ApiError(
        'not_found',
        `${UNIT} ${request.id} is not known at this site: it was started at site ${seed.site}, where it can be changed or finished`,
      );
    }
    outcome = await attempt({ ...request.guard, seed: seed.status });
  }
  if (outcome.kind === 'conflict') {
    throw new ApiError(
      'already_finished',
      `executed obs unit ${request.id} is already ${outcome.state}`,
    );
  }
  return respond(c, deps, outcome, started);
};

/** An id in a body must name something this site knows, pending or applied. */
export const requireKnown = async (
  deps: AppDeps,
  type: 'instrument_configuration' | 'executed_obs_unit',
  id: string,
) => {
  const merged = await writeCheck(deps, (database) =>
    readMerged(readDeps(deps, database), type, id),
  ).catch(async (err: unknown) => {
    // Neither database answers (the replica away or behind what was acknowledged, the main
    // database cut off): an id created here and still in flight is known all the same.
    const inflight =
      err instanceof ApiError && err.code === 'replica_unavailable'
        ? await readInflightOnly(
            { eventLog: deps.eventLog, partitions: deps.config.partitions },
            type,
            id,
          )
        : undefined;
    if (!inflight) {
      throw err;
    }
    return inflight;
  });
  if (!merged) {
    throw new ApiError('not_found', `${type.replaceAll('_', ' ')} ${id} not found`, [
      {
        path:
          type === 'instrument_configuration'
            ? 'instrument_configuration_id'
            : 'executed_obs_unit_id',
        message: 'unknown id',
      },
    ]);
  }
};
