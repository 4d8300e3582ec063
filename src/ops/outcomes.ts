import type pg from 'pg';
import { appliedEventIds } from '../db/queries/apply.ts';
import type { EventLog } from '../log/event-log.ts';
import { pipelineReplies } from '../log/redis.ts';
import { isDatabaseUnreachable } from '../projector/errors.ts';
import { reasonOf } from '../reason.ts';

/** An event put back into the log (replayed, or a dead letter retried), to be followed. */
export type GivenBack = { eventId: string; partition: number };

/** Where a wait for given-back events stands: told every REPORT_EVERY_MS. */
export type OutcomeWaiting = {
  waiting_for: number;
  applied: number;
  failed: number;
  /** Why the main database cannot be asked what applied, while it cannot. */
  main_database_error?: string;
};

export type Outcomes = {
  applied: string[];
  /** Dead-lettered (again): the projector gave up on them. */
  dead: string[];
  /** Neither when the wait ended. */
  open: string[];
  /**
   * Why the main database could not be asked what applied, where it could not when the wait
   * ended: some of the open may be applied by now.
   */
  mainDatabaseError?: string;
};

const REPORT_EVERY_MS = 5_000;

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Waits until each event given back is applied to the main database or dead-lettered, or `waitMs`
 * has passed. A main database away for a while (restarting after a restore, say) is waited out
 * like a slow projector: the events are in the log already and apply once it answers.
 */
export const waitForOutcomes = async (
  deps: { eventLog: EventLog; main: pg.Pool },
  givenBack: readonly GivenBack[],
  waitMs: number,
  onWaiting?: (w: OutcomeWaiting) => void,
): Promise<Outcomes> => {
  const outcomes: Outcomes = { applied: [], dead: [], open: [] };
  let open = [...givenBack];
  const deadline = Date.now() + waitMs;
  // The first report after a while: most waits are over before anyone would look.
  let nextReport = Date.now() + REPORT_EVERY_MS;
  let unreachable: string | undefined;
  while (open.length > 0 && Date.now() < deadline) {
    if (Date.now() >= nextReport) {
      nextReport = Date.now() + REPORT_EVERY_MS;
      onWaiting?.({
        waiting_for: open.length,
        applied: outcomes.applied.length,
        failed: outcomes.dead.length,
        ...(unreachable === undefined ? {} : { main_database_error: unreachable }),
      });
    }
    let applied: Map<string, boolean>;
    try {
      applied = await appliedEventIds(
        deps.main,
        open.map((r) => r.eventId),
      );
    } catch (err) {
      if (!isDatabaseUnreachable(err)) {
        throw err;
      }
      if (unreachable === undefined) {
        nextReport = Date.now();
      }
      unreachable = reasonOf(err);
      await sleep(1_000);
      continue;
    }
    unreachable = undefined;
    const notApplied = open.filter((item) => !applied.has(item.eventId));
    outcomes.applied.push(
      ...open.filter((item) => applied.has(item.eventId)).map((item) => item.eventId),
    );
    const pipeline = deps.eventLog.redis.pipeline();
    for (const item of notApplied) {
      pipeline.hexists(deps.eventLog.keys(item.partition).deadIndex, item.eventId);
    }
    const dead = await pipelineReplies(pipeline);
    outcomes.dead.push(...notApplied.filter((_, i) => dead[i] === 1).map((item) => item.eventId));
    open = notApplied.filter((_, i) => dead[i] !== 1);
    if (open.length > 0) {
      await sleep(200);
    }
  }
  outcomes.open = open.map((item) => item.eventId);
  if (open.length > 0 && unreachable !== undefined) {
    outcomes.mainDatabaseError = unreachable;
  }
  return outcomes;
};
