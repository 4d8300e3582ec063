/** How often a run of refusals of one kind is logged: its first, then one line per window. */
const REFUSAL_LOG_WINDOW_MS = 10_000;

/**
 * 503s come in floods: every client retrying while Redis is away or full. Each code is logged on
 * its first refusal, then once a window with how many were left out, so the log shows the outage
 * and its length rather than one line per retry (which also cost the service most of its CPU when
 * clients retried ten times a second).
 */
export const refusalLog = (windowMs = REFUSAL_LOG_WINDOW_MS) => {
  const windows = new Map<string, { until: number; left: number }>();
  /** The refusals left out since the last line of this code, or undefined to leave this one out. */
  return (code: string, now = Date.now()): number | undefined => {
    const window = windows.get(code);
    if (window && now < window.until) {
      window.left += 1;
      return undefined;
    }
    windows.set(code, { until: now + windowMs, left: 0 });
    return window?.left ?? 0;
  };
};
