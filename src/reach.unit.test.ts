import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ReplyError } from 'ioredis';
import { cannotReach } from './reach.ts';

void describe('cannotReach', () => {
  void it('asks whether a server runs only when it did not answer', () => {
    const refused = Object.assign(new Error('connect ECONNREFUSED 10.0.0.5:6379'), {
      code: 'ECONNREFUSED',
    });
    assert.equal(
      cannotReach('Redis', 'redis://10.0.0.5:6379', refused).message,
      'cannot reach Redis at 10.0.0.5:6379 (connect ECONNREFUSED 10.0.0.5:6379); is it running, and is this the address the service uses (its env file)?',
    );
    // Redis restarted from its append-only file runs, and says it cannot serve yet.
    const loading = new ReplyError('LOADING Redis is loading the dataset in memory');
    assert.equal(
      cannotReach('Redis', 'redis://10.0.0.5:6379', loading).message,
      'Redis at 10.0.0.5:6379 answered and refused: LOADING Redis is loading the dataset in memory',
    );
  });
});
