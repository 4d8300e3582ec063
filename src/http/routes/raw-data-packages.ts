import { fileUnits } from '../../db/queries/read.ts';
import { newIdInPartition, partitionOf } from '../../domain/ids.ts';
import { accept, envelope, idempotencyScope, recordedOrRefused, respond } from '../accept.ts';
import { readJson } from '../body.ts';
import type { AppDeps } from '../context.ts';
import { ApiError } from '../errors.ts';
import { writeCheck } from '../outages.ts';
import { CreatePackageBody } from '../schemas.ts';
import { type App, registerAggregateGet } from './shared.ts';

/**
 * The unit of each file, from its pending registration or from the replica. Redis is read first:
 * a registration acknowledged in between is then already on the replica.
 */
const unitsOfFiles = async (deps: AppDeps, fileIds: readonly string[]) => {
  const pending = await Promise.all(
    fileIds.map((id) =>
      deps.eventLog.readInflight(id, partitionOf(id, deps.config.partitions), 'raw_data_file'),
    ),
  );
  const units = new Map<string, string>();
  fileIds.forEach((id, i) => {
    for (const { event } of pending[i] ?? []) {
      if (event.type === 'RawDataFileRegistered' && event.aggregate_id === id) {
        units.set(id, event.data.executed_obs_unit_id);
      }
    }
  });
  const missing = fileIds.filter((id) => !units.has(id));
  if (missing.length > 0) {
    for (const [id, unit] of await writeCheck(deps, (database) => fileUnits(database, missing))) {
      units.set(id, unit);
    }
  }
  return units;
};

/** The one executed obs unit whose files a package holds: every file known, all of one unit. */
const unitOfPackage = async (deps: AppDeps, fileIds: readonly string[]): Promise<string> => {
  const units = await unitsOfFiles(deps, fileIds);
  const unknown = fileIds.flatMap((id, i) =>
    units.has(id) ? [] : [{ path: `file_ids.${i}`, message: `unknown raw data file ${id}` }],
  );
  if (unknown.length > 0) {
    throw new ApiError('not_found', 'some raw data files are not known at this site', unknown);
  }
  const distinctUnits = [...new Set(units.values())];
  const unitId = distinctUnits[0];
  if (distinctUnits.length !== 1 || unitId === undefined) {
    throw new ApiError(
      'files_span_units',
      `a package holds files of one executed obs unit; these belong to ${distinctUnits.length}`,
      fileIds.map((id, i) => ({ path: `file_ids.${i}`, message: `of unit ${units.get(id)}` })),
    );
  }
  return unitId;
};

export const registerPackageRoutes = (app: App, deps: AppDeps) => {
  app.post('/raw_data_packages', async (c) => {
    const started = performance.now();
    const scope = idempotencyScope(c);
    const { value, raw } = await readJson(c, CreatePackageBody, deps.config.maxBodyBytes);
    let unitId: string;
    try {
      unitId = await unitOfPackage(deps, value.file_ids);
    } catch (err) {
      // Where a first run appended follows from its files' unit, which this cannot tell.
      return respond(
        c,
        deps,
        await recordedOrRefused(c, deps, { scope, rawBody: raw }, err),
        started,
      );
    }
    // A package lives in its unit's partition, behind the registrations of its files.
    const partition = partitionOf(unitId, deps.config.partitions);
    const id = newIdInPartition(partition, deps.config.partitions);
    const event = envelope(deps, partition, (deps.now?.() ?? new Date()).getTime(), {
      type: 'RawDataPackageCreated',
      aggregate_id: id,
      data: { name: value.name, file_ids: value.file_ids, executed_obs_unit_id: unitId },
    });
    const outcome = await accept(c, deps, {
      scope,
      rawBody: raw,
      partition,
      events: [event],
      response: { status: 201, body: { id, event_id: event.event_id } },
    });
    return respond(c, deps, outcome, started);
  });

  registerAggregateGet(app, deps, '/raw_data_packages/:id', 'raw_data_package', 'raw data package');
};
