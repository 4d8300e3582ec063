import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, it } from 'node:test';
import { AGGREGATE_TYPES, EVENT_TYPES } from '../domain/events.ts';
import { projectPath } from '../paths.ts';

void describe('the bad_first_event view', () => {
  void it("expects each aggregate type's own creation event, as the domain defines them", () => {
    // The view's query; the integrity e2e test holds the latest migration to it.
    const query = readFileSync(projectPath('sql/integrity/bad_first_event.sql'), 'utf8');
    const inView = Object.fromEntries(
      [...query.matchAll(/WHEN '(\w+)' THEN '(\w+)'/g)].map(([, aggregate, event]) => [
        aggregate,
        event,
      ]),
    );
    const inDomain = Object.fromEntries(
      Object.entries(EVENT_TYPES)
        .filter(([, { creates }]) => creates)
        .map(([type, { aggregate }]) => [aggregate, type]),
    );
    assert.deepEqual(inView, inDomain);
    assert.deepEqual(Object.keys(inDomain).sort(), [...AGGREGATE_TYPES].sort());
  });
});
