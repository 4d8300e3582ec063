import { connect, createServer, type Server, type Socket } from 'node:net';

type Link = {
  client: Socket;
  upstream: Socket | undefined;
  held: { to: 'up' | 'down'; chunk: Buffer }[];
  /** The client hung up while packets were dropped: its close reaches the server only on heal. */
  clientGone: boolean;
  /** A request `loseReplyTo` names went up this link: the reply it names is lost with the link. */
  replyToLose?: (chunk: Buffer) => boolean;
};

/**
 * A TCP proxy the test controls. `blackhole()` models a link that silently stops delivering
 * packets: nothing is closed or refused, bytes simply stop arriving (held back, as TCP would keep
 * retransmitting them) and new connections hang. Only timeouts can notice, and a client that
 * gives up and closes is not seen to by the server either. `heal()` delivers what was held, the
 * closes last, as a link that comes back does.
 */
export class BlackholeProxy {
  readonly #links = new Set<Link>();
  #dropping = false;
  #losingReplies = false;
  #replyToLose: ((chunk: Buffer) => boolean) | undefined;
  #requestToLose:
    | { request: (chunk: Buffer) => boolean; reply: (chunk: Buffer) => boolean }
    | undefined;
  #repliesLostWithConnection = 0;

  private constructor(
    private readonly server: Server,
    readonly port: number,
    private target: { port: number; host: string },
  ) {}

  static async start(targetPort: number, targetHost = '127.0.0.1'): Promise<BlackholeProxy> {
    let proxy: BlackholeProxy | undefined;
    const server = createServer((client) => proxy?.accept(client));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const address = server.address();
    proxy = new BlackholeProxy(server, typeof address === 'object' && address ? address.port : 0, {
      port: targetPort,
      host: targetHost,
    });
    return proxy;
  }

  accept(client: Socket) {
    const link: Link = { client, upstream: undefined, held: [], clientGone: false };
    this.#links.add(link);
    client.on('error', () => undefined);
    client.on('close', () => {
      if (this.#dropping) {
        link.clientGone = true;
        return;
      }
      link.upstream?.destroy();
      this.#links.delete(link);
    });
    client.on('data', (chunk) => this.#forward(link, 'up', chunk));
    if (!this.#dropping) {
      this.#connect(link);
    }
  }

  #connect(link: Link) {
    const upstream = connect(this.target.port, this.target.host);
    link.upstream = upstream;
    upstream.on('error', () => link.client.destroy());
    upstream.on('close', () => link.client.destroy());
    upstream.on('data', (chunk) => this.#forward(link, 'down', chunk));
  }

  #forward(link: Link, to: 'up' | 'down', chunk: Buffer) {
    if (to === 'down' && this.#losingReplies) {
      return;
    }
    if (to === 'up' && this.#requestToLose?.request(chunk)) {
      link.replyToLose = this.#requestToLose.reply;
      this.#requestToLose = undefined;
    }
    if (to === 'down' && link.replyToLose?.(chunk)) {
      link.replyToLose = undefined;
      this.#loseWithConnection(link);
      return;
    }
    if (to === 'down' && this.#replyToLose?.(chunk)) {
      this.#replyToLose = undefined;
      this.#loseWithConnection(link);
      return;
    }
    if (this.#dropping || !link.upstream) {
      link.held.push({ to, chunk });
      return;
    }
    (to === 'up' ? link.upstream : link.client).write(chunk);
  }

  #loseWithConnection(link: Link) {
    this.#repliesLostWithConnection += 1;
    link.client.destroy();
  }

  /**
   * The next reply that `matches` is lost and its client's connection reset: the server ran the
   * request, and the client sees its connection drop with the request unanswered.
   */
  loseReplyWithConnection(matches: (chunk: Buffer) => boolean): void {
    this.#replyToLose = matches;
  }

  /**
   * After the next request that `request` matches, the first reply on its connection that `reply`
   * matches is lost and the connection reset: for a reply too common to know by itself, such as a
   * nil.
   */
  loseReplyTo(request: (chunk: Buffer) => boolean, reply: (chunk: Buffer) => boolean): void {
    this.#requestToLose = { request, reply };
  }

  /** How many replies `loseReplyWithConnection` and `loseReplyTo` have lost so far. */
  get repliesLostWithConnection(): number {
    return this.#repliesLostWithConnection;
  }

  /** From now on requests still arrive, and what the server answers is lost on the way back. */
  loseReplies(): void {
    this.#losingReplies = true;
  }

  /** Replies arrive again; those lost meanwhile stay lost, as packets dropped for good are. */
  answerAgain(): void {
    this.#losingReplies = false;
  }

  /** `url` (a connection URL naming the proxied server's port) sent through this proxy instead. */
  reroute(url: string): string {
    return url.replace(`:${this.target.port}/`, `:${this.port}/`);
  }

  /**
   * New connections go to `port` from now on, as a name whose address moved (a failover under a
   * DNS name or a virtual IP) leads there; open ones stay where they are until `dropConnections`.
   */
  retarget(port: number, host = '127.0.0.1'): void {
    this.target = { port, host };
  }

  /** Every open connection is reset, as a server that went away resets them. */
  dropConnections(): void {
    for (const link of this.#links) {
      link.client.destroy();
      link.upstream?.destroy();
    }
    this.#links.clear();
  }

  blackhole(): void {
    this.#dropping = true;
  }

  heal(): void {
    this.#dropping = false;
    for (const link of this.#links) {
      if (link.clientGone) {
        // What it sent before hanging up arrives, then its close; nothing can reach it any more.
        for (const { to, chunk } of link.held.splice(0)) {
          if (to === 'up') {
            link.upstream?.write(chunk);
          }
        }
        link.upstream?.end();
        this.#links.delete(link);
        continue;
      }
      if (!link.upstream && !link.client.destroyed) {
        this.#connect(link);
      }
      for (const { to, chunk } of link.held.splice(0)) {
        this.#forward(link, to, chunk);
      }
    }
  }

  async close(): Promise<void> {
    for (const link of this.#links) {
      link.client.destroy();
      link.upstream?.destroy();
    }
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}
