import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { majorVersionOf, pickPgInstall } from './processes.ts';

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

void describe('pickPgInstall', () => {
  const installs = [
    { dir: '/usr/lib/postgresql/17/bin', major: 17 },
    { dir: '/usr/lib/postgresql/15/bin', major: 15 },
    { dir: '/usr/lib/postgresql/13/bin', major: 13 },
  ];

  void it('runs an existing cluster with its own version, not the newest installed', () => {
    assert.equal(pickPgInstall(installs, 15)?.dir, '/usr/lib/postgresql/15/bin');
  });

  void it('makes a new cluster with the first installation recent enough', () => {
    assert.equal(pickPgInstall(installs, undefined)?.dir, '/usr/lib/postgresql/17/bin');
    assert.equal(pickPgInstall(installs.slice(2), undefined), undefined);
  });

  void it('finds none for a cluster whose version is not installed', () => {
    assert.equal(pickPgInstall(installs, 16), undefined);
  });
});
