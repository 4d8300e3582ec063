import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { Envelope } from '../domain/events.ts';
import {
  decodeEntry,
  EVENT_FIELD,
  encodeEntryFields,
  encodeFieldPerProperty,
  entryRecord,
  UndecodableEntryError,
} from './codec.ts';
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
  void it('writes one packed field without the aggregate type and decodes it from the event type', () => {
    const fields = encodeEntryFields(started);
    assert.equal(fields.length, 2);
    assert.equal(fields[1]?.includes('executed_obs_unit'), false);
    assert.deepEqual(decodeEntry(['1-0', fields]).event, started);
  });

  void it('keeps a site and data holding the separators, and the writer', () => {
    const awkward = {
      ...started,
      site: 'a|b\nc|',
      written_by: 'ingest@site-1',
      data: { ...started.data, notes: 'x|y\nz\u2028', metadata: { '|': ['\n'] } },
    } as Envelope;
    assert.deepEqual(decodeEntry(['1-0', encodeEntryFields(awkward)]).event, awkward);
    assert.equal(entryRecord(encodeEntryFields(awkward)).written_by, 'ingest@site-1');
    assert.equal('written_by' in entryRecord(encodeEntryFields(started)), false);
  });

  void it('decodes entries of earlier builds, a field per property, with or without the aggregate type', () => {
    const writer = { ...started, written_by: 'ops' } as Envelope;
    assert.deepEqual(decodeEntry(['1-0', encodeFieldPerProperty(writer)]).event, writer);
    const fields = ['aggregate_type', 'executed_obs_unit', ...encodeFieldPerProperty(started)];
    assert.deepEqual(decodeEntry(['1-0', fields]).event, started);
  });

  void it('writes a field per property where a separator or an empty writer would not read back', () => {
    for (const odd of [
      { ...started, written_by: 'to|ken' },
      { ...started, written_by: '' },
    ] as Envelope[]) {
      const fields = encodeEntryFields(odd);
      assert.deepEqual(fields, encodeFieldPerProperty(odd));
      assert.deepEqual(decodeEntry(['1-0', fields]).event, odd);
    }
  });

  void it('refuses ids that are not lower-case UUIDs, as the main database writes them back', () => {
    // Written past the API: looked up by their own text, they would never be found applied.
    for (const odd of [
      { ...started, event_id: 'a|b' },
      { ...started, aggregate_id: 'a\nb' },
      { ...started, event_id: started.event_id.toUpperCase() },
      { ...started, aggregate_id: `{${started.aggregate_id}}` },
      { ...started, event_id: started.event_id.replaceAll('-', '') },
    ] as Envelope[]) {
      const fields = encodeEntryFields(odd);
      assert.throws(
        () => decodeEntry(['1-0', fields]),
        (err: Error) => err instanceof UndecodableEntryError && /lower-case UUID/.test(err.message),
        JSON.stringify(odd),
      );
    }
  });

  void it('refuses a packed field that lost its head, its data or a separator', () => {
    const [, packed = ''] = encodeEntryFields(started);
    const head = packed.slice(0, packed.indexOf('\n'));
    for (const broken of [head, packed.slice(packed.indexOf('\n')), packed.replace('|', ''), '']) {
      assert.throws(
        () => decodeEntry(['1-0', [EVENT_FIELD, broken]]),
        UndecodableEntryError,
        broken,
      );
    }
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
    assert.equal(failedEntryOf(['1-0', encodeEntryFields(started)]).type, started.type);
    assert.equal(failedEntryOf(['1-0', ['garbage', 'x']]).type, 'unknown');
  });
});
