import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import {
  futureStartWarning,
  ReplayBoundError,
  ReplayRangeError,
  replayBound,
  replayRange,
} from './replay.ts';

void describe('replay bounds', () => {
  // The operator's shell may run in any zone; the bound must not move with it.
  const zone = process.env.TZ;
  before(() => {
    process.env.TZ = 'America/Santiago';
  });
  after(() => {
    if (zone === undefined) {
      delete process.env.TZ;
    } else {
      process.env.TZ = zone;
    }
  });

  void it('takes entry ids as they are', () => {
    assert.equal(replayBound('1700000000000-3'), '1700000000000-3');
    assert.equal(replayBound('1700000000000', 'to'), '1700000000000');
  });

  void it('reads a time without an offset as UTC, whatever the local zone', () => {
    // Checks that the zone took effect, so the assertions below would catch a local reading.
    assert.notEqual(new Date(2026, 11, 5, 2).getTime(), Date.UTC(2026, 11, 5, 2));
    const expected = `${Date.UTC(2026, 11, 5, 2, 0)}-0`;
    assert.equal(replayBound('2026-12-05T02:00'), expected);
    assert.equal(replayBound('2026-12-05 02:00'), expected);
    assert.equal(replayBound('2026-12-05T02:00:00'), expected);
    assert.equal(
      replayBound('2026-12-05T02:00:00.250'),
      `${Date.UTC(2026, 11, 5, 2, 0, 0, 250)}-0`,
    );
    assert.equal(replayBound('2026-12-05'), `${Date.UTC(2026, 11, 5)}-0`);
  });

  void it('honours an offset or Z when the time names one', () => {
    assert.equal(replayBound('2026-12-05T02:00Z'), `${Date.UTC(2026, 11, 5, 2)}-0`);
    assert.equal(replayBound('2026-12-05T02:00:00+01:00'), `${Date.UTC(2026, 11, 5, 1)}-0`);
    assert.equal(replayBound('2026-12-05T02:00:00-0300'), `${Date.UTC(2026, 11, 5, 5)}-0`);
    assert.equal(replayBound('2026-12-05 02:00+01'), `${Date.UTC(2026, 11, 5, 1)}-0`);
    assert.equal(replayBound('2026-12-05t02:00:00.5z'), `${Date.UTC(2026, 11, 5, 2, 0, 0, 500)}-0`);
  });

  void it('takes in the whole last millisecond of a time as an end', () => {
    assert.equal(
      replayBound('2026-12-05T02:00:00.250', 'to'),
      String(Date.UTC(2026, 11, 5, 2, 0, 0, 250)),
    );
  });

  void it('refuses what is neither an entry id nor an ISO-8601 time', () => {
    for (const text of [
      'yesterday',
      '',
      '12/05/2026',
      '2026-13-45T99:00',
      'T02:00',
      '2026-12-05T25:00',
      // Forms Date.parse reads in the local zone.
      '2026-12-05 2:00',
      '2026-12-05,02:00',
      'Dec 5 2026 02:00',
      '2026-12-05T02',
    ]) {
      assert.throws(() => replayBound(text), ReplayBoundError, text);
    }
  });

  void it('refuses a day the month does not have, which Date.parse would roll into the next', () => {
    for (const text of [
      '2026-02-29',
      '2026-02-30T02:00',
      '2026-04-31T02:00:00Z',
      '2026-06-31 02:00',
    ]) {
      assert.throws(() => replayBound(text), ReplayBoundError, text);
    }
    assert.equal(replayBound('2024-02-29'), `${Date.UTC(2024, 1, 29)}-0`);
  });
});

void describe('replay range', () => {
  void it('refuses a start after the end: its report of zeros would read as nothing lost', () => {
    assert.throws(() => replayRange('1700000000001-0', '1700000000000-5'), ReplayRangeError);
    assert.throws(
      () => replayRange('2026-12-05T03:00Z', '2026-12-05T02:00Z'),
      /from 2026-12-05T03:00Z lies after to 2026-12-05T02:00Z/,
    );
  });

  void it('takes a range within one millisecond, and an end naming the whole of it', () => {
    assert.deepEqual(replayRange('1700000000000-3', '1700000000000-3'), {
      from: '1700000000000-3',
      to: '1700000000000-3',
    });
    assert.deepEqual(replayRange('1700000000000-7', '1700000000000'), {
      from: '1700000000000-7',
      to: '1700000000000',
    });
    assert.deepEqual(replayRange('2026-12-05T02:00Z'), {
      from: `${Date.UTC(2026, 11, 5, 2)}-0`,
      to: '+',
    });
  });

  void it('warns of a start in the future (a mistyped year), past a few minutes of clock skew', () => {
    const now = Date.UTC(2026, 11, 6, 12);
    assert.match(
      futureStartWarning('2027-12-06T12:00Z', now) ?? '',
      /^from 2027-12-06T12:00Z lies in the future \(it is 2026-12-06T12:00:00.000Z here\)/,
    );
    assert.ok(futureStartWarning(`${now + 3_600_000}-0`, now));
    // Redis's clock a minute ahead of this host's, and any start in the past: nothing to say.
    assert.equal(futureStartWarning(`${now + 60_000}-0`, now), undefined);
    assert.equal(futureStartWarning('2026-12-05T02:00Z', now), undefined);
    // Still a range: a replay that holds nothing yet is answered, not refused.
    assert.deepEqual(replayRange('2027-12-06T12:00Z'), {
      from: `${Date.UTC(2027, 11, 6, 12)}-0`,
      to: '+',
    });
  });
});
