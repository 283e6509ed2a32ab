/**
 * The periodic pool scan (spec 001: "periodic pool-scan worker; default 15 min, dev compressed
 * to 1 min", `workers.storage_pool_scan`): a controller keyed by pool instance
 * (`<pool>/<node>`, fed by the pool informer) that queues a `pool.scan` task
 * (cp/pools/scan.ts, reason `periodic scan`) for every `ready` instance on a `ready` node
 * whose last scan (or failed attempt) was `interval_seconds` ago or more, or that was never
 * scanned (so a new pool is scanned as soon as its agent reports it ready), and requeues the
 * key for the
 * moment the next scan is due. Nothing is queued while a scan of the instance is in flight,
 * when `workers.enabled` or `workers.storage_pool_scan.enabled` is false, or for instances
 * that are `pending` / `failed` (a change to `ready` re-triggers the key).
 *
 * Periodic scans are queued at most {@link PERIODIC_SCANS_PER_SECOND} a second across the
 * cluster (a token bucket): after a control-plane restart every instance of a large cluster is
 * due at once, and the wave is spread out instead of becoming thousands of tasks in a burst.
 * `otherix pool scan` is not limited.
 *
 * @module
 */
import { type CpContext, leading } from "../context.ts";
import { Controller } from "../controllers/controller.ts";
import { keys, type NodeRecord, type PoolRecord } from "../repo/records.ts";
import { queueScan, scanInFlight } from "./scan.ts";

/** Most periodic scans queued per second (burst: the same number). */
export const PERIODIC_SCANS_PER_SECOND = 5;

/**
 * A token bucket: `take()` answers 0 when a token was available (and takes it), else the ms
 * until the next one. `now`: clock in ms (injected in tests).
 */
export class TokenBucket {
  #tokens: number;
  #last: number;
  constructor(private perSecond: number, private now: () => number) {
    this.#tokens = perSecond;
    this.#last = now();
  }

  /** Takes a token (0) or says how long until one is available (ms). */
  take(): number {
    const t = this.now();
    this.#tokens = Math.min(
      this.perSecond,
      this.#tokens + ((t - this.#last) / 1000) * this.perSecond,
    );
    this.#last = t;
    if (this.#tokens >= 1) {
      this.#tokens -= 1;
      return 0;
    }
    return Math.ceil(((1 - this.#tokens) / this.perSecond) * 1000);
  }
}

/** The controller key of an instance stored at `storeKey` (`/pools/<pool>/<node>`). */
export function scanKeyOf(storeKey: string): string {
  return storeKey.slice(keys.pools.length);
}

/**
 * Ms until `pool`'s next periodic scan is due at `now` (≤ 0: due): `interval` ms after the
 * later of its last scan and its last failed attempt (a failing scan is retried once per
 * interval, not in a loop); a pool never scanned is due at once.
 */
export function scanDueIn(pool: PoolRecord, now: number, interval: number): number {
  const attempts = [pool.last_scan?.started_at, pool.last_scan_error?.at]
    .filter((t): t is string => !!t).map((t) => Date.parse(t));
  return attempts.length ? Math.max(...attempts) + interval - now : 0;
}

/**
 * One reconcile of instance `key` (`<pool>/<node>`) at `ctx.now()`: queues its scan when due.
 * Decides from the informer caches when wired (no store read for the frequent "not due"
 * case); the queuing itself re-checks the stored instance.
 *
 * @returns ms until this key should be looked at again (null: only on a change)
 */
export async function reconcilePoolScan(
  ctx: CpContext,
  key: string,
  limiter?: TokenBucket,
): Promise<number | null> {
  const cfg = ctx.cfg.workers;
  if (!cfg.enabled || !cfg.storage_pool_scan.enabled) return null;
  const interval = cfg.storage_pool_scan.interval_seconds * 1000;
  const storeKey = keys.pools + key;
  const pool = ctx.cache?.pools.get(storeKey) ??
    (await ctx.store.get<PoolRecord>(storeKey))?.value;
  if (!pool || pool.status !== "ready") return null;
  const node = ctx.cache?.nodes.get(keys.node(pool.node)) ??
    (await ctx.store.get<NodeRecord>(keys.node(pool.node)))?.value;
  if (!node) return null;
  if (node.status !== "ready") return interval; // look again later (or on a pool change)
  const now = ctx.now().getTime();
  const dueIn = scanDueIn(pool, now, interval);
  if (dueIn > 0) return dueIn;
  if (await scanInFlight(ctx, pool)) return interval;
  const wait = limiter?.take() ?? 0;
  if (wait > 0) return wait; // the cluster-wide rate of periodic scans: come back then
  await queueScan(
    ctx,
    storeKey,
    "periodic scan",
    (stored) => stored.status === "ready" && scanDueIn(stored, now, interval) <= 0,
  );
  return interval;
}

/** Builds the periodic scan controller; the caller feeds it from the pool informer. */
export function poolScanController(ctx: CpContext): Controller {
  const limiter = new TokenBucket(PERIODIC_SCANS_PER_SECOND, () => ctx.now().getTime());
  return new Controller({
    name: "pool-scan",
    active: () => leading(ctx),
    log: ctx.log,
    reconcile: async (key) => {
      const after = await reconcilePoolScan(ctx, key, limiter);
      return after === null ? undefined : { requeueAfterMs: Math.max(10, after) };
    },
  });
}
