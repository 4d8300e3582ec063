import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { BREAKER_GAUGE, CircuitBreaker, WorstBreakerGauge } from './circuit-breaker.ts';

const breakerAt = () => {
  let now = 0;
  const changes: string[] = [];
  const breaker = new CircuitBreaker({
    failureThreshold: 5,
    coolDownMs: 30_000,
    now: () => now,
    onChange: (s) => changes.push(s),
  });
  return { breaker, changes, advance: (ms: number) => (now += ms) };
};

void describe('CircuitBreaker', () => {
  void it('opens after 5 consecutive failures and refuses calls during the cool-down', () => {
    const { breaker, changes, advance } = breakerAt();
    for (let i = 0; i < 4; i += 1) {
      breaker.recordFailure();
    }
    assert.equal(breaker.state, 'closed');
    breaker.recordFailure();
    assert.equal(breaker.state, 'open');
    assert.equal(breaker.tryAcquire(), false);
    advance(29_999);
    assert.equal(breaker.tryAcquire(), false);
    assert.equal(breaker.waitMs(), 1);
    assert.deepEqual(changes, ['open']);
  });

  void it('says half-open once the cool-down is over, though no caller takes the probe', async () => {
    const changes: string[] = [];
    const breaker = new CircuitBreaker({
      failureThreshold: 1,
      coolDownMs: 20,
      onChange: (s) => changes.push(s),
    });
    breaker.recordFailure();
    assert.deepEqual(changes, ['open']);
    const deadline = Date.now() + 5_000;
    while (changes.length < 2 && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
    assert.deepEqual(changes, ['open', 'half_open']);
    assert.equal(breaker.tryAcquire(), true, 'the probe is free');
    breaker.recordFailure();
    assert.deepEqual(changes, ['open', 'half_open', 'open'], 'a failed probe opens it again');
  });

  void it('lets exactly one half-open probe through and closes on its success', () => {
    const { breaker, changes, advance } = breakerAt();
    for (let i = 0; i < 5; i += 1) {
      breaker.recordFailure();
    }
    advance(30_000);
    assert.equal(breaker.state, 'half_open');
    assert.equal(breaker.tryAcquire(), true);
    assert.equal(breaker.tryAcquire(), false, 'a second caller waits for the probe');
    breaker.recordSuccess();
    assert.equal(breaker.state, 'closed');
    assert.equal(breaker.tryAcquire(), true);
    assert.deepEqual(changes, ['open', 'half_open', 'closed']);
  });

  void it('admits no one while cooling down or while the probe is out, and takes nothing when asked', () => {
    const { breaker, advance } = breakerAt();
    assert.equal(breaker.admits(), true);
    for (let i = 0; i < 5; i += 1) {
      breaker.recordFailure();
    }
    assert.equal(breaker.admits(), false, 'cooling down');
    advance(30_000);
    assert.equal(breaker.admits(), true, 'the probe is free');
    assert.equal(breaker.admits(), true, 'asking did not take it');
    assert.equal(breaker.tryAcquire(), true);
    assert.equal(breaker.waitMs(), 0);
    assert.equal(breaker.admits(), false, 'another caller holds the probe');
    breaker.releaseProbe();
    assert.equal(breaker.admits(), true);
    assert.equal(breaker.tryAcquire(), true);
    breaker.recordSuccess();
    assert.equal(breaker.admits(), true);
  });

  void it('reopens for another cool-down when the probe fails', () => {
    const { breaker, advance } = breakerAt();
    for (let i = 0; i < 5; i += 1) {
      breaker.recordFailure();
    }
    advance(30_000);
    assert.equal(breaker.tryAcquire(), true);
    breaker.recordFailure();
    assert.equal(breaker.state, 'open');
    advance(10_000);
    assert.equal(breaker.tryAcquire(), false);
  });

  void it('stays half-open when the probe is given back unused, and lets the next caller probe', () => {
    const { breaker, advance } = breakerAt();
    for (let i = 0; i < 5; i += 1) {
      breaker.recordFailure();
    }
    advance(30_000);
    assert.equal(breaker.tryAcquire(), true);
    breaker.releaseProbe();
    assert.equal(breaker.state, 'half_open', 'nothing was learnt about the database');
    assert.equal(breaker.tryAcquire(), true, 'the probe is free again');
    assert.equal(breaker.tryAcquire(), false);
  });

  void it('counts only consecutive failures', () => {
    const { breaker } = breakerAt();
    for (let i = 0; i < 4; i += 1) {
      breaker.recordFailure();
    }
    breaker.recordSuccess();
    for (let i = 0; i < 4; i += 1) {
      breaker.recordFailure();
    }
    assert.equal(breaker.state, 'closed');
  });
});

void describe('WorstBreakerGauge', () => {
  void it('shows the worst state of the breakers it gathers, whichever changed last', () => {
    const shown: number[] = [];
    const worst = new WorstBreakerGauge({ set: (_labels, value) => shown.push(value) });
    const acker = worst.member();
    const link = worst.member();
    const replica = { target: 'replica' };
    // The API's link opens while the acker, with nothing to ask, stays closed.
    link.set(replica, BREAKER_GAUGE.open);
    acker.set(replica, BREAKER_GAUGE.closed);
    assert.equal(shown.at(-1), BREAKER_GAUGE.open);
    link.set(replica, BREAKER_GAUGE.half_open);
    assert.equal(shown.at(-1), BREAKER_GAUGE.half_open);
    acker.set(replica, BREAKER_GAUGE.open);
    link.set(replica, BREAKER_GAUGE.closed);
    assert.equal(shown.at(-1), BREAKER_GAUGE.open);
    acker.set(replica, BREAKER_GAUGE.closed);
    assert.equal(shown.at(-1), BREAKER_GAUGE.closed);
  });
});
