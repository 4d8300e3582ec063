/** The CLI's usage text (DESIGN §7): one line per command, continuation lines indented. */
export const USAGE = `usage: outpost <command> [options]

  start                         stack up, migrate, then serve (the quick start)
  stack up|down|status|reset    the local PostgreSQL primary + replica and Redis under .outpost/
  migrate                       apply database migrations to MAIN_DATABASE_URL
  serve [--only api|projector]  run the API, projector and acker (or one of them)
                                --only projector serves /health, /buffer-stats and /metrics on OUTPOST_PORT
  pending [--partition N] [--idle 60s] [--consumer C] [--limit N]
                                what waits in the pending lists, and whether for the projector or the replica
  dead list [--limit N] [--cursor C]|show <id>|retry <id>|retry --all [--wait]|discard <id> --reason R
                                dead-lettered events (the id is the event id, or
                                undecodable-<partition>-<entry id> as listed); a retry puts back
                                all of its aggregate's, in the order accepted; retry --wait waits
                                until they are applied or dead again, and exits 1 unless applied
  integrity refresh|status      refresh the integrity views now, or show the latest snapshot
  replay --from ID|TIME [--to ID|TIME] [--partition N] [--dry-run]
                                give the main database every logged event it lacks (after a restore)
  rebuild-projections [--dry-run|--verify]
                                recompute projection rows from the events table
  token create --name N --scopes write,read[,admin]
                                a new API token, printed once, and the entry for OUTPOST_API_TOKENS

Every command takes --json. Exit code 0 on success, 1 on failure with a one-line reason.`;

/** `outpost <command> --help`: that command's lines of the usage, with the common footer. */
const usageLines = USAGE.split('\n');

/** Where the usage of `command` begins, -1 for no such command. */
const usageLineOf = (command: string) =>
  usageLines.findIndex((line) => line.startsWith(`  ${command} `) || line === `  ${command}`);

export const isCommand = (command: string): boolean => usageLineOf(command) !== -1;

export const usageOf = (command: string): string => {
  const lines = usageLines;
  const start = usageLineOf(command);
  if (start === -1) {
    return USAGE;
  }
  const own = [lines[start]];
  for (const line of lines.slice(start + 1)) {
    if (!line.startsWith('    ')) {
      break;
    }
    own.push(line);
  }
  return `usage: outpost ${command} [options]\n\n${own.join('\n')}\n\n${lines.at(-1)}`;
};
