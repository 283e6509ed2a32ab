/**
 * A keyed mutex: callers with the same key run one after another (FIFO); different keys run
 * concurrently. Used for per-VM operations and for publishing finished downloads into a pool's
 * image cache (one pool at a time; downloads themselves are single-flight, agent/single_flight.ts).
 *
 * @module
 */

/** Serializes async work per key. */
export class KeyedMutex {
  #tails = new Map<string, Promise<unknown>>();

  /**
   * Runs `fn` after every earlier `run` with the same key has settled.
   *
   * @param signal when it aborts while `fn` is still waiting for its turn, the call rejects at
   *   once with the signal's reason and `fn` never runs (later callers keep their place); once
   *   `fn` runs, aborting is `fn`'s business (the call settles when `fn` does)
   */
  async run<T>(key: string, fn: () => Promise<T>, signal?: AbortSignal): Promise<T> {
    const prev = this.#tails.get(key) ?? Promise.resolve();
    let started = false;
    const current = prev.catch(() => {}).then(() => {
      signal?.throwIfAborted();
      started = true;
      return fn();
    });
    this.#tails.set(key, current);
    const cleanup = () => {
      if (this.#tails.get(key) === current) this.#tails.delete(key);
    };
    current.then(cleanup, cleanup);
    if (!signal) return await current;
    signal.throwIfAborted();
    let onAbort!: () => void;
    const aborted = new Promise<never>((_, reject) => {
      onAbort = () => {
        if (!started) reject(signal.reason);
      };
      signal.addEventListener("abort", onAbort, { once: true });
    });
    try {
      return await Promise.race([current, aborted]);
    } finally {
      signal.removeEventListener("abort", onAbort);
    }
  }
}
