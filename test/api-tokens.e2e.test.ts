import assert from 'node:assert/strict';
import { mkdtempSync, renameSync, rmSync, statSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { createToken, type TokenEntry } from '../src/auth/api-tokens.ts';
import { Harness, scrapeMetric, waitFor } from './harness/harness.ts';
import { SseClient } from './harness/live-client.ts';

const writer = createToken('camera-1', ['write']);
const reader = createToken('dashboard', ['read']);
const operator = createToken('operator', ['admin']);
const bearer = (token: string) => ({ authorization: `Bearer ${token}` });
const startBody = { obs_unit_id: 'tok-1', instrument: 'nircam' };

void describe('scoped API tokens', () => {
  let h: Harness;
  let dir: string;
  let file: string;
  const writeTokens = (entries: TokenEntry[]) => writeFileSync(file, JSON.stringify(entries));
  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'outpost-tokens-'));
    file = join(dir, 'tokens.json');
    writeTokens([writer.entry, reader.entry, operator.entry]);
    h = await Harness.start({
      config: { apiTokens: { kind: 'file', path: file }, liveHeartbeatMs: 100 },
    });
  });
  after(async () => {
    await h?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  void it('checks each scope against each endpoint class', async () => {
    const write = (headers: Record<string, string> = {}) =>
      h.post('/executed_obs_units/start', startBody, headers);
    assert.equal((await write()).status, 401);
    assert.equal((await write(bearer('not-a-token'))).status, 401);
    assert.equal((await write(bearer(reader.token))).status, 403);
    assert.equal((await write(bearer(operator.token))).status, 403);
    const created = await write(bearer(writer.token));
    assert.equal(created.status, 201);

    const read = (token?: string) =>
      h.request(
        'GET',
        `/executed_obs_units/${created.body.id}`,
        undefined,
        token ? bearer(token) : {},
      );
    assert.equal((await read()).status, 401);
    assert.equal((await read(writer.token)).status, 403);
    assert.equal((await read(reader.token)).status, 200);

    const admin = (headers: Record<string, string>) =>
      h.request('GET', '/admin/pending', undefined, headers);
    assert.equal((await admin({})).status, 401);
    assert.equal((await admin(bearer(reader.token))).status, 403);
    assert.equal((await admin(bearer(operator.token))).status, 200);
    assert.equal((await admin(bearer('test-admin-token'))).status, 200, 'OUTPOST_ADMIN_TOKEN');

    assert.equal((await h.get('/health')).status, 200, 'operations stay open');
    const live = new AbortController();
    const feed = await fetch(`${h.url}/events/live?access_token=${reader.token}`, {
      signal: live.signal,
    });
    assert.equal(feed.status, 200);
    live.abort();
    const noFeed = await fetch(`${h.url}/events/live?access_token=${writer.token}`);
    assert.equal(noFeed.status, 403);
  });

  void it('records which token wrote each event, pending and once confirmed', async () => {
    const created = await h.post(
      '/executed_obs_units/start',
      { ...startBody, obs_unit_id: 'tok-2' },
      bearer(writer.token),
    );
    const read = () =>
      h.request('GET', `/events/${created.body.event_id}`, undefined, bearer(reader.token));
    assert.equal((await read()).body.written_by, 'camera-1');
    await waitFor(async () => (await read()).body.state === 'confirmed', 'the event confirmed');
    assert.equal((await read()).body.written_by, 'camera-1');
    const [row] = await h.mainRows<{ written_by: string }>(
      'SELECT written_by FROM events WHERE event_id = $1',
      [created.body.event_id],
    );
    assert.equal(row?.written_by, 'camera-1');
  });

  void it('stops accepting a revoked token without a restart', async () => {
    const body = { ...startBody, obs_unit_id: 'tok-3' };
    assert.equal(
      (await h.post('/executed_obs_units/start', body, bearer(writer.token))).status,
      201,
    );
    writeTokens([reader.entry, operator.entry]);
    await waitFor(
      async () =>
        (await h.post('/executed_obs_units/start', body, bearer(writer.token))).status === 401,
      'the revoked token refused',
      10_000,
    );
    // A broken file keeps the tokens in force rather than locking everyone out or opening up.
    writeFileSync(file, '[{ not json');
    h.services[0]?.reloadTokens();
    const stillReads = await h.request('GET', '/events/live/ws', undefined, bearer(reader.token));
    assert.equal(stillReads.status, 426);
    assert.equal((await h.post('/executed_obs_units/start', body)).status, 401);
    // And says so: a revocation made in that edit is not in force.
    const health = await h.get('/health');
    assert.equal(health.body.status, 'degraded');
    assert.match(health.body.api_tokens?.error ?? '', /OUTPOST_API_TOKENS: .*tokens\.json/);
    assert.equal(await scrapeMetric(h.url, 'outpost_api_tokens_file_valid'), 0);
    writeTokens([reader.entry, operator.entry]);
    h.services[0]?.reloadTokens();
    assert.equal((await h.get('/health')).body.api_tokens, undefined);
    assert.equal(await scrapeMetric(h.url, 'outpost_api_tokens_file_valid'), 1);
  });
  void it('closes a live feed already open once its token is revoked', async () => {
    writeTokens([reader.entry, operator.entry]);
    h.services[0]?.reloadTokens();
    const feed = await SseClient.open(`${h.url}/events/live`, bearer(reader.token));
    assert.equal(feed.status, 200);
    try {
      writeTokens([operator.entry]);
      h.services[0]?.reloadTokens();
      await waitFor(
        () => feed.frames.some((f) => f.event === 'dropped'),
        'the feed to be dropped',
        10_000,
      );
      const dropped = feed.frames.find((f) => f.event === 'dropped');
      assert.equal(JSON.parse(dropped?.data ?? '{}').code, 'unauthorized');
    } finally {
      await feed.close();
      writeTokens([writer.entry, reader.entry, operator.entry]);
      h.services[0]?.reloadTokens();
    }
  });

  void it('reloads the token file on SIGHUP, with no change the file poll could see', async () => {
    const sighupFile = join(dir, 'sighup-tokens.json');
    // A whole second, which utimes sets exactly (the file's own has nanoseconds).
    const fixedTime = new Date('2026-01-01T00:00:00Z');
    writeFileSync(sighupFile, JSON.stringify([writer.entry, reader.entry]));
    utimesSync(sighupFile, fixedTime, fixedTime);
    const api = await h.spawnServe('api', { OUTPOST_API_TOKENS: sighupFile, LOG_LEVEL: 'info' });
    await api.ready();
    const write = () =>
      fetch(`${api.url}/executed_obs_units/start`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', ...bearer(writer.token) },
        body: JSON.stringify({ ...startBody, obs_unit_id: 'tok-sighup' }),
      });
    assert.equal((await write()).status, 201);
    // Revoke the writer by swapping its hash for another of the same length, then give the file
    // its old mtime and size back and move it into place: only SIGHUP can notice the change.
    const { size } = statSync(sighupFile);
    const revoked = { ...writer.entry, sha256: createToken('other', ['write']).entry.sha256 };
    const staged = `${sighupFile}.new`;
    writeFileSync(staged, JSON.stringify([revoked, reader.entry]));
    assert.equal(statSync(staged).size, size);
    utimesSync(staged, fixedTime, fixedTime);
    renameSync(staged, sighupFile);
    assert.equal((await write()).status, 201, 'no reload before the signal');
    api.child.kill('SIGHUP');
    await waitFor(async () => (await write()).status === 401, 'the revoked token refused');
    // The log line comes through a pipe: it may trail the refused request by a moment.
    await waitFor(() => /API tokens reloaded/.test(api.output()), 'the reload logged');
    assert.doesNotMatch(api.output(), new RegExp(writer.token), 'tokens are never logged');
  });
});
