import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { backlogLine, deadLettersLine } from './incident.ts';

void describe('deadLettersLine', () => {
  void it('counts the letters and the aggregates held behind them, and where to look', () => {
    assert.equal(deadLettersLine(1, 0), '1 dead letter: outpost dead list');
    assert.equal(
      deadLettersLine(3, 1),
      '3 dead letters; 1 aggregate held behind them, whose later events follow them into the dead letters: outpost dead list',
    );
  });
});

void describe('backlogLine', () => {
  const partition = (
    n: number,
    held: { delivered?: number; undelivered?: number; awaitingReplica?: number; at?: number } = {},
  ) => ({
    partition: n,
    delivered: held.delivered ?? 0,
    undelivered: held.undelivered ?? 0,
    awaitingReplica: held.awaitingReplica ?? 0,
    deadLetters: 0,
    oldestAcceptedMs: held.at,
  });
  const nowMs = 1_000_000;

  void it('adds up what the partitions hold, by what it waits for, with the oldest age', () => {
    const buffer = {
      nowMs,
      partitions: [
        partition(0, { delivered: 5, undelivered: 3, awaitingReplica: 2, at: nowMs - 90_000 }),
        partition(1),
        partition(2, { delivered: 1, awaitingReplica: 1, at: nowMs - 4_000 }),
        partition(3, { undelivered: 4, at: nowMs - 30_000 }),
      ],
    };
    assert.equal(
      backlogLine(buffer, false),
      '13 events pending in 3 of 4 partitions, the oldest accepted 90s ago: 10 to be applied (7 not yet read by a projector), 3 applied and waiting for the replica',
    );
    assert.match(
      backlogLine(buffer, true),
      /; the main database cannot be reached from here: none is applied while the projector cannot reach it either$/,
    );
  });

  void it('blames the main database only for what waits to be applied', () => {
    const buffer = {
      nowMs,
      partitions: [partition(0, { delivered: 1, awaitingReplica: 1, at: nowMs - 1_000 })],
    };
    assert.equal(
      backlogLine(buffer, true),
      '1 event pending in 1 of 1 partition, the oldest accepted 1s ago: 0 to be applied (0 not yet read by a projector), 1 applied and waiting for the replica',
    );
  });

  void it('says when nothing is pending', () => {
    assert.equal(
      backlogLine({ nowMs, partitions: [partition(0), partition(1)] }, true),
      'nothing pending: every event accepted is applied and acknowledged',
    );
  });
});
