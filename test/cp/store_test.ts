/**
 * The embedded Deno KV store backend: the store contract suite (`store_contract.ts`) on it,
 * plus its own retention, persistence and cross-process cases, and the watch hub alone.
 */
import { assert, assertEquals, assertRejects, assertThrows } from "../assert.ts";
import { openKvStore, RETAIN_REVISIONS, WATCH_POLL_MS } from "../../cp/store/kv.ts";
import {
  type Store,
  StoreCompactedError,
  StoreError,
  type WatchEvent,
} from "../../cp/store/store.ts";
import { WatchHub } from "../../cp/store/watch_hub.ts";
import { brief, next, record, storeContract, type StoreFixture, until } from "./store_contract.ts";

export { storeContract, type StoreFixture } from "./store_contract.ts";

// ---- the embedded Deno KV backend ----

/** A manual clock shared by every handle of one fixture. */
function manualClock() {
  let t = Date.now();
  return { now: () => t, advance: (ms: number) => void (t += ms) };
}

async function kvFixture(
  extra: Parameters<typeof openKvStore>[1] = {},
): Promise<StoreFixture & { path: string; clock: ReturnType<typeof manualClock> }> {
  const dir = await Deno.makeTempDir({ prefix: "otx-store-" });
  const path = `${dir}/store.kv`;
  const clock = manualClock();
  const opts = { now: clock.now, sweepIntervalMs: 20, watchPollMs: 20, ...extra };
  const store = await openKvStore(path, opts);
  const peers: Store[] = [];
  return {
    store,
    path,
    clock,
    peer: async () => {
      const p = await openKvStore(path, opts);
      peers.push(p);
      return p;
    },
    advance: (ms) => Promise.resolve(clock.advance(ms)),
    cleanup: async () => {
      for (const p of peers) await p.close();
      await store.close();
      await Deno.remove(dir, { recursive: true });
    },
  };
}

storeContract("embedded kv", () => kvFixture());

Deno.test("store [embedded kv]: data and revisions persist across reopen; closed store fails", async () => {
  const dir = await Deno.makeTempDir({ prefix: "otx-store-" });
  try {
    const s1 = await openKvStore(`${dir}/store.kv`);
    const rev = await s1.put("/p/a", { keep: true });
    await s1.close();
    await assertRejects(() => s1.ping());
    assertThrows(() => s1.watch("/", () => {}));
    const s2 = await openKvStore(`${dir}/store.kv`);
    assertEquals((await s2.get("/p/a"))?.value, { keep: true });
    assertEquals(await s2.currentRevision(), rev);
    assertEquals(await s2.put("/p/b", 1), next(rev), "the counter continues");
    await s2.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("store [embedded kv]: defaults", () => {
  assertEquals([RETAIN_REVISIONS, WATCH_POLL_MS], [10_000, 100]);
});

/** Resolves with the first event or error of a watch from `from`. */
function firstOutcome(s: Store, prefix: string, from: string): Promise<WatchEvent | Error> {
  return new Promise((resolve) => {
    const cancel = s.watch(prefix, (ev) => {
      cancel();
      resolve(ev);
    }, { fromRevision: from, onError: resolve });
  });
}

Deno.test("store [embedded kv]: history is compacted to the last retainRevisions", async () => {
  const fx = await kvFixture({ retainRevisions: 5 });
  try {
    const s = fx.store;
    const revs: string[] = [];
    for (let i = 0; i < 20; i++) revs.push(await s.put(`/ret/${i % 3}`, i));
    // The sweep may first run mid-way through the writes; wait for it to catch up.
    const e = await until("the sweep compacts all but 5", async () => {
      const o = await firstOutcome(s, "/ret/", "0");
      return o instanceof StoreCompactedError && o.compactRevision === revs[14] ? o : null;
    });
    assertEquals(e!.requestedRevision, "0");
    const kept = record(s, "/ret/", { fromRevision: revs[14] });
    await until("the retained 5", () => kept.events.length >= 5);
    assertEquals(kept.revs(), revs.slice(15));
    assertEquals(kept.events.map((ev) => ev.value), [15, 16, 17, 18, 19]);
    const older = await firstOutcome(s, "/ret/", revs[13]);
    assert(older instanceof StoreCompactedError, String(older));
    kept.cancel();
  } finally {
    await fx.cleanup();
  }
});

Deno.test("store [embedded kv]: history older than retainMs is compacted", async () => {
  const fx = await kvFixture({ retainMs: 60_000 });
  try {
    const s = fx.store;
    const old = [await s.put("/age/a", 1), await s.put("/age/b", 2)];
    fx.clock.advance(61_000);
    const fresh = [await s.put("/age/a", 3), await s.put("/age/c", 4)];
    const e = await until("the sweep compacts old entries", async () => {
      const o = await firstOutcome(s, "/age/", "0");
      return o instanceof Error ? o : null;
    });
    assert(e instanceof StoreCompactedError, String(e));
    assertEquals(e.compactRevision, old[1]);
    const kept = record(s, "/age/", { fromRevision: old[1] });
    await until("the fresh entries", () => kept.events.length >= 2);
    assertEquals(kept.revs(), fresh);
    kept.cancel();
  } finally {
    await fx.cleanup();
  }
});

Deno.test("store [embedded kv]: a watcher sees commits of another OS process", async () => {
  const fx = await kvFixture({ watchPollMs: 100 });
  try {
    const from = await fx.store.currentRevision();
    const w = record(fx.store, "/proc/", { fromRevision: from });
    const code = `
      import { openKvStore } from "./cp/store/kv.ts";
      const s = await openKvStore(${JSON.stringify(fx.path)});
      await s.put("/proc/a", { pid: Deno.pid });
      const lease = await s.grant(60);
      await s.put("/proc/b", "x".repeat(70000), { lease });
      await s.revoke(lease);
      console.log(await s.currentRevision());
      await s.close();
    `;
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["eval", "--unstable-kv", code],
      cwd: new URL("../../", import.meta.url).pathname,
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert(out.success, new TextDecoder().decode(out.stderr));
    const last = new TextDecoder().decode(out.stdout).trim();
    await until("the child's writes", () => w.revs().includes(last));
    assertEquals(brief(w.events), [["put", "/proc/a"], ["put", "/proc/b"], [
      "delete",
      "/proc/b",
    ]]);
    assertEquals(w.revs(), [next(from), next(from, 2), next(from, 3)]);
    assertEquals((w.events[1].value as string).length, 70_000);
    assert(typeof (w.events[0].value as { pid: number }).pid === "number");
    w.cancel();
  } finally {
    await fx.cleanup();
  }
});

// ---- the watch hub alone, over a fake change log ----

Deno.test("watch hub: a revision missing from the log (not compacted) fails only the watchers that need it", async () => {
  const log = new Map<number, WatchEvent[]>();
  let rev = 0;
  const put = (r: number, key: string) => {
    log.set(r, [{ type: "put", key, value: r, revision: String(r) }]);
    rev = r;
  };
  const hub = new WatchHub(
    {
      readRevision: () => Promise.resolve(rev),
      readCompacted: () => Promise.resolve(0),
      readLog: (from) =>
        Promise.resolve(
          [...log.entries()].filter(([r]) => r >= from).sort(([a], [b]) => a - b)
            .map(([r, events]) => ({ rev: r, events })),
        ),
    },
    0,
    { pollMs: 5 },
  );
  try {
    put(1, "/a");
    put(2, "/b");
    rev = 3; // revision 3 committed, but its entry is lost
    put(4, "/d");
    const early: WatchEvent[] = [], earlyErr: Error[] = [];
    const later: WatchEvent[] = [], laterErr: Error[] = [];
    hub.add("/", (e) => early.push(e), { fromRevision: "0", onError: (e) => earlyErr.push(e) });
    hub.add("/", (e) => later.push(e), { fromRevision: "3", onError: (e) => laterErr.push(e) });
    await until("the broken watcher's error", () => earlyErr.length > 0);
    assert(earlyErr[0] instanceof StoreError && !(earlyErr[0] instanceof StoreCompactedError));
    assertEquals(early.map((e) => e.key), ["/a", "/b"], "delivered up to the hole, then stopped");
    await until("the other watcher", () => later.length > 0);
    assertEquals([later.map((e) => e.key), laterErr], [["/d"], []]);
    // A local commit builds its events only when someone watches.
    let built = 0;
    const idle = new WatchHub(
      {
        readRevision: () => Promise.resolve(9),
        readCompacted: () => Promise.resolve(0),
        readLog: () => Promise.resolve([]),
      },
      0,
      { pollMs: 5 },
    );
    idle.committed(9, () => (built++, []));
    assertEquals([built, idle.head], [0, 9]);
    await idle.close();
  } finally {
    await hub.close();
  }
});
