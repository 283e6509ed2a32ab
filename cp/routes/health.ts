/**
 * Liveness and readiness (spec: troubleshooting "Liveness / readiness"): `GET /healthz`
 * (process up) and `GET /readyz` (store reachable, else 503 `store_unavailable`), outside
 * `/v1/`.
 *
 * @module
 */
import { Hono } from "hono";
import { ApiError } from "../../shared/errors.ts";
import type { Store } from "../store/store.ts";

/** How long `/readyz` waits for the store, milliseconds. */
export const READY_TIMEOUT_MS = 2000;

/** The health routes. */
export function healthRoutes(store: Store): Hono {
  return new Hono()
    .get("/healthz", (c) => c.json({ status: "ok" }))
    .get("/readyz", async (c) => {
      let timer: ReturnType<typeof setTimeout> | undefined;
      try {
        await Promise.race([
          store.ping(),
          new Promise((_, reject) => {
            timer = setTimeout(() => reject(new Error("timeout")), READY_TIMEOUT_MS);
          }),
        ]);
      } catch (e) {
        throw new ApiError("store_unavailable", `store unavailable: ${(e as Error).message}`);
      } finally {
        clearTimeout(timer);
      }
      return c.json({ status: "ok" });
    });
}
