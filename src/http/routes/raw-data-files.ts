import type { UnitStatus } from '../../domain/events.ts';
import { newIdInPartition, partitionOf } from '../../domain/ids.ts';
import { listMerged } from '../../read/merged.ts';
import { accept, envelope, idempotencyScope, respond } from '../accept.ts';
import { readJson } from '../body.ts';
import type { AppDeps } from '../context.ts';
import { ApiError } from '../errors.ts';
import { replicaCall } from '../outages.ts';
import { FileListQuery, RegisterFilesBody } from '../schemas.ts';
import {
  type App,
  decodeCursor,
  readDeps,
  readQuery,
  registerAggregateGet,
  seedUnitStatus,
} from './shared.ts';

export const registerFileRoutes = (app: App, deps: AppDeps) => {
  app.post('/raw_data_files', async (c) => {
    const started = performance.now();
    const scope = idempotencyScope(c);
    const { value, raw } = await readJson(c, RegisterFilesBody, deps.config.maxBodyBytes);
    const unitId = value.executed_obs_unit_id;
    // Files live in their unit's partition: a file is never applied before its unit started.
    const partition = partitionOf(unitId, deps.config.partitions);
    const acceptedAt = (deps.now?.() ?? new Date()).getTime();
    const events = value.files.map((file) =>
      envelope(deps, partition, acceptedAt, {
        type: 'RawDataFileRegistered',
        aggregate_id: newIdInPartition(partition, deps.config.partitions),
        data: {
          executed_obs_unit_id: unitId,
          path: file.path,
          size_bytes: file.size_bytes,
          checksum: file.checksum,
          checksum_algorithm: file.checksum_algorithm,
          created_at: file.created_at ?? new Date(acceptedAt).toISOString(),
        },
      }),
    );
    const ids = events.map((e) => e.aggregate_id);
    const attempt = (seed?: { status: UnitStatus; site: string }) =>
      accept(c, deps, {
        scope,
        rawBody: raw,
        partition,
        events,
        guard: {
          unitId,
          next: '=',
          require: true,
          // A unit another site started takes files here, but its status stays that site's.
          ...(seed ? { seed: seed.status, recordSeed: seed.site === deps.config.site } : {}),
        },
        response: { status: 201, body: { ids, event_ids: events.map((e) => e.event_id) } },
      });
    let outcome = await attempt();
    if (outcome.kind === 'unknown') {
      const seed = await seedUnitStatus(deps, unitId);
      if (seed === undefined) {
        throw new ApiError('not_found', `executed obs unit ${unitId} not found`, [
          { path: 'executed_obs_unit_id', message: 'unknown id' },
        ]);
      }
      outcome = await attempt(seed);
    }
    return respond(c, deps, outcome, started);
  });

  registerAggregateGet(app, deps, '/raw_data_files/:id', 'raw_data_file', 'raw data file');

  app.get('/raw_data_files', async (c) => {
    const query = readQuery(c, FileListQuery);
    const filters = query.executed_obs_unit_id
      ? [{ column: 'executed_obs_unit_id', value: query.executed_obs_unit_id }]
      : [];
    // Decoded first: a cursor no page gave is a 400 whether or not the replica answers.
    const cursor = decodeCursor(query.cursor);
    const page = await replicaCall(deps, (replica) =>
      listMerged(readDeps(deps, replica), 'raw_data_file', filters, cursor, query.limit),
    );
    return c.json(page);
  });
};
