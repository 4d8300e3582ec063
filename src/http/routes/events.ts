import { readAggregateEvents, readEvent } from '../../read/events.ts';
import type { AppDeps } from '../context.ts';
import { notFound } from '../errors.ts';
import { replicaCall } from '../outages.ts';
import { type App, aggregateNotFound, readDeps, uuidParam } from './shared.ts';

export const registerEventRoutes = (app: App, deps: AppDeps) => {
  app.get('/events/:event_id', async (c) => {
    const eventId = uuidParam(c, 'event_id', 'event');
    const view = await replicaCall(deps, (replica) => readEvent(readDeps(deps, replica), eventId));
    if (!view) {
      throw notFound('event');
    }
    return c.json(view);
  });

  app.get('/aggregates/:id/events', async (c) => {
    const id = uuidParam(c, 'id', 'aggregate');
    const items = await replicaCall(deps, (replica) =>
      readAggregateEvents(readDeps(deps, replica), id),
    );
    if (!items) {
      throw await aggregateNotFound(deps, 'aggregate', id);
    }
    return c.json({ items });
  });
};
