import { CronExpressionParser } from 'cron-parser';

/** Next run of a 5-field cron schedule after `from`; validated at start-up, so it parses. */
export const nextRun = (schedule: string, from: Date): Date =>
  CronExpressionParser.parse(schedule, { currentDate: from, tz: 'UTC' }).next().toDate();

export const isValidSchedule = (schedule: string): boolean => {
  try {
    return (
      schedule.trim().split(/\s+/).length === 5 && nextRun(schedule, new Date()) instanceof Date
    );
  } catch {
    return false;
  }
};
