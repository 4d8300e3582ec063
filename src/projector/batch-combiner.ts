import type pg from 'pg';
import { applyBatch, applyBatches, type BatchRequest, type BatchResult } from './apply-batch.ts';

type Waiting = {
  request: BatchRequest;
  resolve: (result: BatchResult) => void;
  reject: (err: unknown) => void;
};

/**
 * Group commit for projection. The partitions of one process read their streams independently,
 * and below saturation each read returns an event or two: applied alone, every one of them paid
 * for its own round trips, its own commits and WAL flush, and its own wake-up of the replica.
 * Here the batches that become ready while a write is out wait for it and then go together, as
 * one transaction; a lone batch goes at once. At eight partitions and 500 events/s this halved
 * the main database's commits.
 *
 * A combined write that fails for any reason (a lapsed lease, an event PostgreSQL refuses, a
 * lost connection) is applied again one partition at a time, so each partition meets only its
 * own failure, exactly as if it had never been combined.
 */
export class BatchCombiner {
  readonly #pool: pg.Pool;
  #waiting: Waiting[] = [];
  #writing = false;

  constructor(pool: pg.Pool) {
    this.#pool = pool;
  }

  apply(request: BatchRequest): Promise<BatchResult> {
    return new Promise((resolve, reject) => {
      this.#waiting.push({ request, resolve, reject });
      if (!this.#writing) {
        this.#writing = true;
        // Reads that returned in the same turn of the event loop go in the first write too.
        setImmediate(() => void this.#writeWaiting());
      }
    });
  }

  async #writeWaiting(): Promise<void> {
    while (this.#waiting.length > 0) {
      const taken = this.#waiting;
      this.#waiting = [];
      if (taken.length > 1) {
        try {
          const results = await applyBatches(
            this.#pool,
            taken.map((w) => w.request),
          );
          for (const [i, w] of taken.entries()) {
            w.resolve(results[i] as BatchResult);
          }
          continue;
        } catch {
          // Each partition is told its own outcome below.
        }
      }
      await Promise.all(taken.map((w) => this.#applyAlone(w)));
    }
    this.#writing = false;
  }

  async #applyAlone({ request, resolve, reject }: Waiting): Promise<void> {
    try {
      resolve(await applyBatch(this.#pool, request.entries, request.lease, request.heldAggregates));
    } catch (err) {
      reject(err);
    }
  }
}
