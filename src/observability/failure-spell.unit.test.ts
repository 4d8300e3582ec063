import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { describe, it } from 'node:test';
import { FailureSpell } from './failure-spell.ts';
import { createLogger } from './logger.ts';

type Line = { level: number; msg: string; failures?: number; failing_for_s?: number; err?: object };

/** A spell on a real pino logger writing to memory, and a clock the test moves. */
const spellWithLog = (level = 'info') => {
  const lines: Line[] = [];
  const destination = new Writable({
    write(chunk: Buffer, _encoding, done) {
      lines.push(JSON.parse(chunk.toString()) as Line);
      done();
    },
  });
  let now = 1_000;
  const spell = new FailureSpell(createLogger(level, destination), 'reading partition 3', {
    now: () => now,
  });
  return {
    spell,
    lines,
    advance: (ms: number) => {
      now += ms;
    },
  };
};

const WARN = 40;
const INFO = 30;

void describe('FailureSpell', () => {
  void it('tells the first failure with its error, and not the retries that fail alike', () => {
    const { spell, lines, advance } = spellWithLog();
    const timeout = new Error('Command timed out');
    spell.failed(timeout, { partition: 3 });
    for (let i = 0; i < 20; i++) {
      advance(1_000);
      spell.failed(timeout, { partition: 3 });
    }
    assert.equal(lines.length, 1);
    assert.equal(lines[0]?.level, WARN);
    assert.equal(lines[0]?.msg, 'Command timed out; retrying');
    assert.ok(lines[0]?.err, 'the first line carries the error, its stack with it');
    assert.equal(spell.failing, true);
  });

  void it('tells each new reason at once, and not again when failures alternate between them', () => {
    const { spell, lines, advance } = spellWithLog();
    for (const reason of ['Command timed out', 'Connection is closed.', 'Command timed out']) {
      spell.failed(new Error(reason));
      advance(500);
      spell.failed(new Error(reason));
      advance(500);
    }
    assert.deepEqual(
      lines.map((l) => [l.msg, l.failures, l.failing_for_s]),
      [
        ['Command timed out; retrying', 1, 0],
        ['Connection is closed.; retrying', 3, 1],
      ],
    );
  });

  void it('reminds once a minute while the same failure goes on, with its length and count', () => {
    const { spell, lines, advance } = spellWithLog();
    const refused = new Error('connect ECONNREFUSED 127.0.0.1:56379');
    for (let i = 0; i < 30; i++) {
      spell.failed(refused);
      advance(5_000);
    }
    // Failures at 0, 5, …, 145 s: told at 0, then at 60 and 120 s.
    assert.deepEqual(
      lines.map((l) => l.msg),
      [
        'connect ECONNREFUSED 127.0.0.1:56379; retrying',
        'still failing after 60 s (13 attempts): connect ECONNREFUSED 127.0.0.1:56379',
        'still failing after 120 s (25 attempts): connect ECONNREFUSED 127.0.0.1:56379',
      ],
    );
    assert.ok(lines.every((l) => l.level === WARN));
  });

  void it('sends the retries it does not tell to debug', () => {
    const { spell, lines } = spellWithLog('debug');
    spell.failed(new Error('Command timed out'));
    spell.failed(new Error('Command timed out'));
    assert.deepEqual(
      lines.map((l) => l.level),
      [WARN, 20],
    );
  });

  void it('tells the end of a spell once, with how long it lasted and how many attempts failed', () => {
    const { spell, lines, advance } = spellWithLog();
    spell.failed(new Error('Command timed out'), { partition: 3 });
    advance(20_000);
    spell.failed(new Error('Command timed out'), { partition: 3 });
    advance(21_340);
    spell.ended({ partition: 3 });
    spell.ended({ partition: 3 });
    assert.equal(lines.length, 2);
    assert.equal(lines[1]?.level, INFO);
    assert.equal(lines[1]?.msg, 'reading partition 3 works again after 41.3 s (2 failed attempts)');
    assert.equal(spell.failing, false);
  });

  void it('says nothing of an attempt that succeeds outside a spell, and starts afresh after one', () => {
    const { spell, lines, advance } = spellWithLog();
    spell.ended();
    assert.equal(lines.length, 0);
    spell.failed(new Error('Command timed out'));
    spell.ended();
    advance(1_000);
    spell.failed(new Error('Command timed out'));
    assert.deepEqual(
      lines.map((l) => [l.msg, l.failures]),
      [
        ['Command timed out; retrying', 1],
        ['reading partition 3 works again after 0 s (1 failed attempt)', 1],
        ['Command timed out; retrying', 1],
      ],
    );
  });
});
