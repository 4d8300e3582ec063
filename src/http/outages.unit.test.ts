import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { EventLog } from '../log/event-log.ts';
import { PartWayError } from '../reason.ts';
import { ApiError } from './errors.ts';
import { mainCall } from './outages.ts';

/** All `mainCall` asks of the log: whether its connection is up. */
const logUp = { eventLog: { redis: { status: 'ready' } } as unknown as EventLog };

const refused = () =>
  Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:5432'), { code: 'ECONNREFUSED' });

void describe('mainCall', () => {
  void it('answers main_unavailable for the main database away', async () => {
    const answer = await mainCall(
      logUp,
      'tell which events it lacks',
      Promise.reject(refused()),
    ).catch((err: unknown) => err);
    assert.ok(answer instanceof ApiError);
    assert.equal(answer.code, 'main_unavailable');
    assert.equal(answer.message, 'the main database cannot tell which events it lacks now');
  });

  void it('says what was done before the main database went away, part-way', async () => {
    const partWay = new PartWayError('the replay stopped after giving back 3 event(s)', refused());
    const answer = await mainCall(
      logUp,
      'tell which events it lacks',
      Promise.reject(partWay),
    ).catch((err: unknown) => err);
    assert.ok(answer instanceof ApiError);
    assert.equal(answer.code, 'main_unavailable');
    assert.equal(answer.retryAfterSeconds, 30);
    assert.equal(
      answer.message,
      'the main database cannot tell which events it lacks now (the replay stopped after giving back 3 event(s))',
    );
  });

  void it('leaves an error of ours met part-way to the app, with what was done', async () => {
    const partWay = new PartWayError('done 1', new TypeError('x is undefined'));
    const answer = await mainCall(logUp, 'refresh', Promise.reject(partWay)).catch(
      (err: unknown) => err,
    );
    assert.equal(answer, partWay);
    assert.equal(partWay.message, 'x is undefined (done 1)');
  });

  void it('leaves the log away met part-way to the app, for its log_unavailable answer with what was done', async () => {
    const partWay = new PartWayError('done 1', new Error('Command timed out'));
    const answer = await mainCall(logUp, 'refresh', Promise.reject(partWay)).catch(
      (err: unknown) => err,
    );
    assert.equal(answer, partWay);
  });
});
