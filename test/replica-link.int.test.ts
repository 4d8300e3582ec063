import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { createPool } from '../src/db/client.ts';
import { REPLICA_AWAY_MS, REPLICA_LOOK_TIMEOUT_MS, ReplicaLink } from '../src/http/replica-link.ts';
import { createLogger } from '../src/observability/logger.ts';
import { BREAKER_GAUGE } from '../src/projector/circuit-breaker.ts';
import { testStack, waitFor } from './harness/harness.ts';
import { BlackholeProxy } from './harness/proxy.ts';
import { withDatabase } from './harness/services.ts';

void describe("the API's link to the read replica", () => {
  void it('gives up a look the replica does not answer in time, and closes at the next look once it answers', async () => {
    const proxy = await BlackholeProxy.start(testStack().replicaPort);
    const url = proxy.reroute(withDatabase(testStack().replicaUrl, 'postgres'));
    // Calls give up quickly, to open the breaker without waiting; looks go through a pool with
    // the service's default query timeout, which is what a look must not wait out.
    const calls = createPool({ url, max: 1, applicationName: 'outpost-test', queryTimeoutMs: 500 });
    const looks = createPool({ url, max: 1, applicationName: 'outpost-test' });
    const states: { state: number; at: number }[] = [];
    const link = new ReplicaLink(
      calls,
      createLogger('silent'),
      { set: (_labels, state) => states.push({ state, at: performance.now() }) },
      looks,
    );
    try {
      // The look's connection is open before replies are lost, as a pool's idle one would be.
      await looks.query('SELECT 1');
      proxy.loseReplies();
      await assert.rejects(
        link.call((replica) => replica.query('SELECT 1')),
        /timeout/i,
      );
      assert.ok(link.away, 'a call that timed out opens the breaker');

      const opened = () => states.filter(({ state }) => state === BREAKER_GAUGE.open);
      await waitFor(
        () => opened().length >= 2,
        'the first look to give up',
        REPLICA_AWAY_MS + 15_000,
      );
      const lookStarted = states.findLast(
        ({ state, at }) => state === BREAKER_GAUGE.half_open && at < (opened()[1]?.at ?? 0),
      );
      assert.ok(lookStarted, `a half-open look before it opened again: ${JSON.stringify(states)}`);
      const lookMs = (opened()[1]?.at ?? 0) - lookStarted.at;
      assert.ok(
        lookMs < REPLICA_LOOK_TIMEOUT_MS + 1_000,
        `the look gave up after its own ${REPLICA_LOOK_TIMEOUT_MS} ms, not the pool's query timeout (${Math.round(lookMs)} ms)`,
      );

      proxy.answerAgain();
      await waitFor(
        () => !link.away,
        'the next look to close the breaker',
        REPLICA_AWAY_MS + REPLICA_LOOK_TIMEOUT_MS + 5_000,
      );
      assert.equal(states.at(-1)?.state, BREAKER_GAUGE.closed);
      assert.deepEqual((await link.call((replica) => replica.query('SELECT 1 AS one'))).rows, [
        { one: 1 },
      ]);
    } finally {
      link.stop();
      await Promise.all([calls.end(), looks.end()]);
      await proxy.close();
    }
  });
});
