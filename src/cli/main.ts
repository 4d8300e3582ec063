import { parseArgs } from 'node:util';
import { ConfigError, LOCAL_STACK, loadConfig } from '../config.ts';
import { runMigrations } from '../db/migrate.ts';
import { createLogger } from '../observability/logger.ts';
import { reasonOf } from '../reason.ts';
import { type Role, startService } from '../service.ts';
import {
  findStackDir,
  type StackOptions,
  stackDown,
  stackReset,
  stackStatus,
  stackUp,
} from '../stack/stack.ts';
import { refuseWhatIsNotTaken } from './grammar.ts';
import { dead, pending } from './incident.ts';
import { integrity } from './integrity.ts';
import { CliError, print, table } from './output.ts';
import { rebuildCommand, replayCommand } from './recovery.ts';
import { tokenCommand } from './token.ts';
import { isCommand, USAGE, usageOf } from './usage.ts';

const localStack = (): StackOptions => ({
  dir: findStackDir(process.cwd()),
  mainPort: LOCAL_STACK.mainPort,
  replicaPort: LOCAL_STACK.replicaPort,
  redisPort: LOCAL_STACK.redisPort,
  pgCron: 'auto',
  appendfsync: 'always',
});

type Flags = { json: boolean; only?: string };

const stack = async (action: string | undefined, flags: Flags) => {
  const options = localStack();
  switch (action) {
    case 'up': {
      await stackUp(options);
      const status = await stackStatus(options.dir, options);
      print(flags.json ? JSON.stringify(status) : `local stack running\n${stackTable(status)}`);
      return;
    }
    case 'down': {
      const stopped = await stackDown(options.dir);
      print(
        flags.json
          ? JSON.stringify({ stopped })
          : stopped
            ? `local stack stopped (${options.dir})`
            : `no local stack was running in ${options.dir}`,
      );
      return;
    }
    case 'reset':
      await stackReset(options.dir);
      print(
        flags.json ? JSON.stringify({ reset: true }) : 'local stack stopped and its data removed',
      );
      return;
    case 'status': {
      const status = await stackStatus(options.dir, options);
      print(flags.json ? JSON.stringify(status) : stackTable(status));
      return;
    }
    default:
      throw new CliError('usage: outpost stack up|down|status|reset');
  }
};

const stackTable = (status: Awaited<ReturnType<typeof stackStatus>>) =>
  table(
    (['main', 'replica', 'redis'] as const).map((name) => ({
      service: name,
      state: status[name].state,
      url: status[name].url,
    })),
  );

const serveUntilSignalled = async (role: Role) => {
  const config = loadConfig();
  const logger = createLogger(config.logLevel);
  const service = await startService(config, logger, role);
  let signals = 0;
  const shutdown = (signal: string) => {
    signals += 1;
    if (signals > 1) {
      logger.warn({ signal }, 'already stopping');
      return;
    }
    logger.info({ signal }, 'signal received');
    const force = setTimeout(() => {
      logger.error('shutdown took too long, exiting');
      process.exit(1);
    }, 30_000);
    force.unref();
    void service.stop().then(() => process.exit(0));
  };
  process.on('SIGTERM', () => shutdown('SIGTERM'));
  process.on('SIGINT', () => shutdown('SIGINT'));
  // The conventional "re-read your configuration": revokes or adds API tokens without a restart.
  process.on('SIGHUP', () => {
    logger.info({ signal: 'SIGHUP' }, 'signal received, reloading API tokens');
    service.reloadTokens();
  });
};

const main = async (argv: string[]) => {
  const { values, positionals, tokens } = parseArgs({
    args: argv,
    allowPositionals: true,
    tokens: true,
    options: {
      json: { type: 'boolean', default: false },
      only: { type: 'string' },
      partition: { type: 'string' },
      idle: { type: 'string' },
      consumer: { type: 'string' },
      limit: { type: 'string' },
      cursor: { type: 'string' },
      reason: { type: 'string' },
      all: { type: 'boolean', default: false },
      wait: { type: 'boolean', default: false },
      from: { type: 'string' },
      to: { type: 'string' },
      'dry-run': { type: 'boolean', default: false },
      verify: { type: 'boolean', default: false },
      name: { type: 'string' },
      scopes: { type: 'string' },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  const flags: Flags = { json: values.json ?? false, only: values.only };
  const [command, action, argument] = positionals;
  const incidentFlags = { ...values, json: values.json ?? false };
  if (command === undefined && !values.help) {
    // Nothing asked is nothing done: a script's empty command must not pass for success.
    process.stderr.write(`${USAGE}\n`);
    throw new CliError('no command given; see outpost --help');
  }
  if (values.help || command === 'help') {
    // `outpost help replay` as `outpost replay --help`; a command that does not exist is named.
    const topic = command === 'help' ? action : command;
    if (topic !== undefined && !isCommand(topic)) {
      throw new CliError(`unknown command ${topic}; see outpost --help`);
    }
    print(topic === undefined ? USAGE : usageOf(topic));
    return;
  }
  refuseWhatIsNotTaken(
    positionals,
    tokens.flatMap((token) => (token.kind === 'option' ? [token.name] : [])),
  );
  switch (command) {
    case 'stack':
      return stack(action, flags);
    case 'pending':
      return pending(incidentFlags);
    case 'dead':
      return dead(action, argument, incidentFlags);
    case 'integrity':
      return integrity(action, flags);
    case 'replay':
      return replayCommand(incidentFlags);
    case 'rebuild-projections':
      return rebuildCommand(incidentFlags);
    case 'token':
      return tokenCommand(action, { ...values, json: values.json ?? false });
    case 'migrate': {
      const config = loadConfig();
      // Only a schedule someone chose: the default would undo what the projectors were given.
      const { rescheduled, notRescheduled } = await runMigrations(config.mainDatabaseUrl, {
        integritySchedule: config.integrityScheduleGiven ? config.integritySchedule : undefined,
      });
      if (notRescheduled !== undefined) {
        process.stderr.write(
          `outpost: pg_cron's integrity job keeps its schedule (${reasonOf(notRescheduled)}); a projector gives it OUTPOST_INTEGRITY_SCHEDULE when it starts\n`,
        );
      }
      print(
        flags.json
          ? JSON.stringify({
              migrated: true,
              ...(rescheduled && { integrity_schedule: rescheduled }),
            })
          : `migrations applied${rescheduled ? `; pg_cron's integrity job now runs on ${rescheduled} (OUTPOST_INTEGRITY_SCHEDULE)` : ''}`,
      );
      return;
    }
    case 'serve': {
      if (flags.only !== undefined && flags.only !== 'api' && flags.only !== 'projector') {
        throw new CliError('--only takes api or projector');
      }
      return serveUntilSignalled((flags.only as Role | undefined) ?? 'all');
    }
    case 'start': {
      // A variable the service would refuse is said before the stack starts, not after.
      const { mainDatabaseUrl } = loadConfig();
      await stack('up', flags);
      // The schedule is the service's to give, as it starts.
      await runMigrations(mainDatabaseUrl);
      return serveUntilSignalled('all');
    }
    default:
      throw new CliError(`unknown command ${command}; see outpost --help`);
  }
};

// A reader that stops early (`outpost pending | head`) closes the pipe: what it wanted is out, and
// the rest has nowhere to go. Unhandled, the write's EPIPE ended the command with a stack trace.
// Not for the service's log (serve, start), whose stdout is its own concern.
const [command] = process.argv.slice(2);
if (command !== 'serve' && command !== 'start') {
  process.stdout.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code !== 'EPIPE') {
      throw err;
    }
    process.exit(0);
  });
}

main(process.argv.slice(2)).catch((err: unknown) => {
  const message =
    err instanceof ConfigError || err instanceof CliError ? err.message : reasonOf(err);
  process.stderr.write(`outpost: ${message.split('\n').join('; ')}\n`);
  process.exit(1);
});
