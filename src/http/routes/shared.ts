import type { Context, Hono } from 'hono';
import type pg from 'pg';
import type { z } from 'zod';
import type { AggregateType, UnitStatus } from '../../domain/events.ts';
import { isUuid } from '../../domain/ids.ts';
import { readMerged } from '../../read/merged.ts';
import { issueDetails, storableProblems } from '../body.ts';
import type { AppDeps, HonoEnv } from '../context.ts';
import { ApiError, notFound } from '../errors.ts';
import { replicaCall, writeCheck } from '../outages.ts';

export type App = Hono<HonoEnv>;

/** A path id that is not a UUID names nothing: 404, like an unknown UUID. */
export const uuidParam = (c: Context, name: string, what: string): string => {
  const value = c.req.param(name) ?? '';
  if (!isUuid(value)) {
    throw notFound(what);
  }
  return value.toLowerCase();
};

export const registerAggregateGet = (
  app: App,
  deps: AppDeps,
  path: string,
  type: AggregateType,
  what: string,
) => {
  app.get(path, async (c) => {
    const id = uuidParam(c, 'id', what);
    const merged = await replicaCall(deps, (replica) =>
      readMerged(readDeps(deps, replica), type, id),
    );
    if (!merged) {
      throw await aggregateNotFound(deps, what, id);
    }
    return c.json({ ...merged.state, consistency: merged.consistency });
  });
};

/**
 * The 404 of an aggregate no read shows. One whose events wait in the dead letters was accepted
 * (201) and is not applied: the answer says so and where to look, not that the id is unknown.
 */
export const aggregateNotFound = async (
  deps: AppDeps,
  what: string,
  id: string,
): Promise<ApiError> =>
  (await deps.deadLetters.isBlocked(id))
    ? new ApiError(
        'not_found',
        `${id} is not applied: the events of the aggregate with this id are held in the dead letters (outpost dead list, GET /admin/dead-letters)`,
      )
    : notFound(what);

/** What a read needs, with the replica pool `ReplicaLink.call` hands it (or the main database's). */
export const readDeps = (deps: AppDeps, replica: pg.Pool) => ({
  replica,
  eventLog: deps.eventLog,
  deadLetters: deps.deadLetters,
  partitions: deps.config.partitions,
});

/**
 * The status of a unit Redis no longer remembers (expired, dropped by a discard, or started at
 * another site sharing the main database), and the site it was started at, from the replica with
 * the unit's events still in flight folded over it; undefined if unknown.
 */
export const seedUnitStatus = async (
  deps: AppDeps,
  unitId: string,
): Promise<{ status: UnitStatus; site: string } | undefined> => {
  const merged = await writeCheck(deps, (database) =>
    readMerged(readDeps(deps, database), 'executed_obs_unit', unitId),
  );
  return merged && 'status' in merged.state
    ? { status: merged.state.status as UnitStatus, site: String(merged.state.site) }
    : undefined;
};

export const decodeCursor = (cursor: string | undefined): string | undefined => {
  if (cursor === undefined) {
    return undefined;
  }
  if (!isUuid(cursor)) {
    throw new ApiError('invalid_cursor', 'cursor is not one this API returned', [
      { path: 'cursor', message: 'invalid cursor' },
    ]);
  }
  return cursor.toLowerCase();
};

export const readQuery = <T>(c: Context, schema: z.ZodType<T>): T => {
  // A parameter left empty (`?status=&limit=`, as the contract writes them) is one not given:
  // `partition=` read as partition 0 would quietly filter out every other partition.
  const given = Object.entries(c.req.queries()).map(
    ([name, values]) => [name, values.filter((value) => value !== '')] as const,
  );
  // Every parameter takes one value: of `?status=failed&status=success` the first alone was
  // read, and the answer looked like one filtered by both.
  const repeated = given
    .filter(([, values]) => values.length > 1)
    .map(([name]) => ({ path: name, message: 'given more than once; it takes one value' }));
  if (repeated.length > 0) {
    throw new ApiError('validation_failed', 'query parameters are invalid', repeated);
  }
  const query = Object.fromEntries(
    given.flatMap(([name, [value]]) => (value === undefined ? [] : [[name, value]])),
  );
  // A filter value goes to PostgreSQL as a parameter, which refuses a NUL byte: without this
  // the refusal would come back as the replica failing (503), not as the caller's mistake.
  const unstorable = storableProblems(query);
  if (unstorable.length > 0) {
    throw new ApiError('validation_failed', 'query parameters are invalid', unstorable);
  }
  const parsed = schema.safeParse(query);
  if (!parsed.success) {
    throw new ApiError(
      'validation_failed',
      'query parameters are invalid',
      issueDetails(parsed.error),
    );
  }
  return parsed.data;
};
