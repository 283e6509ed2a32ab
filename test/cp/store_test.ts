/**
 * The store contract suite (DESIGN.md "Store": one suite for every backend). Call
 * {@link storeContract} with a factory that returns a fresh, empty store; the embedded Deno KV
 * backend runs it below, an etcd backend can be plugged in the same way.
 */
import { assert, assertEquals, assertRejects } from "../assert.ts";
import { openKvStore } from "../../cp/store/kv.ts";
import {
  rangeAll,
  type Store,
  StoreError,
  updateKey,
  type WatchEvent,
} from "../../cp/store/store.ts";
import { ApiError } from "../../shared/errors.ts";

/** A fresh store plus its cleanup. */
export interface StoreFixture {
  store: Store;
  cleanup(): Promise<void>;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Registers the contract tests for a backend. */
export function storeContract(name: string, factory: () => Promise<StoreFixture>): void {
  const t = (title: string, fn: (s: Store) => Promise<void>) =>
    Deno.test(`store contract [${name}]: ${title}`, async () => {
      const fx = await factory();
      try {
        await fn(fx.store);
      } finally {
        await fx.cleanup();
      }
    });

  t("get/put/delete round-trip JSON and bytes; version counts writes", async (s) => {
    assertEquals(await s.get("/a/1"), null);
    const r1 = await s.put("/a/1", { x: 1, nested: { y: [1, 2] } });
    const kv1 = await s.get("/a/1");
    assertEquals(kv1?.value, { x: 1, nested: { y: [1, 2] } });
    assertEquals(kv1?.modRevision, r1);
    assertEquals(kv1?.version, 1);
    const r2 = await s.put("/a/1", { x: 2 });
    assert(r2 !== r1, "revision changes on write");
    assertEquals((await s.get("/a/1"))?.version, 2);
    await s.put("/a/bytes", new Uint8Array([0, 1, 255]));
    assertEquals((await s.get("/a/bytes"))?.value, new Uint8Array([0, 1, 255]));
    assertEquals(await s.delete("/a/1"), true);
    assertEquals(await s.delete("/a/1"), false);
    assertEquals(await s.get("/a/1"), null);
    await s.put("/a/1", "again");
    assertEquals((await s.get("/a/1"))?.version, 1, "version restarts after delete");
  });

  t("values larger than one backend record round-trip and shrink cleanly", async (s) => {
    const big = { data: "é".repeat(150_000), n: 1 };
    await s.put("/big", big);
    assertEquals((await s.get("/big"))?.value, big);
    assertEquals((await s.range("/big")).kvs[0].value, big);
    await s.put("/big", { data: "small" });
    assertEquals((await s.get("/big"))?.value, { data: "small" });
    await assertRejects(() => s.put("/huge", "x".repeat(2_000_000)));
  });

  t("txn compare-and-swap on modRevision: success, then failure with failure ops", async (s) => {
    await s.put("/cas/k", 1);
    const cur = (await s.get("/cas/k"))!;
    const ok = await s.txn({
      compare: [{ key: "/cas/k", modRevision: cur.modRevision }],
      success: [{ type: "put", key: "/cas/k", value: 2 }, {
        type: "put",
        key: "/cas/side",
        value: "s",
      }],
      failure: [{ type: "put", key: "/cas/failed", value: true }],
    });
    assertEquals(ok.succeeded, true);
    assertEquals((await s.get("/cas/k"))?.value, 2);
    assertEquals((await s.get("/cas/side"))?.value, "s");
    // Stale revision: compare fails, success ops are NOT applied, failure ops are.
    const stale = await s.txn({
      compare: [{ key: "/cas/k", modRevision: cur.modRevision }],
      success: [{ type: "put", key: "/cas/k", value: 3 }],
      failure: [{ type: "put", key: "/cas/failed", value: true }],
    });
    assertEquals(stale.succeeded, false);
    assertEquals((await s.get("/cas/k"))?.value, 2);
    assertEquals((await s.get("/cas/failed"))?.value, true);
  });

  t("txn compares on absence and version", async (s) => {
    const create = () =>
      s.txn({
        compare: [{ key: "/u/x", absent: true }],
        success: [{ type: "put", key: "/u/x", value: 1 }],
      });
    assertEquals((await create()).succeeded, true);
    assertEquals((await create()).succeeded, false, "second create-if-absent fails");
    assertEquals(
      (await s.txn({
        compare: [{ key: "/u/x", version: 2 }],
        success: [{ type: "delete", key: "/u/x" }],
      }))
        .succeeded,
      false,
    );
    assertEquals(
      (await s.txn({
        compare: [{ key: "/u/x", version: 1 }],
        success: [{ type: "delete", key: "/u/x" }],
      }))
        .succeeded,
      true,
    );
    assertEquals(
      (await s.txn({ compare: [{ key: "/u/x", version: 0 }], success: [] })).succeeded,
      true,
      "version 0 means absent",
    );
    assertEquals(
      (await s.txn({ compare: [{ key: "/u/x", absent: false }], success: [] })).succeeded,
      false,
    );
  });

  t("concurrent CAS increments never lose an update", async (s) => {
    await s.put("/ctr", 0);
    await Promise.all(
      Array.from({ length: 20 }, () => updateKey<number>(s, "/ctr", (n) => (n ?? 0) + 1)),
    );
    assertEquals((await s.get("/ctr"))?.value, 20);
  });

  t("range: prefix isolation, order, limit + cursor across pages", async (s) => {
    for (const k of ["/vms/c", "/vms/a", "/vms/b", "/vmsx", "/vms", "/vm/a", "/vms/a/sub"]) {
      await s.put(k, k);
    }
    const all = await s.range("/vms/");
    assertEquals(all.kvs.map((kv) => kv.key), ["/vms/a", "/vms/a/sub", "/vms/b", "/vms/c"]);
    assertEquals(all.nextCursor, null);
    assertEquals((await s.range("/vms/a")).kvs.map((kv) => kv.key), ["/vms/a", "/vms/a/sub"]);
    const p1 = await s.range("/vms/", { limit: 2 });
    assertEquals(p1.kvs.map((kv) => kv.key), ["/vms/a", "/vms/a/sub"]);
    assert(p1.nextCursor);
    const p2 = await s.range("/vms/", { limit: 2, cursor: p1.nextCursor });
    assertEquals(p2.kvs.map((kv) => kv.key), ["/vms/b", "/vms/c"]);
    assertEquals(p2.nextCursor, null, "exact last page has no cursor");
    const p3 = await s.range("/vms/", { limit: 3 });
    assertEquals(p3.kvs.length, 3);
    const p4 = await s.range("/vms/", { limit: 3, cursor: p3.nextCursor });
    assertEquals(p4.kvs.map((kv) => kv.key), ["/vms/c"]);
    // A key inserted before the cursor position does not shift later pages.
    await s.put("/vms/0", "0");
    assertEquals(
      (await s.range("/vms/", { limit: 10, cursor: p1.nextCursor })).kvs.map((kv) => kv.key),
      ["/vms/b", "/vms/c"],
    );
    assertEquals((await rangeAll(s, "/vms/")).length, 5);
    assertEquals((await s.range("/nothing/")).kvs, []);
    // A cursor from another prefix is refused as caller input.
    const foreign = (await s.range("/vm", { limit: 1 })).nextCursor!;
    const err = await assertRejects(() => s.range("/vms/", { cursor: foreign }));
    assert(err instanceof ApiError && err.code === "validation_failed");
    const bad = await assertRejects(() => s.range("/vms/", { cursor: "%%%" }));
    assert(bad instanceof ApiError && bad.code === "validation_failed");
  });

  t("watch sees puts and deletes under its prefix only, until cancelled", async (s) => {
    const seen: WatchEvent[] = [];
    const cancel = s.watch("/w/", (ev) => seen.push(ev));
    s.watch("/w/", () => {
      throw new Error("a failing watcher does not break writes");
    });
    const rev = await s.put("/w/a", { v: 1 });
    await s.put("/wx", 1);
    await s.delete("/w/a");
    await s.txn({
      compare: [],
      success: [{ type: "put", key: "/w/b", value: 2 }, { type: "put", key: "/other", value: 3 }],
    });
    await sleep(10);
    assertEquals(seen.map((e) => [e.type, e.key]), [["put", "/w/a"], ["delete", "/w/a"], [
      "put",
      "/w/b",
    ]]);
    assertEquals(seen[0].value, { v: 1 });
    assertEquals(seen[0].revision, rev);
    cancel();
    await s.put("/w/c", 1);
    await sleep(10);
    assertEquals(seen.length, 3);
  });

  t(
    "leases: expiry deletes attached keys (with watch events); keep-alive and revoke",
    async (s) => {
      const deleted: string[] = [];
      s.watch("/lease/", (ev) => ev.type === "delete" && deleted.push(ev.key));
      const short = await s.grant(1);
      await s.put("/lease/a", 1, { lease: short });
      await s.put("/lease/b", 2, { lease: short });
      await s.put("/lease/keep", 3);
      assertEquals((await s.get("/lease/a"))?.lease, short);
      const kept = await s.grant(1);
      await s.put("/lease/kept", 4, { lease: kept });
      // Re-putting a key without the lease detaches it.
      await s.put("/lease/b", 22);
      for (let i = 0; i < 4; i++) {
        await sleep(400);
        await s.keepAlive(kept);
      }
      assertEquals(await s.get("/lease/a"), null, "expired lease removed its key");
      assertEquals((await s.get("/lease/b"))?.value, 22, "detached key survives");
      assertEquals((await s.get("/lease/keep"))?.value, 3);
      assertEquals((await s.get("/lease/kept"))?.value, 4, "kept-alive lease survives");
      assert(deleted.includes("/lease/a"));
      await assertRejects(() => s.keepAlive(short));
      const e = await assertRejects(() => s.put("/lease/z", 1, { lease: short }));
      assert(e instanceof StoreError);
      await s.revoke(kept);
      assertEquals(await s.get("/lease/kept"), null, "revoke deletes attached keys");
      await s.revoke("no-such-lease");
    },
  );

  t("leases: puts racing a revoke either fail or are deleted by it (no orphans)", async (s) => {
    for (let round = 0; round < 20; round++) {
      const lease = await s.grant(60);
      const puts = Array.from({ length: 10 }, async (_, i) => {
        await sleep(Math.random() * 3);
        try {
          await s.put(`/race/${round}/${i}`, i, { lease });
        } catch (e) {
          assert(e instanceof StoreError, String(e));
        }
      });
      await sleep(Math.random() * 3);
      await s.revoke(lease);
      await Promise.all(puts);
      const left = (await rangeAll(s, `/race/${round}/`)).filter((kv) => kv.lease === lease);
      assertEquals(left.map((kv) => kv.key), [], `round ${round}: keys survived their lease`);
      const late = await assertRejects(() => s.put(`/race/${round}/late`, 1, { lease }));
      assert(late instanceof StoreError);
    }
  });

  t("ping succeeds on an open store", async (s) => {
    await s.ping();
  });
}

storeContract("embedded kv", async () => {
  const dir = await Deno.makeTempDir({ prefix: "otx-store-" });
  const store = await openKvStore(`${dir}/store.kv`);
  return {
    store,
    cleanup: async () => {
      await store.close();
      await Deno.remove(dir, { recursive: true });
    },
  };
});

Deno.test("store [embedded kv]: data persists across reopen; closed store fails ping", async () => {
  const dir = await Deno.makeTempDir({ prefix: "otx-store-" });
  try {
    const s1 = await openKvStore(`${dir}/store.kv`);
    await s1.put("/p/a", { keep: true });
    await s1.close();
    await assertRejects(() => s1.ping());
    const s2 = await openKvStore(`${dir}/store.kv`);
    assertEquals((await s2.get("/p/a"))?.value, { keep: true });
    await s2.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
