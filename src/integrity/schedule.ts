import { CronExpressionParser } from 'cron-parser';

/** The runs of a cron schedule after `from`, in `timeZone`, one by one. */
const runsAfter = (schedule: string, from: Date, timeZone: string) =>
  CronExpressionParser.parse(schedule, { currentDate: from, tz: timeZone });

/**
 * Next run of a 5-field cron schedule after `from`; validated at start-up, so it parses. In UTC
 * unless `timeZone` names another (pg_cron's `cron.timezone`); one this parser does not know is
 * read as UTC.
 */
export const nextRun = (schedule: string, from: Date, timeZone = 'UTC'): Date => {
  try {
    return runsAfter(schedule, from, timeZone).next().toDate();
  } catch (err) {
    if (timeZone === 'UTC') {
      throw err;
    }
    return nextRun(schedule, from);
  }
};

/**
 * How many runs `schedule` had after `since` up to `until`, counted up to `atMost`, in `timeZone`
 * (pg_cron's `cron.timezone` where pg_cron runs it).
 */
export const runsBetween = (
  schedule: string,
  since: Date,
  until: Date,
  timeZone = 'UTC',
  atMost = 3,
): number => {
  let at = since;
  let runs = 0;
  while (runs < atMost) {
    at = nextRun(schedule, at, timeZone);
    if (at.getTime() > until.getTime()) {
      break;
    }
    runs += 1;
  }
  return runs;
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
 * One field as pg_cron reads it (vixie cron's grammar): a list of `*` or a number, or a range of
 * two, a step only after `*` or a range; names (`jan`, `mon`) only for the month and the weekday.
 */
const pgCronField = (names: boolean): RegExp => {
  const value = names ? String.raw`(?:\d+|[a-z]{3})` : String.raw`\d+`;
  const item = String.raw`(?:\*(?:/\d+)?|${value}-${value}(?:/\d+)?|${value})`;
  return new RegExp(`^${item}(?:,${item})*$`, 'i');
};
const PG_CRON_FIELDS = [false, false, false, true, true].map(pgCronField);

/**
 * Whether pg_cron reads `schedule` as this process's scheduler (cron-parser) does. cron-parser
 * takes more (`L`, `#`, `?`, `5/10`), which pg_cron refuses or reads otherwise (`5#2` as
 * `5`); and where one of day-of-month and day-of-week is restricted and the other is a step of
 * `*`, pg_cron runs on days matching both, cron-parser on days matching either. Such a schedule
 * runs in-process where there is no pg_cron, and is never given to pg_cron's job: the alert's
 * gap and the watchdog's due times would be another schedule's.
 */
export const pgCronReadsAlike = (schedule: string): boolean => {
  const fields = schedule.trim().split(/\s+/);
  const [, , dayOfMonth = '', , dayOfWeek = ''] = fields;
  const starStep = (field: string) => field.startsWith('*') && field !== '*';
  return (
    isValidSchedule(schedule) &&
    fields.every((field, i) => PG_CRON_FIELDS[i]?.test(field)) &&
    !(starStep(dayOfMonth) && dayOfWeek !== '*') &&
    !(starStep(dayOfWeek) && dayOfMonth !== '*')
  );
};

/**
 * The longest time between two runs of `schedule`: over the eight days after `from` (a schedule of
 * working hours leaves the night, one of weekdays the weekend; a week is where the calendar
 * repeats), and over at least its next 32 runs (a monthly schedule's first run may be weeks
 * away): how old a snapshot may rightly be before one is late. At most `maxRuns` runs are looked
 * at, so a schedule of every few seconds costs a start-up little.
 */
export const longestGapSeconds = (schedule: string, from: Date, maxRuns = 20_000): number => {
  const runs = runsAfter(schedule, from, 'UTC');
  const until = from.getTime() + 8 * 86_400_000;
  let previous = runs.next().getTime();
  let longest = 0;
  for (let run = 0; run < maxRuns && (run < 32 || previous < until); run += 1) {
    const next = runs.next().getTime();
    longest = Math.max(longest, next - previous);
    previous = next;
  }
  return longest / 1000;
};
