/**
 * The store's health as this replica last saw it (issue 11: with quorum lost, "reads of
 * cached state say so"): a ping every `intervalMs` (at most {@link READY_TIMEOUT_MS} each).
 * While the last ping failed, GET answers of the public API carry
 * `Warning: 110 - "Response is Stale"` (RFC 7234 §5.5.1) with the reason: what they show comes
 * from this replica's informer caches, which stopped following the store.
 *
 * @module
 */
import type { MiddlewareHandler } from "hono";
import type { Logger } from "../../shared/log.ts";
import type { Store } from "./store.ts";
import { ApiError } from "../../shared/errors.ts";

/** How long one ping may take, ms (as `/readyz`). */
export const READY_TIMEOUT_MS = 2000;

/** The `Warning` header of a stale answer. */
export const STALE_WARNING =
  '110 - "Response is Stale: the store is unavailable; served from this replica\'s cache"';

/** Pings `store` with a timeout. @throws the store's error, or Error("timeout") */
export async function pingWithin(store: Store, timeoutMs = READY_TIMEOUT_MS): Promise<void> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    await Promise.race([
      store.ping(),
      new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error("timeout")), timeoutMs);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/** The store health monitor of one replica. */
export class StoreHealth {
  #store: Store;
  #log: Logger;
  #intervalMs: number;
  #error: string | null = null;
  #timer: ReturnType<typeof setTimeout> | null = null;
  #stopped = false;

  constructor(store: Store, log: Logger, intervalMs = 1000) {
    this.#store = store;
    this.#log = log;
    this.#intervalMs = intervalMs;
  }

  /** Why the last ping failed; null while the store answers. */
  get error(): string | null {
    return this.#error;
  }

  /** Starts pinging (the first ping at once). */
  start(): void {
    const tick = async () => {
      try {
        await pingWithin(this.#store);
        if (this.#error !== null) this.#log.info("store: available again");
        this.#error = null;
      } catch (e) {
        const why = (e as Error).message;
        if (this.#error === null) this.#log.warn("store: unavailable", { err: why });
        this.#error = why;
      }
      if (!this.#stopped) this.#timer = setTimeout(tick, this.#intervalMs);
    };
    void tick();
  }

  /** Records a failed store call seen elsewhere (a read that fell back to the cache). */
  markUnavailable(why: string): void {
    if (this.#error === null) this.#log.warn("store: unavailable", { err: why });
    this.#error = why;
  }

  stop(): void {
    this.#stopped = true;
    if (this.#timer !== null) clearTimeout(this.#timer);
  }

  /** Middleware marking GET answers stale while the store is unavailable (module doc). */
  middleware(): MiddlewareHandler {
    return async (c, next) => {
      await next();
      if (c.req.method === "GET" && this.#error !== null && c.res.status < 300) {
        c.res.headers.set("warning", STALE_WARNING);
      }
    };
  }
}

/**
 * `read()` from the store; when the store is unavailable (`store_unavailable`) and `cached()`
 * has an answer (this replica's informer cache), that answer instead, and `health` marks this
 * replica's answers stale (the `Warning` header above). Other errors propagate.
 *
 * @throws what `read` throws when the cache has no answer or the error is another
 */
export async function readOrCached<T>(
  health: StoreHealth | undefined,
  read: () => Promise<T>,
  cached: () => T | undefined,
): Promise<T> {
  try {
    return await read();
  } catch (e) {
    if (!(e instanceof ApiError) || e.code !== "store_unavailable" || !health) throw e;
    const value = cached();
    if (value === undefined) throw e;
    health.markUnavailable(e.message);
    return value;
  }
}
