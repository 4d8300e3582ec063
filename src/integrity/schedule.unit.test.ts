import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  isValidSchedule,
  longestGapSeconds,
  nextRun,
  pgCronReadsAlike,
  runsBetween,
} from './schedule.ts';

void describe('nextRun', () => {
  const from = new Date('2026-12-05T01:30:00Z');

  void it('reads a schedule in UTC by default', () => {
    assert.equal(nextRun('0 3 * * *', from).toISOString(), '2026-12-05T03:00:00.000Z');
  });

  void it("reads it in pg_cron's time zone where one is given, as pg_cron does", () => {
    // 03:00 in Santiago (UTC-3 in December) is 06:00 UTC.
    assert.equal(
      nextRun('0 3 * * *', from, 'America/Santiago').toISOString(),
      '2026-12-05T06:00:00.000Z',
    );
    assert.equal(nextRun('0 3 * * *', from, 'GMT').toISOString(), '2026-12-05T03:00:00.000Z');
  });

  void it('reads a time zone it does not know as UTC', () => {
    assert.equal(nextRun('0 3 * * *', from, 'Not/AZone').toISOString(), '2026-12-05T03:00:00.000Z');
  });
});

void describe('longestGapSeconds', () => {
  const from = new Date('2026-12-05T01:30:00Z');

  void it('is the period of an even schedule', () => {
    assert.equal(longestGapSeconds('*/30 * * * *', from), 1800);
    assert.equal(longestGapSeconds('0 3 * * *', from), 86_400);
  });

  void it('is the longest gap of an uneven one: weekdays leave the weekend', () => {
    assert.equal(longestGapSeconds('0 3 * * 1-5', from), 3 * 86_400);
    assert.equal(longestGapSeconds('0 6,8 * * *', from), 22 * 3600);
  });

  void it('finds the gaps of a monthly schedule, and the weekend of one every minute on weekdays', () => {
    assert.equal(longestGapSeconds('0 3 1 * *', from), 31 * 86_400);
    assert.equal(
      longestGapSeconds('* * * * 1-5', new Date('2026-12-07T09:00:00Z')),
      2 * 86_400 + 60,
    );
  });

  void it('finds the night of a schedule of working hours, whenever the process starts', () => {
    for (const start of ['2026-12-07T09:00:00Z', '2026-12-07T17:30:00Z']) {
      assert.equal(longestGapSeconds('*/5 8-17 * * 1-5', new Date(start)), 62 * 3600 + 5 * 60);
    }
  });
});

void describe('pgCronReadsAlike', () => {
  // The full lists are checked against pg_cron itself in the integrity e2e test.
  void it("takes pg_cron's grammar and refuses what pg_cron refuses or reads otherwise", () => {
    assert.equal(pgCronReadsAlike('0 9-17 * * mon-fri'), true);
    assert.equal(pgCronReadsAlike('0 3 L * *'), false);
    assert.equal(pgCronReadsAlike('5/10 * * * *'), false);
    assert.equal(pgCronReadsAlike('0 3 */2 * mon'), false);
    // The in-process scheduler runs them all, where there is no pg_cron.
    assert.equal(isValidSchedule('0 3 L * *'), true);
  });
});

void describe('runsBetween', () => {
  const since = new Date('2026-12-05T00:00:00Z');

  void it('counts the runs after the first time up to the second, up to a bound', () => {
    assert.equal(runsBetween('*/30 * * * *', since, new Date('2026-12-05T01:29:59Z')), 2);
    assert.equal(runsBetween('*/30 * * * *', since, new Date('2026-12-05T01:30:00Z')), 3);
    assert.equal(runsBetween('*/30 * * * *', since, new Date('2026-12-06T00:00:00Z')), 3);
    assert.equal(
      runsBetween('*/30 * * * *', since, new Date('2026-12-06T00:00:00Z'), 'UTC', 10),
      10,
    );
  });

  void it("counts them in pg_cron's time zone where one is given", () => {
    // 03:00 in Santiago is 06:00 UTC in December: one run by 04:00 UTC on the 6th, not two.
    const until = new Date('2026-12-06T04:00:00Z');
    assert.equal(runsBetween('0 3 * * *', since, until), 2);
    assert.equal(runsBetween('0 3 * * *', since, until, 'America/Santiago'), 1);
  });
});
