import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { commitStampingSql, stampedLsnOf } from './apply.ts';

void describe('commitStampingSql', () => {
  void it('commits and reads the flush position alone when no event needs a stamp', () => {
    assert.equal(commitStampingSql([]), 'COMMIT; SELECT pg_current_wal_flush_lsn()::text AS lsn');
  });

  void it('stamps the given events between the commit and the final read', () => {
    const sql = commitStampingSql(['0195f2a4-0000-7000-8000-000000000001']);
    const order = [
      'COMMIT;',
      'BEGIN;',
      'UPDATE events',
      "'0195f2a4-0000-7000-8000-000000000001'",
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
    assert.throws(() => commitStampingSql(["x'); DROP TABLE events; --"]), /not a UUID/);
  });

  void it('reads the LSN from the last result and fails loudly without one', () => {
    assert.equal(stampedLsnOf([{ rows: [] }, { rows: [{ lsn: '0/16B3748' }] }]), '0/16B3748');
    assert.throws(() => stampedLsnOf([{ rows: [] }]), /no LSN/);
  });
});
