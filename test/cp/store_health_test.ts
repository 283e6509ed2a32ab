/**
 * The store health monitor (cp/store/health.ts): answers served from the cache while the
 * store is unavailable say so (`Warning: 110`), and say nothing once it is back. A unit test
 * with a store whose ping the test controls; the real case (quorum lost on etcd) is in
 * test/e2e/ha_test.ts.
 */
import { Hono } from "hono";
import { assertEquals, assertMatch, assertRejects } from "../assert.ts";
import { waitFor } from "../harness.ts";
import { readOrCached, STALE_WARNING, StoreHealth } from "../../cp/store/health.ts";
import type { Store } from "../../cp/store/store.ts";
import { ApiError } from "../../shared/errors.ts";
import { createLogger } from "../../shared/log.ts";

Deno.test("store health: stale marks while the store is unavailable", async (t) => {
  let up = true;
  const pings = { n: 0 };
  const store = {
    ping: () => {
      pings.n++;
      return up ? Promise.resolve() : Promise.reject(new ApiError("store_unavailable", "down"));
    },
  } as unknown as Store;
  const lines: string[] = [];
  const health = new StoreHealth(store, createLogger("api", "info", (l) => lines.push(l)), 10);
  const app = new Hono();
  app.use("*", health.middleware());
  app.get("/x", (c) => c.json({ ok: true }));
  app.post("/x", (c) => c.json({ ok: true }));
  health.start();
  try {
    await t.step("store up: no warning", async () => {
      await waitFor("a ping", () => Promise.resolve(pings.n > 0));
      assertEquals((await app.request("/x")).headers.get("warning"), null);
    });
    await t.step("store down: GETs carry Warning 110, writes do not", async () => {
      up = false;
      await waitFor("noticed", () => Promise.resolve(health.error !== null));
      const res = await app.request("/x");
      assertEquals(res.headers.get("warning"), STALE_WARNING);
      assertMatch(STALE_WARNING, /^110 - "Response is Stale/);
      assertEquals((await app.request("/x", { method: "POST" })).headers.get("warning"), null);
      assertEquals(lines.filter((l) => l.includes("store: unavailable")).length, 1);
    });
    await t.step("back: no warning, one Info line", async () => {
      up = true;
      await waitFor("recovered", () => Promise.resolve(health.error === null));
      assertEquals((await app.request("/x")).headers.get("warning"), null);
      assertEquals(lines.filter((l) => l.includes("store: available again")).length, 1);
    });
    await t.step("readOrCached: the cache answers only for store_unavailable", async () => {
      const down = () => Promise.reject(new ApiError("store_unavailable", "no quorum"));
      assertEquals(await readOrCached(health, down, () => "cached"), "cached");
      assertEquals(health.error, "no quorum", "the fallback marks answers stale");
      await assertRejects(() => readOrCached(health, down, () => undefined));
      const other = () => Promise.reject(new ApiError("vm_not_found", "x"));
      await assertRejects(() => readOrCached(health, other, () => "cached"));
    });
  } finally {
    health.stop();
  }
});
