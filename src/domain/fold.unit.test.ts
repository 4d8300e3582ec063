import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { Envelope } from './events.ts';
import { type ExecutedObsUnit, evolve, FoldError, fold } from './fold.ts';

const at = Date.parse('2026-11-22T01:00:00.000Z');
const unitId = '01a200d1-6d20-75e0-8edf-764c890fdacb';
const base = {
  aggregate_id: unitId,
  aggregate_type: 'executed_obs_unit',
  version: 1,
  site: 's',
} as const;
const started: Envelope = {
  ...base,
  event_id: 'e0',
  accepted_at: at,
  type: 'ExecutedObsUnitStarted',
  data: {
    obs_unit_id: 'ou',
    instrument: 'i',
    start_time: '2026-11-22T00:59:00.000Z',
    instrument_configuration_id: null,
    notes: null,
    metadata: { a: 1 },
  },
};
const paused: Envelope = {
  ...base,
  event_id: 'e1',
  accepted_at: at + 1,
  type: 'ExecutedObsUnitUpdated',
  data: { status: 'paused', notes: 'wind' },
};
const finished: Envelope = {
  ...base,
  event_id: 'e2',
  accepted_at: at + 2,
  type: 'ExecutedObsUnitFinished',
  data: { status: 'success', end_time: '2026-11-22T01:10:00.000Z' },
};

void describe('fold', () => {
  void it('folds a unit from start through pause to finish, counting versions', () => {
    const unit = fold(undefined, [started, paused, finished]) as ExecutedObsUnit;
    assert.equal(unit.status, 'success');
    assert.equal(unit.notes, 'wind');
    assert.equal(unit.end_time, '2026-11-22T01:10:00.000Z');
    assert.equal(unit.version, 3);
    assert.equal(unit.accepted_at, new Date(at).toISOString());
    assert.equal(unit.updated_at, new Date(at + 2).toISOString());
    assert.deepEqual(unit.metadata, { a: 1 });
  });

  void it('refuses a finish after a finish and an update of an unknown aggregate', () => {
    const done = fold(undefined, [started, finished]);
    assert.throws(() => evolve(done, { ...finished, event_id: 'e3' }), FoldError);
    assert.throws(() => evolve(undefined, paused), FoldError);
    assert.throws(() => evolve(done, { ...started, event_id: 'e4' }), FoldError);
  });

  void it('refuses an event of another aggregate', () => {
    const unit = fold(undefined, [started]);
    assert.throws(
      () => evolve(unit, { ...paused, aggregate_id: '01a200d1-0000-7000-8000-000000000000' }),
      FoldError,
    );
  });
});
