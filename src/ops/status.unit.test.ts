import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { LeaseHolding } from '../db/queries/leases.ts';
import { REBUILD_OWNER } from './rebuild.ts';
import { unheldWaiting } from './status.ts';

void describe('unheldWaiting: /health of a process without a projector', () => {
  const config = { claimIdleMs: 2_000, partitions: 2 };
  const nowMs = 1_000_000;
  const waitingFor = (ms: number) => ({
    nowMs,
    partitions: [
      {
        partition: 0,
        delivered: 0,
        undelivered: 3,
        awaitingReplica: 0,
        deadLetters: 0,
        oldestAcceptedMs: nowMs - ms,
      },
      {
        partition: 1,
        delivered: 0,
        undelivered: 0,
        awaitingReplica: 0,
        deadLetters: 0,
        oldestAcceptedMs: undefined,
      },
    ],
  });
  const heldBy = (owner: string): LeaseHolding[] => [
    { site: 'here', partition: 0, owner, live: true, expiredSeconds: null },
  ];

  void it('says nothing of events younger than a lease, which a handover may be about to take', () => {
    assert.equal(unheldWaiting(waitingFor(1_000), { answer: [] }, config), undefined);
  });

  void it('names the partitions nobody holds once their events waited past a lease', () => {
    assert.match(
      unheldWaiting(waitingFor(5_000), { answer: [] }, config) ?? '',
      /^no projector holds partitions 0-1: nothing applies their events/,
    );
  });

  void it('is quiet while a projector holds the partitions whose events wait', () => {
    assert.equal(unheldWaiting(waitingFor(5_000), { answer: heldBy('a:1') }, config), undefined);
  });

  void it('counts a rebuild holding them as nothing applying', () => {
    assert.match(
      unheldWaiting(waitingFor(5_000), { answer: heldBy(REBUILD_OWNER) }, config) ?? '',
      /0 by rebuild-projections/,
    );
  });

  void it('says the leases could not be read rather than all well', () => {
    assert.equal(
      unheldWaiting(waitingFor(5_000), { failure: 'timed out' }, config),
      'events have waited over 2 s, and the projector leases cannot be read: timed out',
    );
  });
});
