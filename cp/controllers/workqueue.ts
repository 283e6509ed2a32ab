/**
 * A keyed work queue with rate-limited requeue, the heart of every controller (the shape of
 * client-go's `workqueue.RateLimitingInterface`):
 *
 * - a key is queued at most once, however often it is added (changes coalesce);
 * - a key being processed is never handed to a second worker; adding it meanwhile marks it
 *   dirty and it is queued again when {@link WorkQueue.done} is called;
 * - {@link WorkQueue.addRateLimited} requeues after a per-key exponential backoff
 *   (`baseDelayMs · 2^failures`, at most `maxDelayMs`) until {@link WorkQueue.forget};
 * - {@link WorkQueue.addAfter} queues a key once a delay has passed (timers are injectable so
 *   tests need no sleeps).
 *
 * @example
 * ```ts
 * const q = new WorkQueue<string>();
 * q.add("vm-a");
 * const key = await q.get(); // "vm-a"
 * try { await reconcile(key!); q.forget(key!); } catch { q.addRateLimited(key!); }
 * finally { q.done(key!); }
 * ```
 *
 * @module
 */

/** Timer functions (injectable for tests). */
export interface Timers {
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

/** The real timers. */
export const realTimers: Timers = {
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (h) => clearTimeout(h as number),
};

/** Options of {@link WorkQueue}. */
export interface WorkQueueOptions {
  /** First rate-limited delay, ms (default 50). */
  baseDelayMs?: number;
  /** Longest rate-limited delay, ms (default 60 000). */
  maxDelayMs?: number;
  timers?: Timers;
}

/** A keyed, de-duplicating, rate-limited work queue. */
export class WorkQueue<K = string> {
  #queue: K[] = [];
  #queued = new Set<K>();
  #processing = new Set<K>();
  #dirty = new Set<K>();
  #failures = new Map<K, number>();
  #delayed = new Map<K, { at: number; handle: unknown }>();
  #waiters: ((k: K | null) => void)[] = [];
  #shutdown = false;
  #o: Required<WorkQueueOptions>;

  constructor(opts: WorkQueueOptions = {}) {
    this.#o = {
      baseDelayMs: opts.baseDelayMs ?? 50,
      maxDelayMs: opts.maxDelayMs ?? 60_000,
      timers: opts.timers ?? realTimers,
    };
  }

  /** Keys waiting (not counting delayed or in-process keys). */
  get length(): number {
    return this.#queue.length;
  }

  /** True after {@link shutDown}. */
  get shuttingDown(): boolean {
    return this.#shutdown;
  }

  /** Queues `key` now (no-op when already queued; deferred while it is being processed). */
  add(key: K): void {
    if (this.#shutdown) return;
    if (this.#processing.has(key)) {
      this.#dirty.add(key);
      return;
    }
    if (this.#queued.has(key)) return;
    const waiter = this.#waiters.shift();
    if (waiter) {
      this.#processing.add(key);
      waiter(key);
      return;
    }
    this.#queued.add(key);
    this.#queue.push(key);
  }

  /** Queues `key` after `ms` (an earlier pending delay for the key wins). */
  addAfter(key: K, ms: number): void {
    if (this.#shutdown) return;
    if (ms <= 0) return this.add(key);
    const at = Date.now() + ms;
    const cur = this.#delayed.get(key);
    if (cur && cur.at <= at) return;
    if (cur) this.#o.timers.clearTimeout(cur.handle);
    const handle = this.#o.timers.setTimeout(() => {
      this.#delayed.delete(key);
      this.add(key);
    }, ms);
    this.#delayed.set(key, { at, handle });
  }

  /** The backoff the next {@link addRateLimited} of `key` would use, ms. */
  nextDelayMs(key: K): number {
    const n = this.#failures.get(key) ?? 0;
    return Math.min(this.#o.maxDelayMs, this.#o.baseDelayMs * 2 ** n);
  }

  /** Requeues `key` after its backoff and counts a failure. */
  addRateLimited(key: K): void {
    const delay = this.nextDelayMs(key);
    this.#failures.set(key, (this.#failures.get(key) ?? 0) + 1);
    this.addAfter(key, delay);
  }

  /** Forgets `key`'s failures (its next rate-limited delay is the base again). */
  forget(key: K): void {
    this.#failures.delete(key);
  }

  /** Failures counted for `key` since the last {@link forget}. */
  failures(key: K): number {
    return this.#failures.get(key) ?? 0;
  }

  /**
   * The next key to process (marked in-process until {@link done}); null once shut down.
   */
  get(): Promise<K | null> {
    if (this.#shutdown) return Promise.resolve(null);
    const key = this.#queue.shift();
    if (key !== undefined) {
      this.#queued.delete(key);
      this.#processing.add(key);
      return Promise.resolve(key);
    }
    return new Promise((resolve) => this.#waiters.push(resolve));
  }

  /** Marks `key` processed; a key added meanwhile is queued again. */
  done(key: K): void {
    this.#processing.delete(key);
    if (this.#dirty.delete(key)) this.add(key);
  }

  /** Stops the queue: pending {@link get} calls resolve null, timers are cleared. */
  shutDown(): void {
    this.#shutdown = true;
    for (const d of this.#delayed.values()) this.#o.timers.clearTimeout(d.handle);
    this.#delayed.clear();
    for (const w of this.#waiters.splice(0)) w(null);
    this.#queue = [];
    this.#queued.clear();
  }
}
