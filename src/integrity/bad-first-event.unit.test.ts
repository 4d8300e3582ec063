import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { describe, it } from 'node:test';
import { AGGREGATE_TYPES, EVENT_TYPES } from '../domain/events.ts';
import { projectPath } from '../paths.ts';

/** The SQL of the last migration that defines the bad_first_event view. */
const latestDefinition = (): string => {
  const definitions = readdirSync(projectPath('migrations'))
    .filter((name) => name.endsWith('.sql'))
    .sort()
    .map((name) => readFileSync(projectPath(`migrations/${name}`), 'utf8'))
    .filter((sql) => sql.includes('CREATE MATERIALIZED VIEW integrity_bad_first_event'));
  const latest = definitions.at(-1);
  assert.ok(latest, 'a migration defines integrity_bad_first_event');
  return latest;
};

void describe('the bad_first_event view', () => {
  void it("expects each aggregate type's own creation event, as the domain defines them", () => {
    const inView = Object.fromEntries(
      [...latestDefinition().matchAll(/WHEN '(\w+)' THEN '(\w+)'/g)].map(([, aggregate, event]) => [
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
