/**
 * The one loop scaffold every control-plane controller runs on (Kubernetes style): a keyed
 * {@link WorkQueue} fed by informer events and by a periodic resync, drained by `workers`
 * concurrent loops calling a level-triggered `reconcile(key)`. A reconcile that throws is
 * requeued with per-key exponential backoff; one that returns `{requeueAfterMs}` is queued
 * again after that delay (e.g. a restart backoff); a key is never reconciled by two loops at
 * once.
 *
 * @example
 * ```ts
 * const c = new Controller({ name: "vm", log, reconcile: (name) => reconcileVm(name) });
 * vmInformer.addHandlers(c.enqueueOnChange((key) => key.slice("/vms/".length)));
 * c.start(() => vmInformer.keys().map((k) => k.slice("/vms/".length)));
 * ```
 *
 * @module
 */
import type { Logger } from "../../shared/log.ts";
import type { InformerHandlers } from "./informer.ts";
import { realTimers, type Timers, WorkQueue } from "./workqueue.ts";

/** What a reconcile may ask for. */
export interface ReconcileResult {
  /** Reconcile this key again after this many ms. */
  requeueAfterMs?: number;
}

/** Options of {@link Controller}. */
export interface ControllerOptions {
  /** Short name for logs (`vm`, `node`, `pool`). */
  name: string;
  log: Logger;
  /** Drives the object named `key` toward its desired state; must be idempotent. */
  reconcile(key: string): Promise<ReconcileResult | void>;
  /** Concurrent reconcile loops (default 2). */
  workers?: number;
  /** Every key is reconciled again this often, ms (default 30 000; 0 disables). */
  resyncMs?: number;
  /** Rate-limited requeue: first delay, ms (default 50), and cap (default 60 000). */
  baseDelayMs?: number;
  maxDelayMs?: number;
  timers?: Timers;
  /**
   * Reconciles run only while this returns true (on HA replicas: while this replica leads,
   * cp/cluster/leader.ts). Keys that come up meanwhile are dropped; {@link Controller.resync}
   * queues every key again when it turns true. Default: always active.
   */
  active?: () => boolean;
}

/** A controller: queue + workers + resync. */
export class Controller {
  readonly queue: WorkQueue<string>;
  #o: ControllerOptions;
  #loops: Promise<void>[] = [];
  #resync: unknown = null;
  #timers: Timers;
  #inFlight = 0;
  #idleWaiters: (() => void)[] = [];
  #allKeys: () => string[] = () => [];

  constructor(opts: ControllerOptions) {
    this.#o = opts;
    this.#timers = opts.timers ?? realTimers;
    this.queue = new WorkQueue<string>({
      baseDelayMs: opts.baseDelayMs,
      maxDelayMs: opts.maxDelayMs,
      timers: this.#timers,
    });
  }

  /** Queues `key` for reconciliation. */
  enqueue(key: string): void {
    this.queue.add(key);
  }

  /** Informer handlers that queue `keyOf(storeKey, value)` on every change (null: skip). */
  enqueueOnChange<T>(
    keyOf: (storeKey: string, value: T) => string | string[] | null,
  ): InformerHandlers<T> {
    const add = (k: string, v: T) => {
      const keys = keyOf(k, v);
      for (const key of keys === null ? [] : Array.isArray(keys) ? keys : [keys]) {
        this.enqueue(key);
      }
    };
    return {
      onAdd: add,
      onUpdate: (k, _old, v) => add(k, v),
      onDelete: add,
    };
  }

  /** Starts the loops; `allKeys` lists every key for the periodic resync. */
  start(allKeys: () => string[]): void {
    this.#allKeys = allKeys;
    const n = this.#o.workers ?? 2;
    for (let i = 0; i < n; i++) this.#loops.push(this.#loop());
    const resyncMs = this.#o.resyncMs ?? 30_000;
    if (resyncMs > 0) {
      const tick = () => {
        for (const k of allKeys()) this.enqueue(k);
        this.#resync = this.#timers.setTimeout(tick, resyncMs);
      };
      this.#resync = this.#timers.setTimeout(tick, resyncMs);
    }
  }

  /** Queues every key now (e.g. this replica just became the controller leader). */
  resync(): void {
    for (const k of this.#allKeys()) this.enqueue(k);
  }

  /** Resolves when the queue is empty and no reconcile runs (tests). */
  idle(): Promise<void> {
    if (this.queue.length === 0 && this.#inFlight === 0) return Promise.resolve();
    return new Promise((r) => this.#idleWaiters.push(r));
  }

  /** Stops the loops after the reconciles in progress. */
  async stop(): Promise<void> {
    if (this.#resync !== null) this.#timers.clearTimeout(this.#resync);
    this.queue.shutDown();
    await Promise.allSettled(this.#loops);
  }

  async #loop(): Promise<void> {
    for (;;) {
      const key = await this.queue.get();
      if (key === null) return;
      this.#inFlight++;
      try {
        if (this.#o.active && !this.#o.active()) {
          this.queue.forget(key);
          continue; // `finally` marks it done; resync() brings it back
        }
        const res = await this.#o.reconcile(key);
        this.queue.forget(key);
        if (res?.requeueAfterMs !== undefined) this.queue.addAfter(key, res.requeueAfterMs);
      } catch (e) {
        const retryMs = this.queue.nextDelayMs(key);
        this.#o.log.warn(`${this.#o.name} controller: reconcile failed; retrying`, {
          key,
          err: e,
          retry_in_ms: retryMs,
        });
        this.queue.addRateLimited(key);
      } finally {
        this.queue.done(key);
        this.#inFlight--;
        if (this.queue.length === 0 && this.#inFlight === 0) {
          for (const w of this.#idleWaiters.splice(0)) w();
        }
      }
    }
  }
}
