import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { stampedLsnOf, stampingSql } from './apply.ts';

void describe('stampingSql', () => {
  void it('reads the flush position alone when no event needs a stamp', () => {
    assert.equal(stampingSql([]), 'SELECT pg_current_wal_flush_lsn()::text AS lsn');
  });

  void it('stamps the given events in a transaction of their own, then reads past its commit', () => {
    const sql = stampingSql([
      '0195f2a4-0000-7000-8000-000000000001',
      '0195f2a4-0000-7000-8000-000000000002',
    ]);
    const order = [
      'BEGIN;',
      'EXECUTE outpost_stamp_commit_lsn(',
      "'{0195f2a4-0000-7000-8000-000000000001,0195f2a4-0000-7000-8000-000000000002}'",
      'COMMIT;',
      'pg_current_wal_flush_lsn()::text',
    ];
    let at = -1;
    for (const part of order) {
      const next = sql.indexOf(part, at + 1);
      assert.ok(next > at, `${part} after the previous part`);
      at = next;
    }
  });

  void it('refuses to inline anything but a UUID', () => {
    assert.throws(() => stampingSql(["x'); DROP TABLE events; --"]), /not a UUID/);
    assert.throws(() => stampingSql(['0195f2a4-0000-7000-8000-000000000001}']), /not a UUID/);
  });

  void it('reads the LSN from the last result and fails loudly without one', () => {
    assert.equal(stampedLsnOf([{ rows: [] }, { rows: [{ lsn: '0/16B3748' }] }]), '0/16B3748');
    assert.throws(() => stampedLsnOf([{ rows: [] }]), /no LSN/);
  });
});
