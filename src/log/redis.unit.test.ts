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
  void it('answers what the work answers, its failure too, a synchronous throw as a failure', async () => {
    assert.equal(await withinCommandTimeout(() => Promise.resolve('OK')), 'OK');
    await assert.rejects(
      withinCommandTimeout(() => Promise.reject(new Error('NOSCRIPT'))),
      /^Error: NOSCRIPT$/,
    );
    await assert.rejects(
      withinCommandTimeout(() => {
        throw new Error('cannot encode');
      }),
      /^Error: cannot encode$/,
    );
  });

  void it('fails as a timed-out command once the command timeout has passed, whatever the work does later', async (t) => {
    t.mock.timers.enable({ apis: ['setTimeout'] });
    let answer: (value: string) => void = () => undefined;
    const asked = withinCommandTimeout(
      () =>
        new Promise<string>((resolve) => {
          answer = resolve;
        }),
    );
    let failure: unknown;
    const settled = asked.catch((err: unknown) => {
      failure = err;
    });
    t.mock.timers.tick(COMMAND_TIMEOUT_MS - 1);
    // Past every microtask the race and its handlers take (setImmediate is not mocked).
    await new Promise((resolve) => setImmediate(resolve));
    assert.equal(failure, undefined, 'not before the timeout');
    t.mock.timers.tick(1);
    await settled;
    assert.equal((failure as Error | undefined)?.message, 'Command timed out');
    // The work answering late changes nothing.
    answer('OK');
    await assert.rejects(asked, { message: 'Command timed out' });
  });
});
