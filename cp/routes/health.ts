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
import { pingWithin, READY_TIMEOUT_MS } from "../store/health.ts";

/** The health routes. */
export function healthRoutes(store: Store): Hono {
  return new Hono()
    .get("/healthz", (c) => c.json({ status: "ok" }))
    .get("/readyz", async (c) => {
      try {
        await pingWithin(store, READY_TIMEOUT_MS);
      } catch (e) {
        throw new ApiError("store_unavailable", `store unavailable: ${(e as Error).message}`);
      }
      return c.json({ status: "ok" });
    });
}
