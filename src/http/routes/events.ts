import { readAggregateEvents, readEvent } from '../../read/events.ts';
import type { AppDeps } from '../context.ts';
import { notFound } from '../errors.ts';
import { replicaCall } from '../outages.ts';
import { type App, readDeps, uuidParam } from './shared.ts';

export const registerEventRoutes = (app: App, deps: AppDeps) => {
  app.get('/events/:event_id', async (c) => {
    const eventId = uuidParam(c, 'event_id', 'event');
    const view = await replicaCall(deps, readEvent(readDeps(deps), eventId));
    if (!view) {
      throw notFound('event');
    }
    return c.json(view);
  });

  app.get('/aggregates/:id/events', async (c) => {
    const id = uuidParam(c, 'id', 'aggregate');
    const items = await replicaCall(deps, readAggregateEvents(readDeps(deps), id));
    if (!items) {
      throw notFound('aggregate');
    }
    return c.json({ items });
  });
};
