import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { z } from 'zod';

export const SCOPES = ['write', 'read', 'admin'] as const;
export type Scope = (typeof SCOPES)[number];

const TOKEN_NAME = /^[A-Za-z0-9][\w.@:-]{0,63}$/;

export const TokenEntry = z.strictObject({
  name: z.string().regex(TOKEN_NAME, 'letters, digits and ._@:- (1-64, starting alphanumeric)'),
  sha256: z
    .string()
    .regex(/^[0-9a-fA-F]{64}$/, 'the hex SHA-256 of the token (64 hex digits)')
    .transform((hex) => hex.toLowerCase()),
  scopes: z.array(z.enum(SCOPES)).min(1),
});
export type TokenEntry = z.infer<typeof TokenEntry>;

export const TokenEntries = z.array(TokenEntry).superRefine((entries, ctx) => {
  const seen = new Set<string>();
  const digests = new Map<string, string>();
  for (const [i, entry] of entries.entries()) {
    if (seen.has(entry.name)) {
      ctx.addIssue({ code: 'custom', path: [i, 'name'], message: `duplicate name ${entry.name}` });
    }
    seen.add(entry.name);
    // One token, two entries: which name and scopes it had would depend on the order.
    const first = digests.get(entry.sha256);
    if (first !== undefined) {
      ctx.addIssue({
        code: 'custom',
        path: [i, 'sha256'],
        message: `the same token as ${first}`,
      });
    }
    digests.set(entry.sha256, first ?? entry.name);
  }
});

export class TokenFileError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'TokenFileError';
  }
}

/** Parses `[{name, sha256, scopes}]`; the message names the entry and field that are wrong. */
export const parseTokenEntries = (text: string): TokenEntry[] => {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    throw new TokenFileError('not JSON');
  }
  const parsed = TokenEntries.safeParse(json);
  if (!parsed.success) {
    throw new TokenFileError(
      parsed.error.issues.map((i) => `${i.path.join('.') || '$'}: ${i.message}`).join('; '),
    );
  }
  return parsed.data;
};

export const sha256Hex = (text: string) => createHash('sha256').update(text).digest('hex');

/** A new random token (256 bits) and the entry that grants it: only the digest is ever stored. */
export const createToken = (name: string, scopes: readonly Scope[]) => {
  const token = `opt_${randomBytes(32).toString('base64url')}`;
  const entry = TokenEntry.parse({ name, sha256: sha256Hex(token), scopes: [...new Set(scopes)] });
  return { token, entry };
};

export type Grant = { name: string; scopes: ReadonlySet<Scope> };

/**
 * The configured tokens, looked up by the digest of the presented token. Every entry is compared
 * with timingSafeEqual on equal-length digests, so neither the time taken nor an early exit tells
 * a caller how much of a guess was right.
 */
export class TokenSet {
  readonly #entries: { digest: Buffer; grant: Grant }[];

  constructor(entries: readonly TokenEntry[]) {
    this.#entries = entries.map((e) => ({
      digest: Buffer.from(e.sha256, 'hex'),
      grant: { name: e.name, scopes: new Set(e.scopes) },
    }));
  }

  get size(): number {
    return this.#entries.length;
  }

  hasScope(scope: Scope): boolean {
    return this.#entries.some((e) => e.grant.scopes.has(scope));
  }

  lookup(token: string): Grant | undefined {
    const presented = createHash('sha256').update(token).digest();
    let found: Grant | undefined;
    for (const entry of this.#entries) {
      if (timingSafeEqual(presented, entry.digest)) {
        found = entry.grant;
      }
    }
    return found;
  }
}
