import assert from 'node:assert/strict';
import { createServer, type Server, type Socket } from 'node:net';
import { after, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { LinkWatchdog } from './link-watchdog.ts';

/** A TCP endpoint standing in for a database server: `greet` is what it does with a connection. */
const endpoint = async (greet: (socket: Socket) => void) => {
  const sockets = new Set<Socket>();
  let hungUp: () => void = () => undefined;
  const clientHungUp = new Promise<void>((resolve) => {
    hungUp = resolve;
  });
  let chunks = 0;
  const hearing: { count: number; resolve: () => void }[] = [];
  const server: Server = createServer((socket) => {
    sockets.add(socket);
    socket.on('error', () => undefined);
    socket.on('close', hungUp);
    socket.on('data', () => {
      chunks += 1;
      for (const waiter of hearing.filter((w) => w.count <= chunks)) {
        waiter.resolve();
      }
    });
    // What the client sends is read and dropped, so its hang-up is seen.
    socket.resume();
    greet(socket);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  return {
    url: `postgres://outpost@127.0.0.1:${port}/outpost`,
    clientHungUp,
    /** Resolves once the client has sent `count` writes: its startup message, then each probe. */
    heard: (count: number) =>
      new Promise<void>((resolve) => {
        hearing.push({ count, resolve });
        if (chunks >= count) {
          resolve();
        }
      }),
    close: () => {
      for (const socket of sockets) {
        socket.destroy();
      }
      return new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
};

/** A PostgreSQL ErrorResponse, as a server out of connection slots sends it. */
const tooManyClients = () => {
  const fields = Buffer.from('SFATAL\0C53300\0Msorry, too many clients already\0\0');
  const header = Buffer.alloc(5);
  header.write('E', 0);
  header.writeInt32BE(fields.length + 4, 1);
  return Buffer.concat([header, fields]);
};

/** A server that lets the client in (trust: AuthenticationOk, ReadyForQuery) and then falls silent. */
const letInThenSilent = (socket: Socket) =>
  socket.once('data', () => {
    const authenticationOk = Buffer.from([0x52, 0, 0, 0, 8, 0, 0, 0, 0]);
    const readyForQuery = Buffer.from([0x5a, 0, 0, 0, 5, 0x49]);
    socket.write(Buffer.concat([authenticationOk, readyForQuery]));
  });

void describe('LinkWatchdog', () => {
  const closing: (() => Promise<void>)[] = [];
  after(async () => {
    await Promise.all(closing.map((close) => close()));
  });

  void it('declares the link lost when the server stops answering', async () => {
    // Accepts the connection and never says a word: a link that silently drops packets.
    const silent = await endpoint(() => undefined);
    closing.push(silent.close);
    const watchdog = new LinkWatchdog({ url: silent.url, everyMs: 20, timeoutMs: 200 });
    const started = Date.now();
    await assert.rejects(watchdog.lost, (err: Error & { code?: string }) => {
      assert.match(err.message, /the link to the database was lost/);
      assert.equal(err.code, 'ETIMEDOUT');
      return true;
    });
    assert.ok(Date.now() - started < 5_000, 'within a few timeouts, not a TCP give-up');
    await watchdog.stop();
  });

  void it('keeps quiet when the server answers, even with an error', async () => {
    let refused = 0;
    const full = await endpoint((socket) => {
      refused += 1;
      socket.end(tooManyClients());
    });
    closing.push(full.close);
    const watchdog = new LinkWatchdog({ url: full.url, everyMs: 20, timeoutMs: 200 });
    let lost: unknown;
    watchdog.lost.catch((err: unknown) => {
      lost = err;
    });
    // Refused on a new connection every 20 ms: 21 refusals span two timeouts, in which a watchdog
    // that took a refusal for silence would have given up.
    const deadline = Date.now() + 10_000;
    while (refused < 21 && lost === undefined) {
      assert.ok(Date.now() < deadline, `asked again after each refusal (${refused} so far)`);
      await sleep(10);
    }
    await full.clientHungUp;
    await new Promise((resolve) => setImmediate(resolve));
    await watchdog.stop();
    assert.equal(lost, undefined);
  });

  void it('goes on watching after the server answered with an error, and sees the link go later', async () => {
    // Out of connection slots at first, then a connection that works and falls silent.
    let connections = 0;
    const later = await endpoint((socket) => {
      connections += 1;
      if (connections === 1) {
        socket.end(tooManyClients());
      } else {
        letInThenSilent(socket);
      }
    });
    closing.push(later.close);
    const watchdog = new LinkWatchdog({ url: later.url, everyMs: 20, timeoutMs: 200 });
    let deadline: NodeJS.Timeout | undefined;
    const gaveUp = new Promise<'still watching?'>((resolve) => {
      deadline = setTimeout(() => resolve('still watching?'), 5_000);
    });
    try {
      const outcome = await Promise.race([
        watchdog.lost.then(
          () => 'answered',
          (err: Error) => err.message,
        ),
        gaveUp,
      ]);
      assert.match(outcome, /the link to the database was lost/);
      assert.ok(connections >= 2);
    } finally {
      clearTimeout(deadline);
      await watchdog.stop();
    }
  });

  void it('declares the link lost when a probe goes unanswered on a connection that worked', async () => {
    const falls = await endpoint(letInThenSilent);
    closing.push(falls.close);
    const watchdog = new LinkWatchdog({ url: falls.url, everyMs: 20, timeoutMs: 200 });
    await assert.rejects(watchdog.lost, /the link to the database was lost.*timeout/i);
    await watchdog.stop();
  });

  for (const [moment, greet, writes] of [
    ['while connecting', () => undefined, 1],
    ['with a probe in flight', letInThenSilent, 2],
  ] as const) {
    void it(`ends its watch promptly when stopped ${moment}`, async () => {
      const silent = await endpoint(greet);
      closing.push(silent.close);
      const watchdog = new LinkWatchdog({ url: silent.url, everyMs: 20, timeoutMs: 60_000 });
      await silent.heard(writes);
      let lost: unknown;
      watchdog.lost.catch((err: unknown) => {
        lost = err;
      });
      const started = Date.now();
      await watchdog.stop();
      assert.ok(Date.now() - started < 1_000, `stopped in ${Date.now() - started} ms`);
      assert.equal(lost, undefined, 'a stop is not a lost link');
    });
  }
});
