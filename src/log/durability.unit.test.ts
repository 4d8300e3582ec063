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

  void it('refuses an fsync a second late where every write was to be fsynced', () => {
    const verdict = durabilityVerdict({ appendonly: 'yes', appendfsync: 'everysec' }, 'always');
    assert.ok(verdict && 'refuse' in verdict);
    assert.match(verdict.refuse, /everysec.*OUTPOST_APPENDFSYNC=everysec/);
  });

  void it('refuses a Redis that skips the fsync while a rewrite or a save runs', () => {
    for (const appendfsync of ['always', 'everysec']) {
      const verdict = durabilityVerdict(
        { appendonly: 'yes', appendfsync, noAppendfsyncOnRewrite: 'yes' },
        'everysec',
      );
      assert.ok(verdict && 'refuse' in verdict, appendfsync);
      assert.match(
        verdict.refuse,
        /no-appendfsync-on-rewrite yes: .*set no-appendfsync-on-rewrite no/,
      );
    }
    assert.equal(
      durabilityVerdict(
        { appendonly: 'yes', appendfsync: 'always', noAppendfsyncOnRewrite: 'no' },
        'always',
      ),
      undefined,
    );
  });

  void it('accepts an fsync stronger than configured', () => {
    assert.equal(
      durabilityVerdict({ appendonly: 'yes', appendfsync: 'always' }, 'everysec'),
      undefined,
    );
  });

  void it('refuses any eviction policy but noeviction under a memory limit', () => {
    for (const policy of ['allkeys-lru', 'volatile-ttl', 'allkeys-random', 'volatile-lfu']) {
      const verdict = durabilityVerdict(
        { appendonly: 'yes', appendfsync: 'always', maxmemoryPolicy: policy, maxmemory: '1000000' },
        'always',
      );
      assert.ok(verdict && 'refuse' in verdict, policy);
      assert.match(verdict.refuse, new RegExp(`${policy}.*noeviction`), policy);
    }
    assert.equal(
      durabilityVerdict(
        { appendonly: 'yes', appendfsync: 'always', maxmemoryPolicy: 'noeviction', maxmemory: '1' },
        'always',
      ),
      undefined,
    );
    assert.equal(
      durabilityVerdict(
        {
          appendonly: 'yes',
          appendfsync: 'always',
          maxmemoryPolicy: 'allkeys-lru',
          maxmemory: '0',
        },
        'always',
      ),
      undefined,
      'without a limit nothing is evicted',
    );
  });
});
