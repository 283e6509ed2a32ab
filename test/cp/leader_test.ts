/**
 * Leader election (cp/cluster/leader.ts) and the leader gate of controllers, on the real
 * embedded store with two handles (two replicas), a manual lease clock and manual timers:
 * nothing here waits for real time to pass.
 */
import { assert, assertEquals } from "../assert.ts";
import { waitFor } from "../harness.ts";
import { openKvStore } from "../../cp/store/kv.ts";
import type { Store } from "../../cp/store/store.ts";
import {
  CONTROLLER_LEADER_KEY,
  LeaderElection,
  type LeaderRecord,
} from "../../cp/cluster/leader.ts";
import { Controller } from "../../cp/controllers/controller.ts";
import { ManualTimers } from "../manual_timers.ts";
import { createLogger } from "../../shared/log.ts";

const quiet = createLogger("cp", "error", () => {});
const TTL = 3;

async function twoReplicas() {
  const dir = await Deno.makeTempDir({ prefix: "otx-leader-" });
  let t = Date.now();
  const clock = { now: () => t, advance: (ms: number) => void (t += ms) };
  const opts = { now: clock.now, sweepIntervalMs: 10, watchPollMs: 10 };
  const storeA = await openKvStore(`${dir}/store.kv`, opts);
  const storeB = await openKvStore(`${dir}/store.kv`, opts);
  const make = (inner: Store, identity: string) => {
    const timers = new ManualTimers();
    // Counts settled renewals, so a step can wait for the one it triggered.
    const calls = { renewals: 0 };
    const store: Store = {
      get: (k) => inner.get(k),
      range: (p, o) => inner.range(p, o),
      txn: (r) => inner.txn(r),
      put: (k, v, o) => inner.put(k, v, o),
      delete: (k) => inner.delete(k),
      currentRevision: () => inner.currentRevision(),
      watch: (p, cb, o) => inner.watch(p, cb, o),
      compact: (r) => inner.compact(r),
      grant: (ttl) => inner.grant(ttl),
      keepAlive: (lease) => inner.keepAlive(lease).finally(() => calls.renewals++),
      revoke: (lease) => inner.revoke(lease),
      ping: () => inner.ping(),
      close: () => inner.close(),
    };
    const election = new LeaderElection({
      store,
      identity,
      ttlSeconds: TTL,
      log: quiet,
      timers,
      clock: () => timers.now,
    });
    return { store, timers, election, calls };
  };
  return {
    a: make(storeA, "cp-a"),
    b: make(storeB, "cp-b"),
    clock,
    async cleanup() {
      await storeA.close();
      await storeB.close();
      await Deno.remove(dir, { recursive: true });
    },
  };
}

const holder = async (s: Store) => (await s.get<LeaderRecord>(CONTROLLER_LEADER_KEY))?.value;

Deno.test("leader election: one leader at a time; resign and death hand over", async (t) => {
  const r = await twoReplicas();
  const changes: string[] = [];
  r.a.election.onChange((l) => changes.push(`a:${l}`));
  r.b.election.onChange((l) => changes.push(`b:${l}`));
  try {
    await t.step("a lone candidate leads once start() resolves", async () => {
      await r.a.election.start();
      assert(r.a.election.isLeader());
      assertEquals((await holder(r.a.store))?.identity, "cp-a");
      assertEquals(changes, ["a:true"]);
    });

    await t.step("a second replica follows and knows the leader", async () => {
      await r.b.election.start();
      assert(!r.b.election.isLeader());
      assertEquals(r.b.election.leader()?.identity, "cp-a");
    });

    await t.step("the leader renews: its lease outlives many TTLs", async () => {
      for (let i = 0; i < 10; i++) {
        const before = r.a.calls.renewals;
        r.a.timers.advance(1000); // a renewal every TTL/3
        await waitFor("cp-a renewed", () => Promise.resolve(r.a.calls.renewals > before));
        r.clock.advance(1000);
      }
      assert(r.a.election.isLeader());
      assert(!r.b.election.isLeader());
      assertEquals((await holder(r.b.store))?.identity, "cp-a");
    });

    await t.step(
      "a dead leader (no renewals) loses its lease; the follower takes over",
      async () => {
        // cp-a stops doing anything (its timers never fire again), as under kill -9.
        r.clock.advance(TTL * 1000 + 100);
        await waitFor("cp-b leads", () => Promise.resolve(r.b.election.isLeader()));
        assertEquals((await holder(r.b.store))?.identity, "cp-b");
        assertEquals(changes.at(-1), "b:true");
      },
    );

    await t.step("the old leader steps down on its next renewal (lease gone)", async () => {
      const before = r.a.calls.renewals;
      r.a.timers.advance(1000);
      await waitFor("cp-a tried", () => Promise.resolve(r.a.calls.renewals > before));
      await waitFor("cp-a steps down", () => Promise.resolve(!r.a.election.isLeader()));
      assertEquals((await holder(r.a.store))?.identity, "cp-b", "no flip-flop");
      assertEquals(changes.filter((c) => c.endsWith("true")).length, 2);
    });

    await t.step("resigning hands over at once (no TTL wait)", async () => {
      await r.b.election.stop();
      assert(!r.b.election.isLeader());
      await waitFor("cp-a leads again", () => Promise.resolve(r.a.election.isLeader()));
      assertEquals((await holder(r.a.store))?.identity, "cp-a");
    });
  } finally {
    await r.a.election.stop();
    await r.b.election.stop();
    await r.cleanup();
  }
});

Deno.test("controllers reconcile only while their replica leads", async () => {
  let leads = false;
  const seen: string[] = [];
  const c = new Controller({
    name: "test",
    log: quiet,
    resyncMs: 0,
    active: () => leads,
    reconcile: (key) => Promise.resolve(void seen.push(key)),
  });
  c.start(() => ["x", "y"]);
  try {
    c.enqueue("x");
    await c.idle();
    assertEquals(seen, [], "a follower drops the keys");
    leads = true;
    c.resync();
    await c.idle();
    assertEquals(seen.sort(), ["x", "y"], "the new leader looks at every key");
  } finally {
    await c.stop();
  }
});
