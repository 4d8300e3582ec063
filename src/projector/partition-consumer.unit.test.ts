import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { consumersBesides } from './partition-consumer.ts';

void describe('consumersBesides', () => {
  void it('names the other consumers with entries pending in an XPENDING summary', () => {
    const summary = [
      5,
      '1-0',
      '9-0',
      [
        ['heir', '3'],
        ['former', '2'],
      ],
    ];
    assert.deepEqual(consumersBesides(summary, 'heir'), ['former']);
    assert.deepEqual(consumersBesides(summary, 'someone'), ['heir', 'former']);
  });

  void it('names none when nothing is pending or only this consumer holds entries', () => {
    assert.deepEqual(consumersBesides([0, null, null, null], 'heir'), []);
    assert.deepEqual(consumersBesides([3, '1-0', '3-0', [['heir', '3']]], 'heir'), []);
    assert.deepEqual(consumersBesides(undefined, 'heir'), []);
  });
});
