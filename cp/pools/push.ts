/**
 * Pushing desired pools to agents in the background, for the pool provisioner: at most
 * {@link MAX_PUSHES_IN_FLIGHT} at once, one per node at a time, a request for a node already
 * waiting or in flight coalesced into one more push after it. The provisioner's reconcile loop
 * never waits on an agent (a node that is slow or unreachable would stall provisioning for every
 * other node), and a thousand nodes becoming ready at once make a bounded number of connections.
 * Pushes are best effort: heartbeat responses carry the same desired set.
 *
 * @module
 */

/** Most pushes running at once. */
export const MAX_PUSHES_IN_FLIGHT = 16;

/** A coalescing, bounded background runner of `push(node)`. */
export class PushQueue {
  #waiting: string[] = [];
  #queued = new Set<string>();
  #running = new Set<string>();
  #again = new Set<string>();
  #idle: (() => void)[] = [];

  /** @param push the push of one node's desired pools (its errors are its own to log) */
  constructor(private push: (node: string) => Promise<void>, private max = MAX_PUSHES_IN_FLIGHT) {}

  /** Asks for a push of `node`'s desired pools (coalesced with one waiting or running). */
  request(node: string): void {
    if (this.#running.has(node)) {
      this.#again.add(node);
      return;
    }
    if (this.#queued.has(node)) return;
    this.#queued.add(node);
    this.#waiting.push(node);
    this.#pump();
  }

  /** Resolves when nothing is waiting or running (tests, shutdown). */
  idle(): Promise<void> {
    if (this.#waiting.length === 0 && this.#running.size === 0) return Promise.resolve();
    return new Promise((r) => this.#idle.push(r));
  }

  #pump(): void {
    while (this.#running.size < this.max && this.#waiting.length > 0) {
      const node = this.#waiting.shift()!;
      this.#queued.delete(node);
      this.#running.add(node);
      this.push(node).catch(() => {}).finally(() => {
        this.#running.delete(node);
        if (this.#again.delete(node)) this.request(node);
        this.#pump();
        if (this.#waiting.length === 0 && this.#running.size === 0) {
          for (const r of this.#idle.splice(0)) r();
        }
      });
    }
  }
}
