import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { authorize, bearerToken, requiredScope } from '../http/auth.ts';
import { ApiError } from '../http/errors.ts';
import {
  createToken,
  parseTokenEntries,
  sha256Hex,
  TokenFileError,
  TokenSet,
} from './api-tokens.ts';

void describe('API tokens', () => {
  void it('creates a random token whose entry holds only its digest', () => {
    const { token, entry } = createToken('cam-1', ['write', 'read', 'write']);
    assert.match(token, /^opt_[\w-]{43}$/);
    assert.deepEqual(entry, { name: 'cam-1', sha256: sha256Hex(token), scopes: ['write', 'read'] });
    assert.notEqual(createToken('cam-1', ['read']).token, token);
  });

  void it('finds the grant of a presented token and nothing for an unknown one', () => {
    const a = createToken('a', ['read']);
    const b = createToken('b', ['write', 'admin']);
    const set = new TokenSet([a.entry, b.entry]);
    assert.equal(set.lookup(a.token)?.name, 'a');
    assert.deepEqual([...(set.lookup(b.token)?.scopes ?? [])], ['write', 'admin']);
    assert.equal(set.lookup(`${a.token}x`), undefined);
    assert.equal(set.hasScope('admin'), true);
    assert.equal(new TokenSet([a.entry]).hasScope('admin'), false);
  });

  void it('refuses entries with a clear message naming the field', () => {
    const entry = { name: 'x', sha256: 'a'.repeat(64), scopes: ['read'] };
    assert.deepEqual(parseTokenEntries(JSON.stringify([entry]))[0]?.name, 'x');
    const cases: [unknown, RegExp][] = [
      [[{ ...entry, sha256: 'abc' }], /0\.sha256/],
      [[{ ...entry, scopes: ['root'] }], /0\.scopes\.0/],
      [[{ ...entry, scopes: [] }], /0\.scopes/],
      [[{ ...entry, token: 'plain' }], /token/],
      [[entry, entry], /duplicate name x/],
      [[entry, { ...entry, name: 'y', sha256: 'A'.repeat(64) }], /1\.sha256.*the same token as x/],
      [{ name: 'x' }, /array/],
    ];
    for (const [value, message] of cases) {
      assert.throws(() => parseTokenEntries(JSON.stringify(value)), message);
    }
    assert.throws(() => parseTokenEntries('[{'), TokenFileError);
  });

  void it('maps each endpoint class to its scope', () => {
    assert.equal(requiredScope('POST', '/executed_obs_units/start'), 'write');
    assert.equal(requiredScope('PATCH', '/executed_obs_units/x'), 'write');
    assert.equal(requiredScope('GET', '/executed_obs_units/x'), 'read');
    assert.equal(requiredScope('GET', '/events/live'), 'read');
    assert.equal(requiredScope('GET', '/admin/pending'), undefined);
    assert.equal(requiredScope('GET', '/health'), undefined);
    assert.equal(requiredScope('GET', '/metrics'), undefined);
  });

  void it('lets everything through without tokens, and answers 401 or 403 with them', () => {
    const reader = createToken('reader', ['read']);
    const set = new TokenSet([reader.entry]);
    assert.equal(authorize(undefined, undefined, 'write'), undefined);
    assert.equal(authorize(set, reader.token, 'read')?.name, 'reader');
    const status = (token: string | undefined) => {
      try {
        authorize(set, token, 'write');
        return 200;
      } catch (err) {
        assert.ok(err instanceof ApiError);
        assert.ok(!err.message.includes(reader.token), 'the token never appears in a message');
        return err.status;
      }
    };
    assert.equal(status(undefined), 401);
    assert.equal(status('not-a-token'), 401);
    assert.equal(status(reader.token), 403);
    // An empty list is "configured, nothing valid": it must not open the API.
    assert.throws(() => authorize(new TokenSet([]), undefined, 'read'), /Bearer/);
  });

  void it('reads the bearer token of an Authorization header', () => {
    assert.equal(bearerToken('Bearer abc'), 'abc');
    assert.equal(bearerToken('bearer  abc '), 'abc');
    assert.equal(bearerToken('abc'), undefined);
    assert.equal(bearerToken(undefined), undefined);
  });
});
