import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { deadLettersLine } from './incident.ts';

void describe('deadLettersLine', () => {
  void it('counts the letters and the aggregates held behind them, and where to look', () => {
    assert.equal(deadLettersLine(1, 0), '1 dead letter: outpost dead list');
    assert.equal(
      deadLettersLine(3, 1),
      '3 dead letters; 1 aggregate held behind them, whose later events follow them into the dead letters: outpost dead list',
    );
  });
});
