import pg from 'pg';
import { pause } from '../projector/backoff.ts';
import { isDatabaseAnswer } from '../projector/errors.ts';

export type LinkWatchdogOptions = {
  url: string;
  /** How often the server is asked a trivial question while the long statement runs. */
  everyMs?: number;
  /** How long an answer may take before the link counts as lost. */
  timeoutMs?: number;
};

/**
 * A statement that may rightly run for many minutes cannot be bounded by a timeout, so a link that
 * silently stops delivering packets would hold it, and whoever waits on it, for as long as the
 * statement timeout allows. The watchdog asks the same server `SELECT 1` over a connection of its
 * own while the statement runs; when an answer does not come in time, `lost` rejects with an error
 * that says so, and the caller abandons the statement.
 */
export class LinkWatchdog {
  readonly lost: Promise<never>;
  readonly #stop = new AbortController();
  readonly #newClient: () => pg.Client;
  #client: pg.Client;
  readonly #running: Promise<void>;
  #waitingForAnswer = false;

  constructor({ url, everyMs = 5_000, timeoutMs = 5_000 }: LinkWatchdogOptions) {
    this.#newClient = () => {
      const client = new pg.Client({
        connectionString: url,
        application_name: 'outpost-link-watchdog',
        connectionTimeoutMillis: timeoutMs,
        query_timeout: timeoutMs,
      });
      client.on('error', () => undefined);
      return client;
    };
    this.#client = this.#newClient();
    let declareLost: (err: Error) => void = () => undefined;
    this.lost = new Promise<never>((_, reject) => {
      declareLost = reject;
    });
    // Nobody may be listening when the link goes after the statement has settled.
    this.lost.catch(() => undefined);
    this.#running = this.#watch(everyMs, declareLost);
  }

  async #watch(everyMs: number, declareLost: (err: Error) => void) {
    const signal = this.#stop.signal;
    let connected = false;
    while (!signal.aborted) {
      try {
        if (!connected) {
          await this.#asking(this.#client.connect());
          connected = true;
        }
        await pause(everyMs, signal);
        if (!signal.aborted) {
          await this.#asking(this.#client.query('SELECT 1'));
        }
      } catch (err) {
        if (signal.aborted) {
          return;
        }
        if (!isDatabaseAnswer(err)) {
          declareLost(
            Object.assign(
              new Error(
                `the link to the database was lost while a long statement ran: ${(err as Error).message}`,
                { cause: err },
              ),
              { code: 'ETIMEDOUT' },
            ),
          );
          return;
        }
        // A server that answers with an error (no connection slot left, a restart under way) is
        // reachable now, and may not be in a minute: ask again on a new connection, next time.
        void this.#client.end().catch(() => undefined);
        this.#client = this.#newClient();
        connected = false;
        await pause(everyMs, signal);
      }
    }
  }

  async #asking<T>(question: Promise<T>): Promise<T> {
    this.#waitingForAnswer = true;
    try {
      return await question;
    } finally {
      this.#waitingForAnswer = false;
    }
  }

  /** Stops asking and closes the watchdog's connection, without waiting on a dead link. */
  stop(): Promise<void> {
    this.#stop.abort();
    if (this.#waitingForAnswer) {
      // A goodbye would queue behind the unanswered connect or probe, on what may be a dead link.
      this.#client.connection.stream.destroy();
    } else {
      void this.#client.end().catch(() => undefined);
    }
    return this.#running;
  }
}
