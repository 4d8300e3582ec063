/** How far back the projector's figures in /health and /buffer-stats look. */
export const RECENT_WINDOW_MS = 60_000;

type Outcome = { at: number; applied: number; ms: number; failed: boolean };

export type RecentFigures = {
  /** Events applied per second over the window (or since start, if that is shorter). */
  rate: number;
  /** Mean duration of the batches written in the window; 0 without one. */
  averageBatchMs: number;
  /** Share of the window's batch attempts that succeeded, 0-1; 1 without any attempt. */
  successRate: number;
};

/**
 * The last minute of batch outcomes. Figures over the process's lifetime said little at 3 a.m.:
 * a day of good batches kept the success rate near 1 through an outage, and a rate divided by
 * the time since the window's first batch read a single batch after an idle spell as a flood.
 */
export class RecentBatches {
  readonly #outcomes: Outcome[] = [];

  constructor(private readonly startedAt: number) {}

  written(at: number, applied: number, ms: number): void {
    this.#remember({ at, applied, ms, failed: false });
  }

  failed(at: number): void {
    this.#remember({ at, applied: 0, ms: 0, failed: true });
  }

  figures(now: number): RecentFigures {
    const since = now - RECENT_WINDOW_MS;
    let applied = 0;
    let written = 0;
    let writtenMs = 0;
    let failed = 0;
    for (const outcome of this.#outcomes) {
      if (outcome.at < since) {
        continue;
      }
      if (outcome.failed) {
        failed += 1;
      } else {
        applied += outcome.applied;
        written += 1;
        writtenMs += outcome.ms;
      }
    }
    const windowMs = Math.max(1000, Math.min(RECENT_WINDOW_MS, now - this.startedAt));
    return {
      rate: applied / (windowMs / 1000),
      averageBatchMs: written === 0 ? 0 : writtenMs / written,
      successRate: written + failed === 0 ? 1 : written / (written + failed),
    };
  }

  #remember(outcome: Outcome) {
    this.#outcomes.push(outcome);
    while ((this.#outcomes[0]?.at ?? outcome.at) < outcome.at - RECENT_WINDOW_MS) {
      this.#outcomes.shift();
    }
  }
}
