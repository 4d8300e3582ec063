import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { Envelope } from './events.ts';
import { type ExecutedObsUnit, fold } from './fold.ts';
import { CURRENT_VERSIONS, UnknownVersionError, upcast } from './upcast.ts';

/** An ExecutedObsUnitStarted exactly as v1 stored it: no configuration, notes or metadata. */
const storedV1 = {
  event_id: '01a200d1-6d21-762d-86ae-ece3884c45a3',
  aggregate_id: '01a200d1-6d20-75e0-8edf-764c890fdacb',
  aggregate_type: 'executed_obs_unit',
  type: 'ExecutedObsUnitStarted',
  version: 1,
  site: 'chajnantor',
  accepted_at: Date.parse('2025-03-01T04:00:00.000Z'),
  data: {
    obs_unit_id: 'ou-2025-001',
    instrument: 'nirspec',
    start_time: '2025-03-01T03:59:00.000Z',
  },
} as unknown as Envelope;

void describe('upcast', () => {
  void it('folds a stored v1 start into the current shape', () => {
    const unit = fold(undefined, [upcast(storedV1)]) as ExecutedObsUnit;
    assert.equal(unit.status, 'running');
    assert.equal(unit.instrument_configuration_id, null);
    assert.equal(unit.notes, null);
    assert.deepEqual(unit.metadata, {});
    assert.equal(upcast(storedV1).version, CURRENT_VERSIONS.ExecutedObsUnitStarted);
  });

  void it('leaves current events as they are', () => {
    const current = upcast(storedV1);
    assert.deepEqual(upcast(current), current);
  });

  void it('refuses versions it does not know, rather than guessing', () => {
    assert.throws(() => upcast({ ...storedV1, version: 9 } as Envelope), UnknownVersionError);
    assert.throws(() => upcast({ ...storedV1, version: 0 } as Envelope), UnknownVersionError);
  });
});
