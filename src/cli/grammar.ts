import { CliError } from './output.ts';

/** What a command (or one action of it) takes besides --json and --help. */
type Takes = {
  readonly flags?: readonly string[];
  /** How many words may follow the command and its action: a dead letter's id. */
  readonly words?: number;
};

/**
 * Each command's own flags and words. The parser knows every command's flags at once, so without
 * this a flag one command ignores would be dropped in silence: `dead retry --all --dry-run` would
 * put every letter back and `stack reset --dry-run` delete the stack's data, by an operator used
 * to the dry runs of replay and rebuild-projections. Actions this does not list are left to their
 * command, which names the ones it has.
 */
const GRAMMAR: Readonly<Record<string, Takes | { readonly actions: Record<string, Takes> }>> = {
  start: {},
  migrate: {},
  serve: { flags: ['only'] },
  pending: { flags: ['partition', 'idle', 'consumer', 'limit'] },
  replay: { flags: ['from', 'to', 'partition', 'dry-run'] },
  'rebuild-projections': { flags: ['dry-run', 'verify'] },
  stack: { actions: { up: {}, down: {}, status: {}, reset: {} } },
  integrity: { actions: { refresh: {}, status: {} } },
  dead: {
    actions: {
      list: { flags: ['limit', 'cursor'] },
      show: { words: 1 },
      retry: { flags: ['all', 'wait'], words: 1 },
      discard: { flags: ['reason'], words: 1 },
    },
  },
  token: { actions: { create: { flags: ['name', 'scopes'] } } },
};

const ALWAYS = new Set(['json', 'help']);

/**
 * Refuses a flag or a word `positionals` and `given` (the options named on the command line)
 * hold that their command does not take, naming it and the command.
 */
export const refuseWhatIsNotTaken = (
  positionals: readonly string[],
  given: readonly string[],
): void => {
  const [command, action] = positionals;
  const grammar = command === undefined ? undefined : GRAMMAR[command];
  if (grammar === undefined) {
    return;
  }
  const takes = 'actions' in grammar ? grammar.actions[action ?? ''] : grammar;
  if (takes === undefined) {
    return;
  }
  const label = 'actions' in grammar ? `${command} ${action}` : command;
  const flags = new Set(takes.flags);
  const foreign = given.filter((flag) => !ALWAYS.has(flag) && !flags.has(flag));
  if (foreign.length > 0) {
    const listed = [...new Set(foreign)].map((flag) => `--${flag}`).join(', ');
    throw new CliError(
      `outpost ${label} does not take ${listed}; see outpost ${command} --help (nothing was done)`,
    );
  }
  const words = positionals.slice('actions' in grammar ? 2 : 1);
  if (words.length > (takes.words ?? 0)) {
    const extra = words.slice(takes.words ?? 0);
    throw new CliError(
      `outpost ${label} takes ${takes.words ? 'one id' : 'no words'}, not ${extra.map((word) => JSON.stringify(word)).join(' ')}; see outpost ${command} --help (nothing was done)`,
    );
  }
};
