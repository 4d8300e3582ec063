import { createToken, SCOPES, type Scope } from '../auth/api-tokens.ts';
import { CliError, print } from './output.ts';

type TokenFlags = { json: boolean; name?: string; scopes?: string };

const parseScopes = (text: string | undefined): Scope[] => {
  const scopes = (text ?? '')
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s !== '');
  const unknown = scopes.filter((s) => !(SCOPES as readonly string[]).includes(s));
  if (scopes.length === 0 || unknown.length > 0) {
    throw new CliError(`--scopes takes a comma-separated list of ${SCOPES.join(', ')}`);
  }
  return scopes as Scope[];
};

/** `outpost token create`: the token is printed once here and stored nowhere, only its digest. */
export const tokenCommand = async (action: string | undefined, flags: TokenFlags) => {
  if (action !== 'create') {
    throw new CliError('usage: outpost token create --name N --scopes write,read[,admin]');
  }
  if (!flags.name) {
    throw new CliError('--name is required');
  }
  let created: ReturnType<typeof createToken>;
  try {
    created = createToken(flags.name, parseScopes(flags.scopes));
  } catch (err) {
    if (err instanceof CliError) {
      throw err;
    }
    throw new CliError('--name takes letters, digits and ._@:- (1-64, starting alphanumeric)');
  }
  if (flags.json) {
    print(JSON.stringify(created));
    return;
  }
  print(
    [
      `token (shown once, store it now): ${created.token}`,
      '',
      'add this entry to the OUTPOST_API_TOKENS file (then SIGHUP, or wait a second):',
      JSON.stringify(created.entry),
    ].join('\n'),
  );
};
