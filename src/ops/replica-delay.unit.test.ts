import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { ReplayState } from '../db/queries/replica.ts';
import { replicaDelayReason } from './replica-delay.ts';

const streaming: ReplayState = {
  pause: 'not paused',
  receiveLsn: '0/3000100',
  receiver: 'streaming',
};
const replayedTo = (lsn: string, lagSeconds = 0) => ({ lsn, lagSeconds });

void describe('why the replica is behind', () => {
  void it('names nothing while the replica streams and replays what it receives', () => {
    assert.equal(replicaDelayReason(streaming, replayedTo('0/3000100')), undefined);
    // Received a moment ago, not replayed yet: on its way, not held back.
    assert.equal(replicaDelayReason(streaming, replayedTo('0/3000000', 0.2)), undefined);
  });

  void it('names a paused replay and how to resume it, before anything else', () => {
    for (const pause of ['paused', 'pause requested']) {
      const reason = replicaDelayReason(
        { ...streaming, pause, receiver: 'stopped' },
        replayedTo('0/3000000', 60),
      );
      assert.match(reason ?? '', new RegExp(`replay is ${pause} on the replica`));
      assert.match(reason ?? '', /pg_wal_replay_resume\(\)/);
    }
  });

  void it('names a WAL receiver that does not run or does not stream', () => {
    assert.match(
      replicaDelayReason({ ...streaming, receiver: 'stopped' }, replayedTo('0/3000100')) ?? '',
      /WAL receiver is not running/,
    );
    assert.match(
      replicaDelayReason({ ...streaming, receiver: 'waiting' }, replayedTo('0/3000100')) ?? '',
      /WAL receiver is waiting, not streaming/,
    );
  });

  void it('names received WAL left unreplayed for seconds as held back', () => {
    const reason = replicaDelayReason(streaming, replayedTo('0/3000000', 12.4));
    assert.match(
      reason ?? '',
      /received WAL up to 0\/3000100 but has replayed nothing past 0\/3000000 for 12 s/,
    );
  });

  void it('says nothing of the receiver when this role may not see it', () => {
    assert.equal(
      replicaDelayReason({ ...streaming, receiver: null }, replayedTo('0/3000100')),
      undefined,
    );
  });
});
