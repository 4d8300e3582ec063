import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { PartWayError, reasonOf, restated } from './reason.ts';

void describe('reasonOf', () => {
  void it("gives an error's message, or what its attempts say when it has none", () => {
    assert.equal(reasonOf(new Error('boom')), 'boom');
    // Node's connection to a name with two addresses, both refusing.
    const refused = (address: string) =>
      Object.assign(new Error(`connect ECONNREFUSED ${address}`), { code: 'ECONNREFUSED' });
    const both = Object.assign(new AggregateError([refused('::1:1'), refused('127.0.0.1:1')], ''), {
      code: 'ECONNREFUSED',
    });
    assert.equal(reasonOf(both), 'connect ECONNREFUSED ::1:1; connect ECONNREFUSED 127.0.0.1:1');
    assert.equal(reasonOf(Object.assign(new Error(''), { code: 'ETIMEDOUT' })), 'ETIMEDOUT');
    assert.equal(reasonOf(undefined, 'no answer'), 'no answer');
    assert.equal(reasonOf('plain text'), 'plain text');
  });
});

void describe("reasonOf on the Redis driver's words", () => {
  void it('says what happened to the connection, not which option the driver has', () => {
    assert.equal(
      reasonOf(new Error("Stream isn't writeable and enableOfflineQueue options is false")),
      'no connection to Redis (reconnecting)',
    );
    assert.equal(
      reasonOf(
        new Error(
          'Reached the max retries per request limit (which is 2). Refer to "maxRetriesPerRequest" option for details.',
        ),
      ),
      'no connection to Redis (the command failed on it and on 2 reconnects)',
    );
    assert.equal(reasonOf(new Error('Command timed out')), 'Command timed out');
  });
});

void describe('reasonOf on what is not an Error', () => {
  void it('never throws, even for an object without a prototype', () => {
    assert.equal(reasonOf(Object.create(null)), 'unknown error');
    assert.equal(reasonOf({ message: '', code: '' }, 'fallback'), 'fallback');
  });
});

void describe('restated', () => {
  const outage = async (met: unknown) =>
    new Error(`cannot reach the main database at db:5432 (${reasonOf(met)})`);

  void it('says an error met part-way in other words, keeping what was done before it', async () => {
    const partWay = new PartWayError('gave back 3 events', new Error('Connection terminated'));
    const said = await restated(partWay, outage);
    assert.ok(said instanceof PartWayError);
    assert.equal(
      said.message,
      'cannot reach the main database at db:5432 (Connection terminated) (gave back 3 events)',
    );
  });

  void it('keeps an error met part-way as it is when nothing restates it, and restates any other', async () => {
    const partWay = new PartWayError('gave back 3 events', new TypeError('x'));
    assert.equal(await restated(partWay, (met) => met), partWay);
    const said = await restated(new Error('Connection terminated'), outage);
    assert.equal(
      (said as Error).message,
      'cannot reach the main database at db:5432 (Connection terminated)',
    );
  });
});
