import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { durabilityVerdict } from './durability.ts';

void describe('durabilityVerdict', () => {
  void it('accepts the append-only file fsynced as configured', () => {
    assert.equal(
      durabilityVerdict({ appendonly: 'yes', appendfsync: 'always' }, 'always'),
      undefined,
    );
    assert.equal(
      durabilityVerdict({ appendonly: 'yes', appendfsync: 'everysec' }, 'everysec'),
      undefined,
    );
  });

  void it('refuses a Redis without the append-only file', () => {
    const verdict = durabilityVerdict({ appendonly: 'no', appendfsync: 'always' }, 'always');
    assert.ok(verdict && 'refuse' in verdict);
    assert.match(verdict.refuse, /without appendonly/);
  });

  void it('refuses fsync left to the kernel, whatever was configured', () => {
    for (const expected of ['always', 'everysec'] as const) {
      const verdict = durabilityVerdict({ appendonly: 'yes', appendfsync: 'no' }, expected);
      assert.ok(verdict && 'refuse' in verdict, expected);
      assert.match(verdict.refuse, new RegExp(`appendfsync no: .*set appendfsync ${expected}`));
    }
  });

  void it('warns, not refuses, when the server does not say its fsync policy', () => {
    const verdict = durabilityVerdict({ appendonly: 'yes', appendfsync: undefined }, 'always');
    assert.ok(verdict && 'warn' in verdict);
    assert.match(verdict.warn, /cannot verify/);
  });

  void it('warns when the fsync policy differs from OUTPOST_APPENDFSYNC', () => {
    const verdict = durabilityVerdict({ appendonly: 'yes', appendfsync: 'everysec' }, 'always');
    assert.ok(verdict && 'warn' in verdict);
    assert.match(verdict.warn, /everysec.*always/);
  });
});
