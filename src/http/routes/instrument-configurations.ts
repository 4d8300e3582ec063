import { newIdInPartition } from '../../domain/ids.ts';
import { accept, envelope, idempotencyScope, partitionForNewRoot, respond } from '../accept.ts';
import { readJson } from '../body.ts';
import type { AppDeps } from '../context.ts';
import { CreateConfigurationBody } from '../schemas.ts';
import { type App, registerAggregateGet } from './shared.ts';

export const registerConfigurationRoutes = (app: App, deps: AppDeps) => {
  app.post('/instrument_configurations', async (c) => {
    const started = performance.now();
    const scope = idempotencyScope(c);
    const { value, raw } = await readJson(c, CreateConfigurationBody, deps.config.maxBodyBytes);
    const partition = partitionForNewRoot(scope, deps.config.partitions);
    const id = newIdInPartition(partition, deps.config.partitions);
    const event = envelope(deps, partition, (deps.now?.() ?? new Date()).getTime(), {
      type: 'InstrumentConfigurationCreated',
      aggregate_id: id,
      data: value,
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

  registerAggregateGet(
    app,
    deps,
    '/instrument_configurations/:id',
    'instrument_configuration',
    'instrument configuration',
  );
};
