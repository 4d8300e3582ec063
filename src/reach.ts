import { ReplyError } from 'ioredis';
import { parse as parseConnectionString } from 'pg-connection-string';
import { LOCAL_STACK, redisEndpoint } from './config.ts';
import { databaseReason, isDatabaseAnswer } from './projector/errors.ts';
import { reasonOf } from './reason.ts';

const LOCAL_STACK_PORTS = new Set<string>(Object.values(LOCAL_STACK).map(String));

/**
 * Where a connection URL points, as `host:port`, with the drivers' default ports. Never throws:
 * it is asked while reporting another failure.
 */
const whereIs = (url: string): { host: string; port: string } => {
  try {
    if (/^postgres(ql)?:/.test(url)) {
      const { host, port } = parseConnectionString(url);
      return { host: host || 'localhost', port: port || '5432' };
    }
    const endpoint = redisEndpoint(url);
    return 'path' in endpoint
      ? { host: endpoint.path, port: '' }
      : { host: endpoint.host || 'localhost', port: endpoint.port };
  } catch {
    return { host: 'the configured address', port: '' };
  }
};

/** `host:port` of a connection URL, for the lines operators read. */
export const addressOf = (url: string): string => {
  const { host, port } = whereIs(url);
  if (port === '') {
    return host;
  }
  // An IPv6 address in brackets, as in a URL: `::1:5432` would read as part of the address.
  return host.includes(':') && !host.startsWith('[') ? `[${host}]:${port}` : `${host}:${port}`;
};

/**
 * A server that did not answer, named with its address and the operator's next look: the
 * driver's own error names an address at best, never which of the site's servers it is. One that
 * answered and would not serve (too many clients, starting up or shutting down, no such
 * database) runs: asking whether it is running would send the operator the wrong way.
 */
export const cannotReach = (what: string, url: string, reason: unknown): Error => {
  // A database's refusal, or Redis's (LOADING, BUSY, MASTERDOWN, TRYAGAIN), in its own words.
  const refusal = isDatabaseAnswer(reason)
    ? databaseReason(reason)
    : reason instanceof ReplyError
      ? (reason as Error).message
      : undefined;
  if (refusal !== undefined) {
    return new Error(`${what} at ${addressOf(url)} answered and refused: ${refusal}`, {
      cause: reason,
    });
  }
  // `outpost stack status` knows only the local stack: elsewhere (compose, real hosts) the
  // operator's next look is the address itself.
  const nextStep = LOCAL_STACK_PORTS.has(whereIs(url).port)
    ? 'is it running? (outpost stack status)'
    : 'is it running, and is this the address the service uses (its env file)?';
  return new Error(
    `cannot reach ${what} at ${addressOf(url)} (${reasonOf(reason, 'no answer')}); ${nextStep}`,
    { cause: reason },
  );
};
