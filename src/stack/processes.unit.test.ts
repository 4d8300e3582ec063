import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { majorVersionOf } from './processes.ts';

void describe('majorVersionOf', () => {
  void it('reads the major version PostgreSQL and Redis servers print for --version', () => {
    assert.equal(majorVersionOf('postgres (PostgreSQL) 15.19 (Debian 15.19-0+deb12u1)\n'), 15);
    assert.equal(majorVersionOf('postgres (PostgreSQL) 9.6.24\n'), 9);
    assert.equal(majorVersionOf('postgres (PostgreSQL) 17.2\n'), 17);
    assert.equal(majorVersionOf('postgres (PostgreSQL) 18beta1\n'), 18);
    assert.equal(
      majorVersionOf('Redis server v=7.0.15 sha=00000000:0 malloc=jemalloc-5.3.0 bits=64\n'),
      7,
    );
    assert.equal(majorVersionOf('Redis server v=6.2.14 sha=00000000:0 malloc=libc bits=64\n'), 6);
  });

  void it('says it cannot tell rather than guess from other numbers', () => {
    assert.equal(majorVersionOf(''), undefined);
    assert.equal(majorVersionOf('KeyDB server v=x'), undefined);
    assert.equal(majorVersionOf('built with jemalloc-5.3.0 bits=64'), undefined);
  });
});
