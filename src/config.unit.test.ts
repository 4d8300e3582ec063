import assert from 'node:assert/strict';
import { hostname } from 'node:os';
import { describe, it } from 'node:test';
import { ConfigError, loadConfig, parseDurationMs, redactedConfig } from './config.ts';

void describe('loadConfig', () => {
  void it('uses the local stack as a site pair when nothing is set', () => {
    const config = loadConfig({});
    assert.equal(config.role, 'secondary');
    assert.equal(config.port, 8080);
    assert.match(config.mainDatabaseUrl, /:55432\//);
    assert.match(config.replicaDatabaseUrl, /:55433\//);
    assert.match(config.redisUrl, /:56379$/);
    assert.equal(config.partitions, 8);
    assert.equal(config.streamRetentionMs, 7 * 86_400_000);
  });

  void it('makes a main site reading its own database when only MAIN_DATABASE_URL is set', () => {
    const config = loadConfig({ MAIN_DATABASE_URL: 'postgres://u@db:5432/x' });
    assert.equal(config.role, 'main');
    assert.equal(config.replicaDatabaseUrl, 'postgres://u@db:5432/x');
    assert.equal(config.replicaIsMain, true);
  });

  void it('knows a replica URL naming the main database however it is spelled', () => {
    const main = 'postgres://u:pw@db.site:5432/outpost';
    for (const replica of [
      'postgresql://u:pw@db.site:5432/outpost',
      'postgres://u:pw@DB.site/outpost',
      'postgres://u:pw@db.site:5432/outpost?application_name=x',
    ]) {
      const config = loadConfig({ MAIN_DATABASE_URL: main, REPLICA_DATABASE_URL: replica });
      assert.equal(config.replicaIsMain, true, replica);
    }
    for (const replica of [
      'postgres://u:pw@db.site:5433/outpost',
      'postgres://u:pw@replica.site:5432/outpost',
      'postgres://u:pw@db.site:5432/other',
      'postgres://v:pw@db.site:5432/outpost',
    ]) {
      const config = loadConfig({ MAIN_DATABASE_URL: main, REPLICA_DATABASE_URL: replica });
      assert.equal(config.replicaIsMain, false, replica);
    }
  });

  void it("takes this machine's loopback names for one server, as an operator types them", () => {
    const main = 'postgres://postgres@127.0.0.1:55432/outpost';
    for (const replica of [
      'postgres://postgres@localhost:55432/outpost',
      'postgres://postgres@[::1]:55432/outpost',
      'postgres://postgres@LOCALHOST:55432/outpost',
    ]) {
      const config = loadConfig({ MAIN_DATABASE_URL: main, REPLICA_DATABASE_URL: replica });
      assert.equal(config.replicaIsMain, true, replica);
    }
    for (const replica of [
      'postgres://postgres@localhost:55433/outpost',
      'postgres://postgres@127.0.0.2.example:55432/outpost',
    ]) {
      const config = loadConfig({ MAIN_DATABASE_URL: main, REPLICA_DATABASE_URL: replica });
      assert.equal(config.replicaIsMain, false, replica);
    }
  });

  void it('stops with a message naming each bad variable', () => {
    assert.throws(
      () =>
        loadConfig({
          OUTPOST_PORT: 'eighty',
          OUTPOST_PARTITIONS: '0',
          OUTPOST_STREAM_RETENTION: 'soon',
        }),
      (err: Error) =>
        err instanceof ConfigError &&
        ['OUTPOST_PORT', 'OUTPOST_PARTITIONS', 'OUTPOST_STREAM_RETENTION'].every((v) =>
          err.message.includes(v),
        ),
    );
  });

  void it('refuses a site name with white space around it or control characters in it', () => {
    for (const site of [' alma', 'alma ', 'alma\n', 'al\tma']) {
      assert.throws(
        () => loadConfig({ OUTPOST_SITE: site }),
        (err: Error) => err instanceof ConfigError && err.message.includes('OUTPOST_SITE'),
        JSON.stringify(site),
      );
    }
    for (const site of ['alma', 'La Silla 2', 'Ñuñoa-3.6m']) {
      assert.equal(loadConfig({ OUTPOST_SITE: site }).site, site);
    }
  });

  void it('refuses a connection URL its driver could not parse, or one naming no host, without echoing it', () => {
    const refusal = (env: Record<string, string>) => {
      try {
        loadConfig(env);
      } catch (err) {
        assert.ok(err instanceof ConfigError);
        return err.message;
      }
      assert.fail(`accepted ${JSON.stringify(env)}`);
    };
    for (const [variable, url, says] of [
      [
        'MAIN_DATABASE_URL',
        'postgres://u:s3cret@db:54x2/outpost',
        /cannot be read as one \(a port/,
      ],
      ['MAIN_DATABASE_URL', 'postgres://u:s3cret@db:99999/outpost', /cannot be read as one/],
      // pg reads the TLS files a URL names as it parses it: the message says which is missing.
      [
        'MAIN_DATABASE_URL',
        'postgres://u:s3cret@db/outpost?sslcert=/nonexistent/client.crt',
        /cannot be read as one \(.*\/nonexistent\/client\.crt/,
      ],
      ['MAIN_DATABASE_URL', 'postgres://', /must name the server/],
      ['REPLICA_DATABASE_URL', 'postgres://u:s3cret@/outpost', /must name the server/],
      ['REPLICA_DATABASE_URL', 'mysql://u:s3cret@db/outpost', /must be a URL such as postgres:/],
      ['REDIS_URL', 'redis://:s3cret@cache:6x79', /cannot be read as one/],
      ['REDIS_URL', 'redis://', /must name the server/],
      ['REDIS_URL', 'http://cache:6379', /must be a URL such as redis:/],
      // ioredis decodes the password at start-up, where "URI malformed" names no variable.
      ['REDIS_URL', 'redis://:s3cret50%off@cache:6379', /write % as %25/],
    ] as const) {
      const message = refusal({ MAIN_DATABASE_URL: 'postgres://u@db/outpost', [variable]: url });
      assert.match(message, new RegExp(`${variable}: `), url);
      assert.match(message, says, url);
      assert.doesNotMatch(message, /s3cret/, `${url}: the password is not echoed`);
    }
    for (const [variable, url] of [
      ['MAIN_DATABASE_URL', 'postgres://u:p%40ss@db:5432/outpost'],
      ['MAIN_DATABASE_URL', 'postgresql://db/outpost'],
      ['MAIN_DATABASE_URL', 'postgres://u@/outpost?host=/var/run/postgresql'],
      ['MAIN_DATABASE_URL', 'postgres://u@[::1]:5432/outpost'],
      ['REDIS_URL', 'redis://cache:6379'],
      ['REDIS_URL', 'rediss://:pw@cache:6380/2'],
      ['REDIS_URL', 'redis://:50%25off@cache:6379'],
      ['REDIS_URL', 'unix:///var/run/redis/redis.sock'],
      ['REDIS_URL', 'redis://localhost?path=/var/run/redis/redis.sock'],
    ] as const) {
      const config = loadConfig({ [variable]: url });
      assert.equal(variable === 'REDIS_URL' ? config.redisUrl : config.mainDatabaseUrl, url);
    }
    // A URL without a host is pg's to complete from PGHOST, where that is set.
    assert.equal(
      loadConfig({ MAIN_DATABASE_URL: 'postgres:///outpost', PGHOST: 'db' }).mainDatabaseUrl,
      'postgres:///outpost',
    );
  });

  void it("refuses waits longer than Node's timers take, which would fire at once", () => {
    assert.equal(
      loadConfig({ OUTPOST_POST_DEPLOY_REFRESH_DELAY: '24d' }).postDeployRefreshDelayMs,
      24 * 86_400_000,
    );
    for (const [variable, value, says] of [
      ['OUTPOST_POST_DEPLOY_REFRESH_DELAY', '30d', 'at most 24 days'],
      ['OUTPOST_CLAIM_IDLE_MS', '2147483648', 'must be a whole number'],
      ['OUTPOST_ACK_INTERVAL_MS', '9999999999', 'must be a whole number'],
      // Leases renewed every third of it, at most every 50 ms: shorter ones lapse between.
      ['OUTPOST_CLAIM_IDLE_MS', '10', 'must be a whole number'],
      ['OUTPOST_ADMIN_TOKEN', 's3cret\n', "has spaces or a line break around it (a secret file's"],
    ] as const) {
      assert.throws(
        () => loadConfig({ [variable]: value }),
        (err: Error) => err instanceof ConfigError && err.message.includes(`${variable}: ${says}`),
        variable,
      );
    }
  });

  void it('reads whole numbers only as digits', () => {
    assert.equal(loadConfig({ OUTPOST_PORT: ' 9090 ' }).port, 9090);
    assert.equal(loadConfig({ OUTPOST_PORT: '0' }).port, 0);
    assert.equal(loadConfig({ OUTPOST_BATCH_SIZE: '1000' }).batchSize, 1000);
    for (const [variable, value] of [
      ['OUTPOST_PORT', ' '],
      ['OUTPOST_PORT', '0x50'],
      ['OUTPOST_PORT', '8e3'],
      ['OUTPOST_PORT', '80.5'],
      ['OUTPOST_PORT', '-1'],
      ['OUTPOST_PORT', '65536'],
      ['OUTPOST_PARTITIONS', '1025'],
      ['OUTPOST_BATCH_SIZE', '0'],
      ['OUTPOST_MAX_BODY_BYTES', '1e6'],
    ] as const) {
      assert.throws(
        () => loadConfig({ [variable]: value }),
        (err: Error) =>
          err instanceof ConfigError &&
          err.message.includes(`${variable}: must be a whole number`) &&
          err.message.includes(`not "${value}"`),
        `${variable}=${JSON.stringify(value)}`,
      );
    }
  });

  void it('names a process by host and port, or by pid when any port will do', () => {
    assert.equal(loadConfig({ OUTPOST_PORT: '8081' }).consumer, `${hostname()}:8081`);
    assert.equal(loadConfig({ OUTPOST_PORT: '0' }).consumer, `${hostname()}:pid${process.pid}`);
    assert.equal(loadConfig({ OUTPOST_PORT: '0', OUTPOST_CONSUMER: 'c1' }).consumer, 'c1');
  });

  void it('parses durations and redacts secrets', () => {
    assert.equal(parseDurationMs('10m'), 600_000);
    assert.equal(parseDurationMs('30000'), 30_000);
    assert.equal(parseDurationMs('1w'), undefined);
    const redacted = redactedConfig(
      loadConfig({ OUTPOST_ADMIN_TOKEN: 's3cret', MAIN_DATABASE_URL: 'postgres://u:pw@h/d' }),
    );
    assert.equal(redacted.admin, 'enabled');
    assert.ok(!JSON.stringify(redacted).includes('pw'));
    assert.ok(!JSON.stringify(redacted).includes('s3cret'));
    // Start-up says the admin API is off, where a redacted token looked set either way.
    const withoutAdmin = redactedConfig(loadConfig({}));
    assert.equal(withoutAdmin.admin, 'disabled: OUTPOST_ADMIN_TOKEN is not set');
    assert.equal('adminToken' in withoutAdmin, false);
  });
});
