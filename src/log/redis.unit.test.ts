import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { COMMAND_TIMEOUT_MS, redisVersionRefusal, withinCommandTimeout } from './redis.ts';

const infoOf = (version: string) =>
  `# Server\r\nredis_version:${version}\r\nredis_git_sha1:00000000\r\nredis_mode:standalone\r\n`;

void describe('redisVersionRefusal', () => {
  void it('refuses a Redis older than 7, naming its version and address', () => {
    assert.equal(
      redisVersionRefusal(infoOf('6.2.14'), 'redis://cache.site:6380'),
      'Redis at cache.site:6380 is 6.2.14, and Outpost needs Redis 7 or later: its scripts declare flags, which older versions cannot read',
    );
    assert.match(redisVersionRefusal(infoOf('5.0.7'), 'redis://h') ?? '', /is 5\.0\.7, and/);
  });

  void it('runs on Redis 7 and later, and on a server that does not say its version', () => {
    for (const version of ['7.0.15', '7.2.4', '8.0.0', '10.1.0']) {
      assert.equal(redisVersionRefusal(infoOf(version), 'redis://h'), undefined, version);
    }
    assert.equal(
      redisVersionRefusal('# Server\r\nredis_mode:standalone\r\n', 'redis://h'),
      undefined,
    );
    assert.equal(redisVersionRefusal(infoOf('unknown'), 'redis://h'), undefined);
  });
});

void describe('withinCommandTimeout', () => {
  const never = new Promise<never>(() => undefined);

  void it('answers what the work answers, its failure too, while the timeout has not passed', async () => {
    assert.equal(await withinCommandTimeout(Promise.resolve('OK')), 'OK');
    await assert.rejects(
      withinCommandTimeout(Promise.reject(new Error('NOSCRIPT'))),
      /^Error: NOSCRIPT$/,
    );
  });

  void it('fails as a timed-out command once the timeout has passed since it was asked, the wait before counted', async () => {
    const askedAt = performance.now() - COMMAND_TIMEOUT_MS + 20;
    const failedAfter = performance.now();
    await assert.rejects(withinCommandTimeout(never, askedAt), { message: 'Command timed out' });
    // 20 ms were left of the 5 s, not 5 s more.
    assert.ok(performance.now() - failedAfter < COMMAND_TIMEOUT_MS / 2);
    await assert.rejects(withinCommandTimeout(never, askedAt - 60_000), {
      message: 'Command timed out',
    });
  });
});
