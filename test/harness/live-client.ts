import type { LiveMessage } from '../../src/live/live-message.ts';

export type SseFrame = { id?: string; event?: string; data: string };

/**
 * A Server-Sent Events client over fetch that keeps every frame it reads, so tests can wait for
 * the messages they expect without sleeping.
 */
export class SseClient {
  readonly frames: SseFrame[] = [];
  readonly #abort = new AbortController();
  #reading: Promise<void> | undefined;
  status = 0;

  private constructor() {}

  static async open(url: string, headers: Record<string, string> = {}): Promise<SseClient> {
    const client = new SseClient();
    const response = await fetch(url, { headers, signal: client.#abort.signal });
    client.status = response.status;
    if (response.ok && response.body) {
      client.#reading = client.#read(response.body);
    }
    return client;
  }

  messages(): { id: string; message: LiveMessage }[] {
    return this.frames
      .filter((f) => f.event === undefined && f.id !== undefined)
      .map((f) => ({ id: f.id as string, message: JSON.parse(f.data) as LiveMessage }));
  }

  get lastId(): string | undefined {
    return this.messages().at(-1)?.id;
  }

  async close(): Promise<void> {
    this.#abort.abort();
    await this.#reading?.catch(() => undefined);
  }

  async #read(body: ReadableStream<Uint8Array>) {
    const decoder = new TextDecoder();
    let buffer = '';
    try {
      for await (const chunk of body) {
        buffer += decoder.decode(chunk, { stream: true });
        for (let end = buffer.indexOf('\n\n'); end >= 0; end = buffer.indexOf('\n\n')) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const frame: SseFrame = { data: '' };
          for (const line of block.split('\n')) {
            const colon = line.indexOf(':');
            if (colon === 0) {
              continue;
            }
            const field = line.slice(0, colon);
            const value = line.slice(colon + 1).replace(/^ /, '');
            if (field === 'id') {
              frame.id = value;
            } else if (field === 'event') {
              frame.event = value;
            } else if (field === 'data') {
              frame.data += value;
            }
          }
          if (frame.id !== undefined || frame.event !== undefined) {
            this.frames.push(frame);
          }
        }
      }
    } catch {
      // Aborted by close().
    }
  }
}

/** The states of one event as a client saw them, in order. */
export const statesOf = (messages: { message: LiveMessage }[], eventId: string) =>
  messages.filter((m) => m.message.event_id === eventId).map((m) => m.message.state);
