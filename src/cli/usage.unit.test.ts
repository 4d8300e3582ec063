import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { isCommand, USAGE, usageOf } from './usage.ts';

void describe('usage', () => {
  void it('lists every command of the contract', () => {
    for (const command of [
      'stack',
      'migrate',
      'serve',
      'pending',
      'dead',
      'replay',
      'rebuild-projections',
      'integrity',
    ]) {
      assert.match(USAGE, new RegExp(`^  ${command}\\b`, 'm'), command);
    }
  });

  void it('gives each command its own help, continuation lines included', () => {
    const help = usageOf('replay');
    assert.match(help, /^usage: outpost replay/);
    assert.match(help, /--from ID\|TIME/);
    assert.match(help, /give the main database/);
    assert.doesNotMatch(help, /rebuild-projections/);
    assert.equal(usageOf('no-such-command'), USAGE);
    assert.equal(isCommand('no-such-command'), false);
    assert.equal(isCommand('replay'), true);
    assert.equal(isCommand('rebuild-projections'), true);
  });
});
