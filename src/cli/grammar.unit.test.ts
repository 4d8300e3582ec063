import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { refuseWhatIsNotTaken } from './grammar.ts';

const refusal = (positionals: string[], given: string[] = []) => {
  try {
    refuseWhatIsNotTaken(positionals, given);
    return undefined;
  } catch (err) {
    return (err as Error).message;
  }
};

void describe('refuseWhatIsNotTaken', () => {
  void it('refuses a dry run a command would ignore and then do the real thing', () => {
    assert.match(
      refusal(['dead', 'retry'], ['all', 'dry-run']) ?? '',
      /^outpost dead retry does not take --dry-run; see outpost dead --help \(nothing was done\)$/,
    );
    assert.match(
      refusal(['stack', 'reset'], ['dry-run']) ?? '',
      /stack reset does not take --dry-run/,
    );
    assert.match(
      refusal(['migrate'], ['dry-run', 'json']) ?? '',
      /migrate does not take --dry-run/,
    );
    assert.match(
      refusal(['dead', 'discard', 'x'], ['reason', 'dry-run']) ?? '',
      /dead discard does not take --dry-run/,
    );
  });

  void it('refuses a flag of another command, naming each once', () => {
    assert.match(
      refusal(['rebuild-projections'], ['partition', 'partition', 'from']) ?? '',
      /rebuild-projections does not take --partition, --from;/,
    );
    assert.match(
      refusal(['dead', 'retry'], ['all', 'partition']) ?? '',
      /does not take --partition/,
    );
  });

  void it('refuses words past those a command takes', () => {
    assert.match(
      refusal(['dead', 'retry', 'a', 'b']) ?? '',
      /^outpost dead retry takes one id, not "b";/,
    );
    assert.match(refusal(['pending', 'now']) ?? '', /^outpost pending takes no words, not "now";/);
    assert.match(refusal(['stack', 'up', 'fast']) ?? '', /stack up takes no words/);
  });

  void it("takes each command's own flags, --json and --help anywhere, and leaves unknown actions to their command", () => {
    for (const [positionals, given] of [
      [
        ['dead', 'retry'],
        ['all', 'json'],
      ],
      [['dead', 'retry', 'id'], []],
      [
        ['dead', 'list'],
        ['limit', 'cursor'],
      ],
      [['replay'], ['from', 'to', 'partition', 'dry-run', 'json']],
      [['rebuild-projections'], ['verify']],
      [['pending'], ['partition', 'idle', 'consumer', 'limit', 'help']],
      [['serve'], ['only']],
      [
        ['token', 'create'],
        ['name', 'scopes'],
      ],
      [['integrity', 'rebuild'], ['dry-run']],
      [['no-such-command', 'x', 'y'], ['all']],
    ] as [string[], string[]][]) {
      assert.equal(refusal(positionals, given), undefined, positionals.join(' '));
    }
  });
});
