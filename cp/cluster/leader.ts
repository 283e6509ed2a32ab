/**
 * Leader election on the store (issue 11: "each controller key is owned by exactly one
 * replica at a time"), shaped like client-go's `leaderelection` on a Lease object and etcd's
 * `concurrency.Election`:
 *
 * - A candidate grants a store lease of `ttlSeconds` and writes `key` = {@link LeaderRecord}
 *   attached to it in one transaction that requires the key to be absent. The winner renews
 *   the lease every `ttlSeconds / 3`.
 * - The holder steps down on its own when it has not renewed for `renewDeadlineMs` (default
 *   2/3 of the TTL), which is before the store expires its lease: so two replicas never both
 *   believe they lead (given clocks that run at the same rate; no wall-clock agreement needed).
 * - When the holder dies its lease expires and the store deletes `key`; the others watch the
 *   key and campaign at once, and also retry every `ttlSeconds / 3` (a watch may be cut by a
 *   store failover). So a dead leader is replaced within the TTL plus one retry period.
 * - `stop()` resigns: revokes the lease, which deletes the key, so a graceful restart hands
 *   over at once.
 *
 * Followers learn the holder from the key (`leader()`), which `GET /v1/cluster/members` shows.
 *
 * @example
 * ```ts
 * const election = new LeaderElection({ store, identity: "cp-1", ttlSeconds: 15, log });
 * election.onChange((leading) => leading ? controllers.resume() : controllers.pause());
 * await election.start();
 * ```
 *
 * @module
 */
import type { Logger } from "../../shared/log.ts";
import { realTimers, type Timers } from "../controllers/workqueue.ts";
import { type Store, StoreError } from "../store/store.ts";

/** The store key of the controller leader (its value is a {@link LeaderRecord}). */
export const CONTROLLER_LEADER_KEY = "/leader/controllers";

/** What the leader key holds. */
export interface LeaderRecord {
  /** The holder's identity (the replica name). */
  identity: string;
  /** When it became leader (ISO 8601). */
  since: string;
}

/** Options of {@link LeaderElection}. */
export interface LeaderElectionOptions {
  store: Store;
  /** This candidate's identity (the replica name; shown as the leader). */
  identity: string;
  /** Lease TTL, seconds (`workers.lease_ttl_seconds`). */
  ttlSeconds: number;
  /** The key contended for (default {@link CONTROLLER_LEADER_KEY}). */
  key?: string;
  /** Step down after this long without a successful renewal, ms (default 2/3 of the TTL). */
  renewDeadlineMs?: number;
  log: Logger;
  /** Monotonic clock, ms (default `performance.now`). */
  clock?: () => number;
  /** Wall clock for {@link LeaderRecord.since} (default `new Date()`). */
  now?: () => Date;
  timers?: Timers;
}

/** One replica's participation in the election of one key. */
export class LeaderElection {
  #o: Required<Omit<LeaderElectionOptions, "timers">> & { timers: Timers };
  #lease: string | null = null;
  #leading = false;
  #lastRenew = 0;
  #holder: LeaderRecord | null = null;
  #timer: unknown = null;
  #cancelWatch: (() => void) | null = null;
  #listeners = new Set<(leading: boolean) => void>();
  #stopped = false;
  /** The campaign or renewal in progress (one at a time). */
  #busy: Promise<void> = Promise.resolve();

  constructor(opts: LeaderElectionOptions) {
    this.#o = {
      key: CONTROLLER_LEADER_KEY,
      renewDeadlineMs: Math.floor((opts.ttlSeconds * 1000 * 2) / 3),
      clock: () => performance.now(),
      now: () => new Date(),
      timers: realTimers,
      ...opts,
    };
  }

  /** True while this replica holds the key (and renewed it within the renew deadline). */
  isLeader(): boolean {
    return this.#leading;
  }

  /** The current holder as last seen (null: none known). */
  leader(): LeaderRecord | null {
    return this.#holder;
  }

  /**
   * Calls `cb(leading)` on every change of this replica's leadership (synchronously, in the
   * election's own task). Returns the unsubscribe function.
   */
  onChange(cb: (leading: boolean) => void): () => void {
    this.#listeners.add(cb);
    return () => this.#listeners.delete(cb);
  }

  /**
   * Campaigns once (so a lone replica leads when this resolves), then keeps campaigning or
   * renewing in the background until {@link stop}.
   */
  async start(): Promise<void> {
    this.#cancelWatch = this.#o.store.watch(this.#o.key, (ev) => {
      if (ev.type === "delete") {
        this.#holder = null;
        if (!this.#leading) this.#kick();
      } else {
        this.#holder = ev.value as LeaderRecord;
      }
    }, { onError: () => this.#kick() });
    await this.#run(() => this.#tick());
    this.#schedule();
  }

  /** Resigns (revokes the lease: the key goes at once) and stops campaigning. Idempotent. */
  async stop(): Promise<void> {
    if (this.#stopped) return;
    this.#stopped = true;
    this.#o.timers.clearTimeout(this.#timer);
    this.#cancelWatch?.();
    await this.#busy;
    const lease = this.#lease;
    this.#lease = null;
    this.#setLeading(false);
    if (lease) await this.#o.store.revoke(lease).catch(() => {});
  }

  #run(fn: () => Promise<void>): Promise<void> {
    const p = this.#busy.then(fn).catch((e) => {
      this.#o.log.warn("leader election: store call failed", { key: this.#o.key, err: e });
    });
    this.#busy = p;
    return p;
  }

  #kick(): void {
    if (!this.#stopped) void this.#run(() => this.#tick());
  }

  #schedule(): void {
    if (this.#stopped) return;
    const period = Math.max(100, Math.floor((this.#o.ttlSeconds * 1000) / 3));
    this.#timer = this.#o.timers.setTimeout(() => {
      void this.#run(() => this.#tick()).finally(() => this.#schedule());
    }, period);
  }

  /** One step: renew while leading, else campaign. */
  async #tick(): Promise<void> {
    if (this.#stopped) return;
    if (this.#leading) {
      try {
        await this.#o.store.keepAlive(this.#lease!);
        this.#lastRenew = this.#o.clock();
        return;
      } catch (e) {
        // A lease the store no longer knows is lost for sure; an unreachable store is given
        // until the renew deadline.
        const lost = e instanceof StoreError;
        if (!lost && this.#o.clock() - this.#lastRenew < this.#o.renewDeadlineMs) throw e;
        this.#o.log.warn("leader election: lease not renewed in time; stepping down", {
          key: this.#o.key,
          err: e,
        });
        this.#lease = null;
        this.#setLeading(false);
      }
    }
    await this.#campaign();
  }

  async #campaign(): Promise<void> {
    const { store, key, identity } = this.#o;
    const current = await store.get<LeaderRecord>(key);
    const started = this.#o.clock();
    try {
      if (current) {
        this.#holder = current.value;
        // Our own key (a renewal failed transiently and we stepped down): take it back when
        // its lease still lives; any other holder's key is waited out.
        if (!this.#lease || current.lease !== this.#lease) return;
        await store.keepAlive(this.#lease);
      } else {
        this.#lease ??= await store.grant(this.#o.ttlSeconds);
        const record: LeaderRecord = { identity, since: this.#o.now().toISOString() };
        const res = await store.txn({
          compare: [{ key, absent: true }],
          success: [{ type: "put", key, value: record, lease: this.#lease }],
        });
        if (!res.succeeded) {
          this.#holder = (await store.get<LeaderRecord>(key))?.value ?? null;
          return;
        }
        this.#holder = record;
      }
    } catch (e) {
      // The lease expired meanwhile (e.g. a long pause): the next campaign grants a new one.
      this.#lease = null;
      throw e;
    }
    this.#lastRenew = started;
    this.#setLeading(true);
  }

  #setLeading(leading: boolean): void {
    if (this.#leading === leading) return;
    this.#leading = leading;
    this.#o.log.info(leading ? "leader election: now leading" : "leader election: not leading", {
      key: this.#o.key,
      identity: this.#o.identity,
    });
    for (const cb of this.#listeners) {
      try {
        cb(leading);
      } catch (e) {
        this.#o.log.warn("leader election: listener failed", { err: e });
      }
    }
  }
}
