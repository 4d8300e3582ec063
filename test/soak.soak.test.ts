import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import { randomInt } from 'node:crypto';
import { after, describe, it } from 'node:test';
import { setTimeout as backOff } from 'node:timers/promises';
import { PROBLEMS } from '../src/integrity/problems.ts';
import { crashMain, crashReplica, killRedis, stackUp } from '../src/stack/stack.ts';
import { audit, waitForAllAcknowledged } from './harness/audit.ts';
import { runCli } from './harness/cli.ts';
import { Harness, holdFault, type SpawnedService } from './harness/harness.ts';

/**
 * The soak: writes at a steady rate, and units taken through their whole life, while faults of
 * every kind the fault tests inject one at a time follow each other at random for SOAK_MINUTES.
 * Then every write answered 201 or 202 must be applied exactly once, in order, with the
 * projections equal to the fold of the events and no integrity anomaly.
 * `SOAK_MINUTES=30 npm run soak`; not part of `npm test`.
 */
const MINUTES = Number(process.env.SOAK_MINUTES ?? 10);
const RATE = Number(process.env.SOAK_RATE ?? 60);
/** A unit taken through start, change and finish begins this often. */
const LIFECYCLE_EVERY_MS = 250;
/** How long a client keeps retrying one write (503s and refused connections) before it gives up. */
const WRITE_DEADLINE_MS = 180_000;

const exited = (child: ChildProcess) =>
  child.exitCode !== null || child.signalCode !== null
    ? Promise.resolve()
    : new Promise<void>((resolve) => child.once('exit', () => resolve()));

type Accepted = { eventIds: Set<string>; failures: string[]; abandoned?: boolean };

/** One write as an instrument sends it: its own Idempotency-Key, retried until answered. */
const writeUntilAnswered = async (
  h: Harness,
  method: 'POST' | 'PATCH',
  path: string,
  body: object,
  into: Accepted,
): Promise<{ id: string } | undefined> => {
  const key = `soak-${method}-${path}-${Math.random().toString(36).slice(2)}`;
  const deadline = Date.now() + WRITE_DEADLINE_MS;
  for (;;) {
    let retryInMs = 100;
    try {
      const answer = await h.request(method, path, body, { 'Idempotency-Key': key });
      if (answer.status === 201 || answer.status === 202) {
        into.eventIds.add(answer.body.event_id);
        return answer.body;
      }
      if (answer.status !== 503 || Date.now() > deadline) {
        into.failures.push(`${method} ${path}: ${answer.status} ${answer.text}`);
        return undefined;
      }
      retryInMs = Math.min(Number(answer.headers.get('retry-after')) || 0.1, 5) * 1000;
    } catch (err) {
      if (Date.now() > deadline) {
        into.failures.push(`${method} ${path}: ${String(err)}`);
        return undefined;
      }
    }
    if (into.abandoned) {
      return undefined;
    }
    await backOff(retryInMs);
  }
};

/** Units each started, changed twice and finished, one beginning every LIFECYCLE_EVERY_MS. */
const unitLifecycles = (h: Harness) => {
  const accepted: Accepted = { eventIds: new Set(), failures: [] };
  const finished = new Map<string, string>();
  const running = new Set<Promise<void>>();
  let n = 0;
  const lifecycle = async (obsUnitId: string) => {
    const unit = await writeUntilAnswered(
      h,
      'POST',
      '/executed_obs_units/start',
      { obs_unit_id: obsUnitId, instrument: 'soak' },
      accepted,
    );
    if (!unit) {
      return;
    }
    for (const notes of ['first', `last of ${obsUnitId}`]) {
      const patched = await writeUntilAnswered(
        h,
        'PATCH',
        `/executed_obs_units/${unit.id}`,
        { notes },
        accepted,
      );
      if (!patched) {
        return;
      }
    }
    const done = await writeUntilAnswered(
      h,
      'POST',
      `/executed_obs_units/${unit.id}/finish`,
      { status: 'success' },
      accepted,
    );
    if (done) {
      finished.set(unit.id, `last of ${obsUnitId}`);
    }
  };
  const timer = setInterval(() => {
    n += 1;
    const one = lifecycle(`soak-unit-${n}`).finally(() => running.delete(one));
    running.add(one);
  }, LIFECYCLE_EVERY_MS);
  return {
    stop: async () => {
      clearInterval(timer);
      await Promise.all([...running]);
      return { accepted, finished };
    },
    /** Stops starting units and retrying writes at once: the soak failed with them running. */
    abandon: () => {
      accepted.abandoned = true;
      clearInterval(timer);
    },
  };
};

type Fault = { name: string; inject: () => Promise<void> };

void describe('soak: writes under faults that follow each other at random', () => {
  let h: Harness | undefined;
  let lifecycles: ReturnType<typeof unitLifecycles> | undefined;
  const projectors: SpawnedService[] = [];
  after(async () => {
    lifecycles?.abandon();
    if (!h) {
      return;
    }
    for (const { child } of projectors) {
      child.kill('SIGCONT');
    }
    try {
      // A fault left in place by a failure is undone, so the runner can stop the stack cleanly.
      await stackUp(h.stackOptions());
    } finally {
      await h?.close();
    }
  });

  void it(`applies every answered write exactly once, in order, through ${MINUTES} min of faults`, async (t) => {
    h = await Harness.start({ role: 'api' });
    const site = h;
    const spawnProjector = async (name: string) => {
      const projector = await site.spawnServe('projector', { OUTPOST_CONSUMER: name });
      projectors.push(projector);
      return projector;
    };
    await spawnProjector('soak-0');
    await spawnProjector('soak-1');
    let spawned = 2;
    /** Takes a projector out of the running ones, to stop or replace it. */
    const anyProjector = () => {
      const running = projectors.filter((p) => p.child.exitCode === null && !p.child.signalCode);
      return running[randomInt(running.length)] as SpawnedService;
    };
    const replace = async (projector: SpawnedService, signal: NodeJS.Signals) => {
      projector.child.kill(signal);
      await exited(projector.child);
      spawned += 1;
      await spawnProjector(`soak-${spawned}`);
    };
    const stackDir = site.stack.dir;
    const faults: Fault[] = [
      { name: 'projector killed -9', inject: () => replace(anyProjector(), 'SIGKILL') },
      { name: 'projector stopped gracefully', inject: () => replace(anyProjector(), 'SIGTERM') },
      {
        name: 'projector frozen past its lease',
        inject: async () => {
          const { child } = anyProjector();
          child.kill('SIGSTOP');
          await holdFault(site.config.claimIdleMs * 3);
          child.kill('SIGCONT');
        },
      },
      {
        name: 'main database crashed',
        inject: async () => {
          await crashMain(stackDir);
          await holdFault(randomInt(3_000, 15_000));
          await stackUp(site.stackOptions());
        },
      },
      {
        name: 'replica crashed',
        inject: async () => {
          await crashReplica(stackDir);
          await holdFault(randomInt(3_000, 15_000));
          await stackUp(site.stackOptions());
        },
      },
      {
        name: 'Redis killed -9',
        inject: async () => {
          await killRedis(stackDir);
          await holdFault(randomInt(1_000, 5_000));
          await stackUp(site.stackOptions());
        },
      },
    ];

    const load = site.steadyLoad(RATE, 'soak');
    lifecycles = unitLifecycles(site);
    const injected = new Map<string, number>();
    const end = Date.now() + MINUTES * 60_000;
    while (Date.now() < end) {
      // Quiet time between faults: enough for some to land on a backlog, some on a calm site.
      await holdFault(randomInt(5_000, 20_000));
      const fault = faults[randomInt(faults.length)] as Fault;
      const began = Date.now();
      await fault.inject();
      injected.set(fault.name, (injected.get(fault.name) ?? 0) + 1);
      t.diagnostic(
        `${new Date().toISOString()} ${fault.name}, ${Date.now() - began} ms; ${load.accepted()} loaded`,
      );
    }

    const loaded = await load.stop();
    const { accepted, finished } = await lifecycles.stop();
    assert.deepEqual(loaded.failures, [], 'every load write answered');
    assert.deepEqual(accepted.failures, [], 'every lifecycle write answered');
    await waitForAllAcknowledged(site, 600_000);
    await audit(site, new Set([...loaded.accepted, ...accepted.eventIds]));

    const units = await site.mainRows<{ id: string; status: string; notes: string | null }>(
      'SELECT id::text, status, notes FROM executed_obs_units WHERE id = ANY($1)',
      [[...finished.keys()]],
    );
    assert.ok(finished.size > 0, 'units were taken through their lifecycle');
    assert.equal(units.length, finished.size, 'every finished unit is projected');
    for (const unit of units) {
      assert.deepEqual(
        { status: unit.status, notes: unit.notes },
        { status: 'success', notes: finished.get(unit.id) },
        `unit ${unit.id}: its changes applied in the order accepted`,
      );
    }
    const refreshed = await runCli(site, ['integrity', 'refresh', '--json']);
    assert.equal(refreshed.code, 0, refreshed.stderr);
    const { anomalies } = JSON.parse(refreshed.stdout) as { anomalies: Record<string, number> };
    for (const problem of PROBLEMS) {
      assert.equal(anomalies[problem], 0, `integrity: ${problem}`);
    }
    t.diagnostic(
      `faults: ${JSON.stringify(Object.fromEntries(injected))}; writes applied once: ${
        loaded.accepted.size + accepted.eventIds.size
      }; units finished: ${finished.size}`,
    );
    for (const { child } of projectors) {
      child.kill('SIGTERM');
      await exited(child);
    }
  });
});
