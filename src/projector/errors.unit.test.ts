import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { FoldError } from '../domain/fold.ts';
import {
  classifyFailure,
  isDatabaseAnswer,
  isDatabaseFailure,
  isDatabaseUnreachable,
  isLinkTimeout,
  isPoolWaitTimeout,
  isStatementTimeout,
} from './errors.ts';

const withCode = (code: string, message = 'x') => Object.assign(new Error(message), { code });

void describe('classifyFailure', () => {
  void it('treats an unreachable or overloaded database as transient', () => {
    for (const code of [
      'ECONNREFUSED',
      'ECONNRESET',
      'ETIMEDOUT',
      '08006',
      '57P01',
      '53300',
      '40001',
      '40P01',
      '55P03',
    ]) {
      assert.equal(classifyFailure(withCode(code)), 'transient', code);
    }
    assert.equal(classifyFailure(new Error('Connection terminated unexpectedly')), 'transient');
    assert.equal(classifyFailure(new Error('Query read timeout')), 'transient');
  });

  void it('does not blame the event for a database being restored, not yet migrated, or locked away', () => {
    // No such database, table, function or column; a password changed or pg_hba edited; a
    // privilege revoked; a feature missing; a statement cancelled by its timeout.
    for (const code of [
      '3D000',
      '42P01',
      '42883',
      '42703',
      '28P01',
      '28000',
      '42501',
      '0A000',
      '57014',
    ]) {
      assert.equal(classifyFailure(withCode(code)), 'transient', code);
    }
  });

  void it('counts constraint violations, bad data and impossible folds as data failures', () => {
    for (const code of ['23505', '23502', '22P02', '22021', '21000', '54000', 'P0001']) {
      assert.equal(classifyFailure(withCode(code)), 'data', code);
    }
    assert.equal(classifyFailure(new FoldError('unit already finished', 'e1')), 'data');
    assert.equal(
      classifyFailure(Object.assign(withCode('23505'), { constraint: 'events_aggregate_seq_key' })),
      'data',
    );
  });

  void it("does not count an event's own id met by a write of the same event that committed late", () => {
    assert.equal(
      classifyFailure(Object.assign(withCode('23505'), { constraint: 'events_pkey' })),
      'transient',
    );
  });

  void it("knows a statement the database cancelled for its time, not the client's timeout", () => {
    assert.equal(isStatementTimeout(withCode('57014')), true);
    assert.equal(isStatementTimeout(new Error('Query read timeout')), false);
    assert.equal(isStatementTimeout(new Error('timeout exceeded when trying to connect')), false);
    assert.equal(isStatementTimeout(withCode('57P01')), false);
  });

  void it('does not count an unknown failure against the event', () => {
    assert.equal(classifyFailure(new Error('something odd')), 'transient');
    assert.equal(classifyFailure(undefined), 'transient');
  });
});

void describe('isDatabaseUnreachable', () => {
  void it('recognises a database that is down, shutting down, full or not there yet', () => {
    for (const code of ['ECONNREFUSED', 'ETIMEDOUT', '08006', '57P01', '57P03', '53300', '3D000']) {
      assert.equal(isDatabaseUnreachable(withCode(code)), true, code);
    }
    assert.equal(isDatabaseUnreachable(new Error('Connection terminated unexpectedly')), true);
    assert.equal(isDatabaseUnreachable(new Error('timeout exceeded when trying to connect')), true);
  });

  void it('does not mistake a failed statement or a bug for an outage', () => {
    for (const code of ['23505', '42P01', '40001', '22P02', '57014']) {
      assert.equal(isDatabaseUnreachable(withCode(code)), false, code);
    }
    assert.equal(isDatabaseUnreachable(new TypeError('x is undefined')), false);
    assert.equal(isDatabaseUnreachable(undefined), false);
  });
});

void describe('isLinkTimeout', () => {
  void it('knows a database that did not answer in time from one that answered or refused', () => {
    for (const message of [
      'timeout expired',
      'Connection terminated due to connection timeout',
      'Query read timeout',
    ]) {
      assert.equal(isLinkTimeout(new Error(message)), true, message);
    }
    assert.equal(isLinkTimeout(withCode('ETIMEDOUT')), true);
    for (const code of ['57014', 'ECONNREFUSED', '57P01']) {
      assert.equal(isLinkTimeout(withCode(code)), false, code);
    }
    const statementTimeout = Object.assign(
      new Error('canceling statement due to statement timeout'),
      { code: '57014' },
    );
    assert.equal(isLinkTimeout(statementTimeout), false);
    assert.equal(isLinkTimeout(new Error('Connection terminated unexpectedly')), false);
    assert.equal(isLinkTimeout(undefined), false);
  });

  void it('does not take a pool whose connections were all in use for a dead link', () => {
    const busy = new Error('timeout exceeded when trying to connect');
    assert.equal(isLinkTimeout(busy), false);
    assert.equal(isPoolWaitTimeout(busy), true);
    assert.equal(isPoolWaitTimeout(new Error('Query read timeout')), false);
  });
});

void describe('isDatabaseFailure', () => {
  void it('owns what a database answered or failed to answer, and nothing else', () => {
    assert.equal(isDatabaseFailure(withCode('57014')), true);
    assert.equal(isDatabaseFailure(withCode('ECONNREFUSED')), true);
    assert.equal(isDatabaseFailure(new Error('Query read timeout')), true);
    assert.equal(isDatabaseFailure(new TypeError('Cannot read properties of undefined')), false);
    assert.equal(isDatabaseFailure(new Error('OOM command not allowed')), false);
  });
});

void describe('isDatabaseAnswer', () => {
  void it('knows a SQLSTATE from the five capitals of a Node error code', () => {
    for (const code of ['53300', '57P01', '08006', 'XX000', '40P01']) {
      assert.equal(isDatabaseAnswer(withCode(code)), true, code);
    }
    for (const code of ['EPIPE', 'EPERM', 'ECONNRESET']) {
      assert.equal(isDatabaseAnswer(withCode(code)), false, code);
      assert.equal(classifyFailure(withCode(code)), 'transient', code);
      assert.equal(isDatabaseUnreachable(withCode(code)), true, code);
    }
  });
});
