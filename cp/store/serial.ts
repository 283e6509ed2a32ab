/**
 * A FIFO async mutex: tasks run one at a time, in call order. The embedded store runs its
 * commits through one per handle, so commits of one handle never conflict on the revision
 * counter and only commits of other handles or processes make a commit retry.
 *
 * @module
 */

/** Runs async tasks one at a time, in call order. */
export class SerialQueue {
  #tail: Promise<unknown> = Promise.resolve();

  /**
   * Runs `fn` after every task queued before it has settled; resolves or rejects as `fn` does
   * (a failing task does not block later ones).
   */
  run<T>(fn: () => Promise<T>): Promise<T> {
    const p = this.#tail.then(fn);
    this.#tail = p.catch(() => {});
    return p;
  }

  /** Resolves once every task queued so far has settled. */
  async idle(): Promise<void> {
    await this.#tail;
  }
}
