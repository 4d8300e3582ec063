import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { createPool } from '../src/db/client.ts';
import { testStack } from './harness/harness.ts';
import { withDatabase } from './harness/services.ts';

void describe('createPool', () => {
  void it("keeps its own session settings when the site's URL carries options of its own", async () => {
    const url = new URL(withDatabase(testStack().mainUrl, 'postgres'));
    url.searchParams.set('options', '-c timezone=America/Santiago -c search_path=site_schema');
    const pool = createPool({ url: url.toString(), max: 1, applicationName: 'outpost-test' });
    try {
      const setting = async (name: string) =>
        (await pool.query<{ value: string }>('SELECT current_setting($1) AS value', [name])).rows[0]
          ?.value;
      assert.equal(await setting('timezone'), 'UTC', 'ours, which the URL would have replaced');
      assert.equal(await setting('search_path'), 'site_schema', "the URL's own, kept");
    } finally {
      await pool.end();
    }
  });
});
