import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { withServerSettings } from './client.ts';

void describe('withServerSettings', () => {
  void it('passes ours as options when the URL carries none', () => {
    const url = 'postgres://outpost@db.site:5432/outpost?sslmode=disable';
    assert.deepEqual(withServerSettings(url, ['-c timezone=UTC', '-c enable_seqscan=off']), {
      connectionString: url,
      options: '-c timezone=UTC -c enable_seqscan=off',
    });
  });

  void it("keeps the URL's own settings and puts ours after them, so ours win", () => {
    const url =
      'postgres://outpost@db.site:5432/outpost?options=-c%20search_path%3Dsite%20-c%20timezone%3DAmerica%2FSantiago&sslmode=require';
    const { connectionString, options } = withServerSettings(url, ['-c timezone=UTC']);
    assert.equal(options, '-c search_path=site -c timezone=America/Santiago -c timezone=UTC');
    const rest = new URL(connectionString);
    assert.equal(rest.searchParams.get('options'), null);
    assert.equal(rest.searchParams.get('sslmode'), 'require');
    assert.equal(rest.host, 'db.site:5432');
    assert.equal(rest.pathname, '/outpost');
  });

  void it('leaves a target that is not a URL as it is', () => {
    assert.deepEqual(withServerSettings('socket:/var/run/postgresql?db=outpost', []), {
      connectionString: 'socket:/var/run/postgresql?db=outpost',
      options: '',
    });
  });
});
