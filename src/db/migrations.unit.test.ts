import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { PROJECT_ROOT } from '../paths.ts';

void describe('the migration journal', () => {
  void it('dates every migration after the one before it', () => {
    // drizzle applies only migrations dated after the last one a database recorded: one dated
    // before its predecessor is skipped for good on every database that had the predecessor.
    const { entries } = JSON.parse(
      readFileSync(join(PROJECT_ROOT, 'migrations', 'meta', '_journal.json'), 'utf8'),
    ) as { entries: { idx: number; tag: string; when: number }[] };
    assert.ok(entries.length > 1);
    entries.forEach((entry, i) => {
      assert.equal(entry.idx, i, entry.tag);
      const before = entries[i - 1];
      if (before) {
        assert.ok(entry.when > before.when, `${entry.tag} is dated after ${before.tag}`);
      }
    });
  });
});
