import { CronExpressionParser } from 'cron-parser';

/**
 * Next run of a 5-field cron schedule after `from`; validated at start-up, so it parses. In UTC
 * unless `timeZone` names another (pg_cron's `cron.timezone`); one this parser does not know is
 * read as UTC.
 */
export const nextRun = (schedule: string, from: Date, timeZone = 'UTC'): Date => {
  try {
    return CronExpressionParser.parse(schedule, { currentDate: from, tz: timeZone })
      .next()
      .toDate();
  } catch (err) {
    if (timeZone === 'UTC') {
      throw err;
    }
    return nextRun(schedule, from);
  }
};

export const isValidSchedule = (schedule: string): boolean => {
  try {
    return (
      schedule.trim().split(/\s+/).length === 5 && nextRun(schedule, new Date()) instanceof Date
    );
  } catch {
    return false;
  }
};

/**
 * The longest time between two runs of `schedule` among its next `runs` (a schedule of weekdays
 * leaves the weekend): how old a snapshot may rightly be before one is late.
 */
export const longestGapSeconds = (schedule: string, from: Date, runs = 32): number => {
  let previous = nextRun(schedule, from);
  let longest = 0;
  for (let run = 0; run < runs; run += 1) {
    const next = nextRun(schedule, previous);
    longest = Math.max(longest, next.getTime() - previous.getTime());
    previous = next;
  }
  return longest / 1000;
};
