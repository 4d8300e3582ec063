import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { Envelope } from '../domain/events.ts';
import { decodeEntry, encodeEntryFields, UndecodableEntryError } from './codec.ts';
import { failedEntryOf } from './dead-letters.ts';

const started = {
  event_id: '01a231cc-e2e8-7118-ae12-6595ab4dbc68',
  aggregate_id: '01a231cc-e2e8-7694-bcc4-7c6289d07620',
  aggregate_type: 'executed_obs_unit',
  type: 'ExecutedObsUnitStarted',
  version: 2,
  site: 'llama',
  accepted_at: 1_796_131_840_744,
  data: {
    obs_unit_id: 'ou-1',
    instrument: 'nircam',
    start_time: '2026-12-01T13:30:40.744Z',
    instrument_configuration_id: null,
    notes: null,
    metadata: {},
  },
} as Envelope;

void describe('stream entry codec', () => {
  void it('writes no aggregate type and decodes it from the event type', () => {
    const fields = encodeEntryFields(started);
    assert.equal(fields.includes('aggregate_type'), false);
    assert.deepEqual(decodeEntry(['1-0', fields]).event, started);
  });

  void it('decodes entries of earlier builds, which carry the aggregate type', () => {
    const fields = ['aggregate_type', 'executed_obs_unit', ...encodeEntryFields(started)];
    assert.deepEqual(decodeEntry(['1-0', fields]).event, started);
  });

  void it('refuses an entry whose type names no aggregate', () => {
    const fields = encodeEntryFields({ ...started, type: 'NoSuchEvent' } as unknown as Envelope);
    assert.throws(() => decodeEntry(['1-0', fields]), UndecodableEntryError);
  });

  void it('gives a failed entry the aggregate type its in-flight index is kept under', () => {
    assert.equal(
      failedEntryOf(['1-0', encodeEntryFields(started)]).aggregateType,
      'executed_obs_unit',
    );
    assert.equal(failedEntryOf(['1-0', ['garbage', 'x']]).aggregateType, 'unknown');
  });
});
