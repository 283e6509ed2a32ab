/**
 * The store contract suite (DESIGN.md "Store": one suite for every backend). Call
 * {@link storeContract} with a factory that returns a fresh, empty store, a way to open a
 * second client of the same store (another handle or process: what a second control-plane
 * replica is) and the clock leases expire by. The embedded Deno KV backend runs it in
 * `store_test.ts` (`advance` moves an injected clock); the etcd backend in
 * `store_etcd_test.ts` (`peer` = a second client, `advance` = real waiting, `leaseSlackMs`
 * = how late etcd's leader revokes an expired lease). This module registers no test itself.
 *
 * Timing: nothing here sleeps to let a race settle; tests wait for a condition with a
 * deadline ({@link waitFor}) and move lease time with the fixture's clock.
 *
 * @module
 */
import { assert, assertEquals, assertMatch, assertRejects, assertThrows } from "../assert.ts";
import { waitFor } from "../harness.ts";
import {
  compareRevisions,
  rangeAll,
  type Store,
  StoreCompactedError,
  StoreError,
  updateKey,
  type WatchEvent,
  type WatchOptions,
} from "../../cp/store/store.ts";
import { ApiError } from "../../shared/errors.ts";

/** A fresh store plus a second client of it, its lease clock and cleanup. */
export interface StoreFixture {
  store: Store;
  /** Opens another client of the same store (closed by `cleanup`). */
  peer(): Promise<Store>;
  /** Moves the clock leases expire by forward `ms` milliseconds (for every client). */
  advance(ms: number): Promise<void>;
  /**
   * How long after its TTL an expired lease may still hold its keys, ms (default 0: the
   * store expires leases on the fixture's clock). The lease tests stretch their timings by
   * it, and are unchanged with 0.
   */
  leaseSlackMs?: number;
  cleanup(): Promise<void>;
}

/** Waits (polling every 5 ms, at most 10 s) until `fn` holds. */
export function until<T>(what: string, fn: () => T | Promise<T>, timeoutMs = 10_000): Promise<T> {
  return waitFor(what, async () => await fn(), timeoutMs, 5);
}

/** A watcher recording its events and errors. */
export interface Recorder {
  events: WatchEvent[];
  errors: Error[];
  cancel: () => void;
  /** Revisions of the recorded events. */
  revs(): string[];
}

/** Starts a watch on `s` that records its events and errors. */
export function record(s: Store, prefix: string, opts: WatchOptions = {}): Recorder {
  const events: WatchEvent[] = [];
  const errors: Error[] = [];
  const cancel = s.watch(prefix, (ev) => events.push(ev), {
    ...opts,
    onError: (e) => errors.push(e),
  });
  return { events, errors, cancel, revs: () => events.map((e) => e.revision) };
}

const jitter = () => new Promise((r) => setTimeout(r, Math.random() * 3));
/** `[type, key]` of each event. */
export const brief = (evs: WatchEvent[]) => evs.map((e) => [e.type, e.key]);
/** The revision `n` after `rev`. */
export const next = (rev: string, n = 1) => String(BigInt(rev) + BigInt(n));

/**
 * Registers the contract tests for a backend. `testOptions` go to every `Deno.test` (e.g. a
 * backend whose server process outlives single tests turns the op/resource sanitizers off).
 */
export function storeContract(
  name: string,
  factory: () => Promise<StoreFixture>,
  testOptions: Pick<Deno.TestDefinition, "sanitizeOps" | "sanitizeResources"> = {},
): void {
  const t = (
    title: string,
    fn: (s: Store, fx: StoreFixture, ctx: Deno.TestContext) => Promise<void>,
  ) =>
    Deno.test({
      name: `store contract [${name}]: ${title}`,
      ...testOptions,
      fn: async (ctx) => {
        const fx = await factory();
        try {
          await fn(fx.store, fx, ctx);
        } finally {
          await fx.cleanup();
        }
      },
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
    const before = await s.currentRevision();
    const e = await assertRejects(() => s.put("/huge", "x".repeat(2_000_000)));
    assert(e instanceof StoreError, String(e));
    assertEquals(await s.currentRevision(), before, "a refused write takes no revision");
    assertEquals(await s.get("/huge"), null);
  });

  t("revisions: one store-wide counter, +1 per changing transaction", async (s) => {
    const r0 = await s.currentRevision();
    assertMatch(r0, /^\d+$/);
    const r1 = await s.put("/r/a", 1);
    assertEquals(r1, next(r0), "a put is the next revision");
    const r2 = await s.put("/r/b", 1);
    assertEquals(r2, next(r1), "another key shares the same counter");
    const r3 = await s.put("/r/a", 2);
    const a = (await s.get("/r/a"))!;
    assertEquals([a.modRevision, a.createRevision, a.version], [r3, r1, 2]);
    const both = await s.txn({
      compare: [],
      success: [{ type: "put", key: "/r/c", value: 1 }, { type: "delete", key: "/r/b" }],
    });
    assertEquals(both.revision, next(r3), "one transaction is one revision");
    assertEquals((await s.get("/r/c"))?.modRevision, both.revision);
    assertEquals(await s.currentRevision(), both.revision);
    // Transactions that change nothing take no revision (etcd: the header revision).
    const miss = await s.txn({
      compare: [{ key: "/r/a", version: 7 }],
      success: [{ type: "put", key: "/r/a", value: 3 }],
    });
    assertEquals([miss.succeeded, miss.revision], [false, both.revision]);
    assertEquals(await s.delete("/r/absent"), false);
    assertEquals(await s.currentRevision(), both.revision);
    assertEquals((await s.range("/r/")).revision, both.revision, "range reports its revision");
    // Revisions compare numerically, across digit counts.
    assert(compareRevisions("9", "10") < 0 && compareRevisions("10", "9") > 0);
    assertEquals(compareRevisions(r3, r3), 0);
    // A modRevision compare holds only for the key's last write.
    for (const [rev, held] of [[r3, true], [r1, false]] as const) {
      const res = await s.txn({ compare: [{ key: "/r/a", modRevision: rev }], success: [] });
      assertEquals(res.succeeded, held, `modRevision ${rev}`);
    }
    const bad = await assertRejects(() =>
      s.txn({ compare: [{ key: "/r/a", modRevision: "v1" }], success: [] })
    );
    assert(bad instanceof ApiError && bad.code === "validation_failed", String(bad));
    const badCmp = assertThrows(() => compareRevisions("1", "x"));
    assert(badCmp instanceof ApiError && badCmp.code === "validation_failed");
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

  t("two clients racing CAS on one key: exactly one wins each round", async (s, fx) => {
    const p = await fx.peer();
    await s.put("/race/k", { round: -1, by: "none" });
    for (let round = 0; round < 30; round++) {
      const [ca, cb] = await Promise.all([s.get("/race/k"), p.get("/race/k")]);
      assertEquals(ca!.modRevision, cb!.modRevision, "both clients read the same revision");
      const attempt = (c: Store, by: string) =>
        c.txn({
          compare: [{ key: "/race/k", modRevision: ca!.modRevision }],
          success: [{ type: "put", key: "/race/k", value: { round, by } }],
        });
      const [ra, rb] = await Promise.all([attempt(s, "a"), attempt(p, "b")]);
      assertEquals([ra.succeeded, rb.succeeded].filter(Boolean).length, 1, `round ${round}`);
      const winner = ra.succeeded ? "a" : "b";
      assertEquals((await p.get("/race/k"))?.value, { round, by: winner });
    }
    // Read-modify-write from both clients at once loses nothing.
    await s.put("/race/ctr", 0);
    await Promise.all(
      Array.from(
        { length: 24 },
        (_, i) => updateKey<number>(i % 2 ? s : p, "/race/ctr", (n) => (n ?? 0) + 1),
      ),
    );
    assertEquals((await s.get("/race/ctr"))?.value, 24);
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
    const seen = record(s, "/w/");
    const sentinel = record(s, "/w");
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
    await until("3 events", () => seen.events.length >= 3);
    assertEquals(brief(seen.events), [["put", "/w/a"], ["delete", "/w/a"], ["put", "/w/b"]]);
    assertEquals(seen.events[0].value, { v: 1 });
    assertEquals(seen.events[0].revision, rev);
    assertEquals(seen.errors, []);
    seen.cancel();
    await s.put("/w/c", 1);
    await until("the sentinel sees /w/c", () => sentinel.events.some((e) => e.key === "/w/c"));
    assertEquals(seen.events.length, 3, "no event after cancel");
    sentinel.cancel();
  });

  t("watch: a transaction's events share its revision, in key order", async (s) => {
    await s.put("/t/b", 0);
    const w = record(s, "/t/", { fromRevision: await s.currentRevision() });
    const res = await s.txn({
      compare: [],
      success: [
        { type: "put", key: "/t/c", value: 3 },
        { type: "delete", key: "/t/b" },
        { type: "put", key: "/t/a", value: 1 },
        { type: "delete", key: "/t/absent" },
      ],
    });
    await until("3 events", () => w.events.length >= 3);
    assertEquals(brief(w.events), [["put", "/t/a"], ["delete", "/t/b"], ["put", "/t/c"]]);
    assert(w.events.every((e) => e.revision === res.revision));
    w.cancel();
  });

  t("watch without fromRevision starts at the call: later writes only", async (s) => {
    await s.put("/n/old", 1);
    const w = record(s, "/n/");
    const rev = await s.put("/n/new", 2); // right after the call, before the watch is set up
    await until("the new write", () => w.events.length >= 1);
    assertEquals(brief(w.events), [["put", "/n/new"]]);
    assertEquals(w.revs(), [rev]);
    const bad = assertThrows(() => s.watch("/n/", () => {}, { fromRevision: "abc" }));
    assert(bad instanceof ApiError && bad.code === "validation_failed", String(bad));
    w.cancel();
  });

  t("range revision + watch from it: no gap, no duplicate (same and other client)", async (
    s,
    fx,
    ctx,
  ) => {
    const p = await fx.peer();
    for (const [label, writer] of [["same client", s], ["other client", p]] as const) {
      await ctx.step(label, async () => {
        const prefix = `/inf/${label.replace(" ", "-")}/`;
        // 400 keys sorting after the written ones make the list take long enough (several
        // backend reads) for writes to land while it runs.
        for (let b = 0; b < 4; b++) {
          await s.txn({
            compare: [],
            success: Array.from({ length: 100 }, (_, i) => ({
              type: "put" as const,
              key: `${prefix}z${b * 100 + i}`,
              value: i,
            })),
          });
        }
        // Every effective write: [key, type, revision].
        const written: [string, "put" | "delete", string][] = [];
        const writes = (async () => {
          for (let i = 0; i < 120; i++) {
            const key = `${prefix}${i % 7}`;
            if (i % 11 === 10) {
              const res = await writer.txn({
                compare: [{ key, absent: false }],
                success: [{ type: "delete", key }],
              });
              if (res.succeeded) written.push([key, "delete", res.revision]);
            } else written.push([key, "put", await writer.put(key, i)]);
          }
          return await writer.put(`${prefix}done`, -1);
        })();
        // The list is read while the writes go on, so it may already show some later ones.
        await until("40 writes", () => written.length >= 40);
        const listed = await s.range<number>(prefix);
        const w = record(s, prefix, { fromRevision: listed.revision });
        const last = await writes;
        await until("the last write", () => w.revs().includes(last));
        const revs = w.revs();
        assertEquals(new Set(revs).size, revs.length, "no duplicate events");
        assertEquals(revs, [...revs].sort(compareRevisions), "events arrive in revision order");
        const isAfter = (r: string) => compareRevisions(r, listed.revision) > 0;
        assertEquals(
          revs,
          [...written.map(([, , r]) => r), last].filter(isAfter),
          "exactly the writes after the list's revision",
        );
        // The list is not older than its revision: it shows each key's last write up to it
        // (or a later one).
        const lastUpTo = new Map<string, ["put" | "delete", string]>();
        for (const [key, type, rev] of written) if (!isAfter(rev)) lastUpTo.set(key, [type, rev]);
        const inList = new Map(listed.kvs.map((kv) => [kv.key, kv.modRevision]));
        for (const [key, [type, rev]] of lastUpTo) {
          const shown = inList.get(key);
          if (type === "put") {
            assert(shown && compareRevisions(shown, rev) >= 0, `list misses ${key}@${rev}`);
          } else {
            assert(!shown || compareRevisions(shown, rev) > 0, `list shows ${key} deleted @${rev}`);
          }
        }
        // List + events rebuild the final state (events the list already showed are skipped).
        const state = new Map(listed.kvs.map((kv) => [kv.key, [kv.value, kv.modRevision]]));
        for (const ev of w.events) {
          const cur = state.get(ev.key);
          if (cur && compareRevisions(ev.revision, cur[1] as string) <= 0) continue;
          if (ev.type === "delete") state.delete(ev.key);
          else state.set(ev.key, [ev.value as number, ev.revision]);
        }
        const final = await rangeAll<number>(s, prefix);
        assertEquals(
          [...state].map(([key, [value]]) => [key, value]).sort(),
          final.map((kv) => [kv.key, kv.value]).sort(),
        );
        assertEquals(w.errors, []);
        w.cancel();
      });
    }
  });

  t("resume after cancel: from the last revision seen, nothing missed or repeated", async (s) => {
    const r0 = await s.currentRevision();
    const revs: string[] = [];
    for (let i = 0; i < 10; i++) revs.push(await s.put(`/res/${i}`, i));
    // Cancelling from inside the callback stops delivery at once.
    const first: WatchEvent[] = [];
    const cancel = s.watch("/res/", (ev) => {
      first.push(ev);
      if (first.length === 5) cancel();
    }, { fromRevision: r0 });
    await until("5 events", () => first.length >= 5);
    for (let i = 10; i < 15; i++) revs.push(await s.put(`/res/${i}`, i));
    const resumed = record(s, "/res/", { fromRevision: first[4].revision });
    await until("the rest", () => resumed.events.length >= 10);
    assertEquals(first.length, 5, "nothing after cancel");
    assertEquals([...first, ...resumed.events].map((e) => e.revision), revs);
    assertEquals([...first, ...resumed.events].map((e) => e.value), [...Array(15).keys()]);
    const resumedRevs = resumed.revs();
    // A resume point in the middle of the history works the same.
    const mid = record(s, "/res/", { fromRevision: revs[11] });
    await s.put("/res/99", 99);
    await until("the mid watcher", () => mid.events.some((e) => e.key === "/res/99"));
    assertEquals(mid.events.map((e) => e.key), ["/res/12", "/res/13", "/res/14", "/res/99"]);
    await until("the first resumed watcher", () => resumed.events.length >= 11);
    assertEquals(resumed.revs(), [...resumedRevs, mid.revs()[3]], "nothing repeated");
    resumed.cancel();
    mid.cancel();
  });

  t("watchers at different positions on one client each get every event once", async (s) => {
    const r0 = await s.currentRevision();
    const revs: string[] = [];
    for (let i = 0; i < 8; i++) revs.push(await s.put(`/pos/${i}`, i));
    const live = record(s, "/pos/", { fromRevision: revs[7] });
    const mid = record(s, "/pos/", { fromRevision: revs[3] });
    const old = record(s, "/pos/", { fromRevision: r0 });
    const more: string[] = [];
    for (let i = 8; i < 12; i++) {
      more.push(await s.put(`/pos/${i}`, i));
      if (i === 9) await until("the live watcher", () => live.events.length >= 2);
    }
    const late = record(s, "/pos/", { fromRevision: revs[5] });
    const all = [...revs, ...more];
    for (const w of [live, mid, old, late]) {
      await until("the last write", () => w.revs().includes(more[3]));
    }
    const last = await s.put("/pos/end", 0);
    for (const w of [live, mid, old, late]) await until("the end", () => w.revs().includes(last));
    assertEquals(old.revs(), [...all, last]);
    assertEquals(mid.revs(), [...all.slice(4), last]);
    assertEquals(late.revs(), [...all.slice(6), last]);
    assertEquals(live.revs(), [...more, last]);
    for (const w of [live, mid, old, late]) w.cancel();
  });

  t("compaction: a watch from before it fails once with StoreCompactedError", async (s) => {
    const r0 = await s.currentRevision();
    const revs: string[] = [];
    for (let i = 0; i < 6; i++) revs.push(await s.put(`/cmp/${i}`, i));
    await s.compact(revs[3]);
    await s.compact(revs[1]); // older than the compaction: a no-op
    const future = await assertRejects(() => s.compact(next(revs[5], 5)));
    assert(future instanceof ApiError && future.code === "validation_failed", String(future));
    const stale = record(s, "/cmp/", { fromRevision: r0 });
    const ok = record(s, "/cmp/", { fromRevision: revs[3] });
    await until("the stale watch fails", () => stale.errors.length > 0);
    const err = stale.errors[0];
    assert(err instanceof StoreCompactedError, String(err));
    assertEquals(err.code, "revision_compacted");
    assertEquals(err.compactRevision, revs[3]);
    assertEquals(err.details?.compact_revision, revs[3]);
    await until("the retained history", () => ok.events.length >= 2);
    assertEquals(ok.revs(), [revs[4], revs[5]]);
    // The failed watch stays stopped: later writes reach only the other one.
    const later = await s.put("/cmp/later", 1);
    await until("the later write", () => ok.revs().includes(later));
    assertEquals([stale.events.length, stale.errors.length], [0, 1]);
    // After re-listing, watching from the list's revision works.
    const relist = await s.range("/cmp/");
    assertEquals(relist.kvs.length, 7);
    const again = record(s, "/cmp/", { fromRevision: relist.revision });
    const last = await s.put("/cmp/0", "x");
    await until("the re-listed watch", () => again.revs().includes(last));
    assertEquals([again.events.length, again.errors.length], [1, 0]);
    ok.cancel();
    again.cancel();
  });

  t("watch sees changes made by another client, both ways", async (s, fx) => {
    const p = await fx.peer();
    const here = record(s, "/x/", { fromRevision: await s.currentRevision() });
    const there = record(p, "/x/", { fromRevision: await p.currentRevision() });
    const r1 = await p.put("/x/a", { from: "peer" });
    const r2 = await s.put("/x/b", new Uint8Array([1, 2, 3]));
    const r3 = (await p.txn({
      compare: [],
      success: [{ type: "delete", key: "/x/a" }, { type: "put", key: "/x/c", value: 3 }],
    })).revision;
    for (const w of [here, there]) {
      await until("3 revisions", () => w.revs().includes(r3));
      assertEquals(brief(w.events), [["put", "/x/a"], ["put", "/x/b"], ["delete", "/x/a"], [
        "put",
        "/x/c",
      ]]);
      assertEquals(w.revs(), [r1, r2, r3, r3]);
      assertEquals(w.events[0].value, { from: "peer" });
      assertEquals(w.events[1].value, new Uint8Array([1, 2, 3]));
    }
    here.cancel();
    there.cancel();
  });

  t("values over 64 KiB travel through watch (same and other client)", async (s, fx) => {
    const p = await fx.peer();
    const from = await s.currentRevision();
    const here = record(s, "/bigw/", { fromRevision: from });
    const there = record(p, "/bigw/", { fromRevision: from });
    const json = { userData: "#cloud-config\n" + "x".repeat(100_000), tag: "é".repeat(20_000) };
    const bytes = Uint8Array.from({ length: 150_000 }, (_, i) => (i * 7) % 256);
    await s.put("/bigw/json", json);
    await p.put("/bigw/bytes", bytes);
    for (const w of [here, there]) {
      await until("both values", () => w.events.length >= 2);
      assertEquals(w.events.map((e) => e.value), [json, bytes]);
    }
    here.cancel();
    there.cancel();
  });

  t(
    "leases: expiry deletes attached keys (with watch events); keep-alive and revoke",
    async (s, fx) => {
      const w = record(s, "/lease/", { fromRevision: await s.currentRevision() });
      const short = await s.grant(1);
      await s.put("/lease/a", 1, { lease: short });
      await s.put("/lease/b", 2, { lease: short });
      await s.put("/lease/keep", 3);
      assertEquals((await s.get("/lease/a"))?.lease, short);
      // With slack (a store that revokes expired leases late) `kept` lives longer, so that it
      // would be gone by the check without the keep-alive and is alive with it; slack 0 gives
      // TTL 1 s, keep-alive at 0.6 s, check at 1.2 s.
      const slack = fx.leaseSlackMs ?? 0;
      const keptTtl = 1 + Math.ceil(slack / 1000);
      const kept = await s.grant(keptTtl);
      await s.put("/lease/kept", 4, { lease: kept });
      // Re-putting a key without the lease detaches it.
      await s.put("/lease/b", 22);
      const beforeKeepAlive = keptTtl * 1000 - 400;
      await fx.advance(beforeKeepAlive);
      await s.keepAlive(kept); // now expires keptTtl s after this
      // short expired (and kept would have, by its TTL + slack), kept has 0.4 s (+ slack) left
      await fx.advance(keptTtl * 1000 + slack + 200 - beforeKeepAlive);
      await until(
        "the expired lease's key is gone",
        async () => (await s.get("/lease/a")) === null,
      );
      assertEquals((await s.get("/lease/b"))?.value, 22, "detached key survives");
      assertEquals((await s.get("/lease/keep"))?.value, 3);
      assertEquals((await s.get("/lease/kept"))?.value, 4, "kept-alive lease survives");
      await until("the delete event", () => w.events.some((e) => e.type === "delete"));
      assertEquals(brief(w.events.filter((e) => e.type === "delete")), [["delete", "/lease/a"]]);
      await assertRejects(() => s.keepAlive(short));
      const e = await assertRejects(() => s.put("/lease/z", 1, { lease: short }));
      assert(e instanceof StoreError);
      await s.revoke(kept);
      assertEquals(await s.get("/lease/kept"), null, "revoke deletes attached keys");
      await s.revoke("no-such-lease");
      w.cancel();
    },
  );

  t("leases work across clients; expiry is seen by another client's watcher", async (s, fx) => {
    const p = await fx.peer();
    const w = record(p, "/xl/", { fromRevision: await p.currentRevision() });
    const lease = await s.grant(2);
    await s.put("/xl/a", 1, { lease });
    await p.put("/xl/b", 2, { lease }); // a lease granted by one client, used by the other
    await fx.advance(1500);
    await p.keepAlive(lease);
    await fx.advance(1500); // 3 s after the grant, 1.5 s after the keep-alive: alive
    assertEquals((await s.get("/xl/a"))?.value, 1);
    await fx.advance(600);
    await until("expiry seen by the other client", () => w.events.length >= 4);
    assertEquals(brief(w.events).slice(2).sort(), [["delete", "/xl/a"], ["delete", "/xl/b"]]);
    assertEquals(await p.get("/xl/a"), null);
    // A revoke through one client is seen by the other's watcher.
    const l2 = await p.grant(60);
    await p.put("/xl/c", 3, { lease: l2 });
    await s.revoke(l2);
    await until("the revoke", () => w.events.some((e) => e.key === "/xl/c" && e.type === "delete"));
    assertEquals(await p.get("/xl/c"), null);
    w.cancel();
  });

  t("leases: puts racing a revoke either fail or are deleted by it (no orphans)", async (s) => {
    for (let round = 0; round < 20; round++) {
      const lease = await s.grant(60);
      // Random start offsets interleave the puts with the revoke's steps differently each round.
      const puts = Array.from({ length: 10 }, async (_, i) => {
        await jitter();
        try {
          await s.put(`/race/${round}/${i}`, i, { lease });
        } catch (e) {
          assert(e instanceof StoreError, String(e));
        }
      });
      await jitter();
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
