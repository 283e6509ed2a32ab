/**
 * A keyed mutex: callers with the same key run one after another (FIFO); different keys run
 * concurrently. Used for per-VM operations and per-image downloads.
 *
 * @module
 */

/** Serializes async work per key. */
export class KeyedMutex {
  #tails = new Map<string, Promise<unknown>>();

  /** Runs `fn` after every earlier `run` with the same key has settled. */
  async run<T>(key: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.#tails.get(key) ?? Promise.resolve();
    const current = prev.catch(() => {}).then(fn);
    this.#tails.set(key, current);
    try {
      return await current;
    } finally {
      if (this.#tails.get(key) === current) this.#tails.delete(key);
    }
  }
}
