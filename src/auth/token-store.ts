import { readFileSync, unwatchFile, watchFile } from 'node:fs';
import type { ApiTokensSource } from '../config.ts';
import type { Logger } from '../observability/logger.ts';
import { parseTokenEntries, TokenSet } from './api-tokens.ts';

export class TokenConfigError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'TokenConfigError';
  }
}

/**
 * The API tokens in force. A token file is read at start (a bad one stops start-up) and again
 * whenever its mtime changes or `reload()` is called (SIGHUP), so a revoked token stops working
 * without a restart. Polling the mtime rather than fs.watch survives editors and config managers
 * that replace the file by rename, which an inode watch silently stops following.
 */
export class TokenStore {
  readonly #source: ApiTokensSource | undefined;
  readonly #logger: Logger;
  readonly #pollMs: number;
  #set: TokenSet | undefined;
  #watching = false;
  #reloadError: string | undefined;

  constructor(source: ApiTokensSource | undefined, logger: Logger, pollMs = 1_000) {
    this.#source = source;
    this.#logger = logger;
    this.#pollMs = pollMs;
    this.#set = source?.kind === 'inline' ? new TokenSet(source.entries) : undefined;
  }

  /**
   * Why the token file's last reading was refused, while the tokens read before stay in force: a
   * revocation made in that edit is not in force (/health, outpost_api_tokens_file_valid).
   */
  get reloadError(): string | undefined {
    return this.#reloadError;
  }

  /** Undefined when no tokens are configured: the domain endpoints are open. */
  get current(): TokenSet | undefined {
    return this.#set;
  }

  start(): void {
    if (this.#source?.kind !== 'file' || this.#watching) {
      return;
    }
    this.#set = this.#read(this.#source.path);
    watchFile(this.#source.path, { interval: this.#pollMs, persistent: false }, (now, before) => {
      if (now.mtimeMs !== before.mtimeMs || now.size !== before.size) {
        this.reload();
      }
    });
    this.#watching = true;
  }

  /**
   * Reads the file again. A file that does not parse keeps the tokens in force and logs at error:
   * a typo must not lock every instrument out, nor open the API.
   */
  reload(): void {
    if (this.#source?.kind !== 'file') {
      return;
    }
    try {
      this.#set = this.#read(this.#source.path);
      this.#reloadError = undefined;
      this.#logger.info({ tokens: this.#set.size }, 'API tokens reloaded');
    } catch (err) {
      this.#reloadError = (err as Error).message;
      this.#logger.error(
        { err },
        'API token file is invalid; keeping the tokens read before, so a token removed in this edit still works until the file is fixed',
      );
    }
  }

  stop(): void {
    if (this.#source?.kind === 'file' && this.#watching) {
      unwatchFile(this.#source.path);
      this.#watching = false;
    }
  }

  #read(path: string): TokenSet {
    let text: string;
    try {
      text = readFileSync(path, 'utf8');
    } catch (err) {
      throw new TokenConfigError(`OUTPOST_API_TOKENS: cannot read ${path}`, { cause: err });
    }
    try {
      return new TokenSet(parseTokenEntries(text));
    } catch (err) {
      throw new TokenConfigError(`OUTPOST_API_TOKENS: ${path}: ${(err as Error).message}`);
    }
  }
}
