// deno-lint-ignore-file no-explicit-any -- JSON responses are inspected dynamically
/**
 * Pool scans (cp/pools/scan.ts, scan_controller.ts), effective capacity (capacity.ts) and
 * disk pressure (pressure.ts): pure rules first, then durable `pool.scan` tasks run by a real
 * task worker on a real store against a scripted agent client, and the periodic scan driven by
 * an injected clock.
 */
import { assert, assertEquals } from "../assert.ts";
import { GIB, poolCapacity } from "../../cp/pools/capacity.ts";
import { nextDiskPressure } from "../../cp/pools/pressure.ts";
import { poolScanHandler } from "../../cp/pools/scan.ts";
import { reconcilePoolScan, TokenBucket } from "../../cp/pools/scan_controller.ts";
import { keys, type PoolRecord, type VmRecord } from "../../cp/repo/records.ts";
import { findTask } from "../../cp/tasks/queue.ts";
import { TaskRegistry } from "../../cp/tasks/registry.ts";
import { startWorker, type Worker } from "../../cp/tasks/worker.ts";
import type { AgentPoolScan } from "../../shared/api/pools.ts";
import type { Task } from "../../shared/api/tasks.ts";
import { until } from "./fixtures.ts";
import { type PoolCtx, putNode, putVm, withPoolCtx } from "./pools_helpers.ts";

const CFG = { enabled: true, threshold_percent: 15, consecutive_required: 1 };
const T0 = "2026-05-12T20:00:00.000Z";

Deno.test("disk pressure: set by one low scan (default), kept while low, cleared by a healthy one", () => {
  const low = nextDiskPressure(null, 10, 100, CFG, T0);
  assertEquals(low, { under_pressure: true, consecutive: 1, since: T0, available_percent: 10 });
  const still = nextDiskPressure(low, 5, 100, CFG, "2026-05-12T20:15:00.000Z");
  assertEquals([still.under_pressure, still.since, still.consecutive], [true, T0, 2]);
  assertEquals(nextDiskPressure(still, 15, 100, CFG, T0), {
    under_pressure: false,
    consecutive: 0,
    since: null,
    available_percent: 15,
  });
  // Two scans required: the first low one only counts.
  const two = { ...CFG, consecutive_required: 2 };
  const first = nextDiskPressure(null, 1, 100, two, T0);
  assertEquals([first.under_pressure, first.consecutive], [false, 1]);
  assertEquals(nextDiskPressure(first, 1, 100, two, T0).under_pressure, true);
  // Disabled, or an unknown total: always clear.
  assertEquals(
    nextDiskPressure(null, 0, 100, { ...CFG, enabled: false }, T0).under_pressure,
    false,
  );
  assertEquals(nextDiskPressure(low, 0, 0, CFG, T0).under_pressure, false);
});

Deno.test("effective capacity: VM disks placed but not observed by the last scan are subtracted", () => {
  const pool = (over: Partial<PoolRecord> = {}): PoolRecord => ({
    id: crypto.randomUUID(),
    name: "fast",
    node: "node-a",
    type: "local_dir",
    path: "/p/fast",
    status: "ready",
    message: null,
    total_bytes: 100 * GIB,
    available_bytes: 50 * GIB,
    images: [],
    created_at: T0,
    updated_at: T0,
    ...over,
  });
  const vm = (id: string, created: string, over: Partial<VmRecord> = {}) =>
    ({
      id,
      name: id,
      pool: "fast",
      node: "node-a",
      disk_gib: 10,
      created_at: created,
      ...over,
    }) as VmRecord;
  const vms = [
    vm("seen", "2026-05-12T19:00:00.000Z"),
    vm("missing", "2026-05-12T19:00:00.000Z"),
    vm("later", "2026-05-12T21:00:00.000Z"),
    vm("other-node", "2026-05-12T19:00:00.000Z", { node: "node-b" }),
    vm("other-pool", "2026-05-12T19:00:00.000Z", { pool: "slow" }),
  ];
  // Never scanned: every VM placed here is pending.
  assertEquals(poolCapacity(pool(), vms), {
    available_bytes: 50 * GIB,
    pending_vm_disk_bytes: 30 * GIB,
    effective_available_bytes: 20 * GIB,
  });
  const scanned = pool({
    last_scan: {
      scanned_at: "2026-05-12T20:00:01.000Z",
      started_at: T0,
      total_bytes: 100 * GIB,
      available_bytes: 50 * GIB,
      vm_disk_bytes: GIB,
      vm_disk_count: 1,
      image_bytes: 0,
      image_count: 0,
      unobserved_vm_ids: ["missing"],
    },
  });
  assertEquals(poolCapacity(scanned, vms).pending_vm_disk_bytes, 20 * GIB, "missing + later");
  assertEquals(poolCapacity(scanned, vms.slice(0, 1)).effective_available_bytes, 50 * GIB);
  // Never below zero; unknown free space stays unknown.
  assertEquals(
    poolCapacity(pool({ available_bytes: 5 * GIB }), vms).effective_available_bytes,
    0,
  );
  assertEquals(
    poolCapacity(pool({ available_bytes: null }), vms).effective_available_bytes,
    null,
  );
});

/** An agent answer for a scan of `path` with `freePercent` free of 100 GiB. */
function answer(freePercent: number, vmIds: string[] = []) {
  return (req: { name: string; path: string }): AgentPoolScan => ({
    ...req,
    total_bytes: 100 * GIB,
    available_bytes: freePercent * GIB,
    vm_disks: vmIds.map((id) => ({ vm_id: id, bytes: 256 * 1024 ** 2 })),
    image_count: 2,
    image_bytes: 600 * 1024 ** 2,
  });
}

/** Stores a ready instance `name` on `node`. */
async function readyPool(p: PoolCtx, name: string, node: string): Promise<PoolRecord> {
  const ts = p.ctx.now().toISOString();
  const rec: PoolRecord = {
    id: crypto.randomUUID(),
    name,
    node,
    type: "local_dir",
    path: `${p.dir}/pools/${name}`,
    status: "ready",
    message: null,
    total_bytes: 100 * GIB,
    available_bytes: 60 * GIB,
    images: [],
    created_at: ts,
    updated_at: ts,
  };
  await p.ctx.store.put(keys.pool(name, node), rec);
  return rec;
}

async function terminal(p: PoolCtx, id: string): Promise<Task> {
  return await until(`task ${id} terminal`, async () => {
    const t = await findTask(p.ctx.store, id);
    return t && (t.status === "succeeded" || t.status === "failed") ? t : null;
  });
}

async function withWorker(p: PoolCtx, fn: (w: Worker) => Promise<void>): Promise<void> {
  const w = await startWorker(p.ctx, new TaskRegistry().register(poolScanHandler));
  try {
    await fn(w);
  } finally {
    await w.stop();
  }
}

async function instance(p: PoolCtx, name: string, node: string): Promise<PoolRecord> {
  return (await p.ctx.store.get<PoolRecord>(keys.pool(name, node)))!.value;
}

Deno.test("pool scan: a durable task records figures, observed VMs and disk pressure; one at a time", async (t) => {
  await withPoolCtx(async (p) => {
    await putNode(p, "node-a");
    await readyPool(p, "fast", "node-a");
    const seen = await putVm(p, "seen", "fast", "node-a");
    const missing = await putVm(p, "missing", "fast", "node-a");
    await withWorker(p, async () => {
      let first: any;
      await t.step("scan queues one task; a second request returns the one in flight", async () => {
        let release!: () => void;
        p.agents.script = {
          kind: "hold",
          release: new Promise<void>((r) => (release = r)),
          scan: answer(10, [seen.id]),
        };
        const r = await p.api("POST", "/v1/pools/fast/scan");
        assertEquals(r.status, 202);
        assertEquals(r.json.items.length, 1);
        first = r.json.items[0];
        assertEquals([first.node, first.task.type, first.task.resource.kind], [
          "node-a",
          "pool.scan",
          "pool",
        ]);
        await until("the agent is asked", () => p.agents.scans.length === 1);
        const again = await p.api("POST", "/v1/pools/fast/scan?node=node-a");
        assertEquals(again.json.items[0].task.id, first.task.id);
        release();
        const done = await terminal(p, first.task.id);
        assertEquals([done.status, done.error], ["succeeded", null]);
        assertEquals(p.agents.scans, [{
          node: "node-a",
          req: { name: "fast", path: `${p.dir}/pools/fast` },
        }]);
      });

      await t.step("the instance has the scan, the pressure and the observed VMs", async () => {
        const rec = await instance(p, "fast", "node-a");
        assertEquals(rec.scan_task_id, null);
        assertEquals([rec.total_bytes, rec.available_bytes], [100 * GIB, 10 * GIB]);
        assertEquals(rec.last_scan!.unobserved_vm_ids, [missing.id]);
        assertEquals(
          [rec.last_scan!.vm_disk_count, rec.last_scan!.image_count],
          [1, 2],
        );
        assertEquals(rec.pressure!.disk.under_pressure, true);
        assert(p.logs.has("pool under disk pressure", { pool: "fast", node: "node-a" }));
        const view = (await p.api("GET", `/v1/pools/${rec.id}`)).json;
        assertEquals(view.pressure.disk.available_percent, 10);
        // `missing` was not found: its 10 GiB are pending.
        assertEquals(view.pending_vm_disk_bytes, 10 * GIB);
        assertEquals(view.effective_available_bytes, 0);
        assertEquals(view.last_scan.vm_disk_bytes, 256 * 1024 ** 2);
      });

      await t.step(
        "a VM created after the scan is pending; the next scan observes it",
        async () => {
          p.clock.now += 60_000;
          const later = await putVm(p, "later", "fast", "node-a", { disk_gib: 5 });
          let view = (await p.api("GET", "/v1/pools/fast")).json.instances[0];
          assertEquals(view.pending_vm_disk_bytes, 15 * GIB);
          p.agents.script = { kind: "answer", scan: answer(50, [seen.id, missing.id, later.id]) };
          const r = await p.api("POST", "/v1/pools/fast/scan");
          assert(r.json.items[0].task.id !== first.task.id, "a new task once the first ended");
          assertEquals((await terminal(p, r.json.items[0].task.id)).status, "succeeded");
          view = (await p.api("GET", "/v1/pools/fast")).json.instances[0];
          assertEquals(view.pending_vm_disk_bytes, 0);
          assertEquals(view.effective_available_bytes, view.available_bytes);
          assertEquals(view.pressure.disk.under_pressure, false);
          assert(p.logs.has("pool disk pressure cleared", { pool: "fast", node: "node-a" }));
        },
      );
    });
  });
});

Deno.test("pool scan: failures end the task with a stable code and change only last_scan_error", async (t) => {
  await withPoolCtx(async (p) => {
    await putNode(p, "node-a");
    await putNode(p, "node-b", { status: "unreachable" });
    await readyPool(p, "fast", "node-a");
    await readyPool(p, "fast", "node-b");
    const scan = async (node: string) => {
      const r = await p.api("POST", `/v1/pools/fast/scan?node=${node}`);
      assertEquals(r.status, 202, JSON.stringify(r.json));
      return await terminal(p, r.json.items[0].task.id);
    };
    await withWorker(p, async () => {
      for (
        const [what, script, code] of [
          ["agent unreachable", { kind: "unreachable" }, "agent_unreachable"],
          [
            "the agent does not provide the pool",
            { kind: "error", status: 404, code: "pool_not_found", message: "not desired" },
            "pool_not_found",
          ],
          [
            "the agent refuses the path",
            { kind: "error", status: 400, code: "path_not_allowed", message: "symlink" },
            "path_not_allowed",
          ],
        ] as const
      ) {
        await t.step(what, async () => {
          p.agents.script = script;
          const before = await instance(p, "fast", "node-a");
          const task = await scan("node-a");
          assertEquals([task.status, task.error?.code], ["failed", code]);
          const after = await instance(p, "fast", "node-a");
          assertEquals(after.last_scan_error?.code, code);
          assertEquals(after.scan_task_id, null);
          assertEquals(
            [after.available_bytes, after.last_scan ?? null, after.pressure ?? null],
            [before.available_bytes, null, null],
          );
        });
      }

      await t.step("node not ready: node_not_ready, the agent is not called", async () => {
        const calls = p.agents.scans.length;
        const task = await scan("node-b");
        assertEquals([task.status, task.error?.code], ["failed", "node_not_ready"]);
        assertEquals(p.agents.scans.length, calls);
      });

      await t.step("the instance is deleted during the scan: pool_not_found", async () => {
        let release!: () => void;
        p.agents.script = {
          kind: "hold",
          release: new Promise<void>((r) => (release = r)),
          scan: answer(50),
        };
        const calls = p.agents.scans.length;
        const r = await p.api("POST", "/v1/pools/fast/scan?node=node-a");
        await until("the agent is asked", () => p.agents.scans.length === calls + 1);
        assertEquals((await p.api("DELETE", "/v1/pools/fast?node=node-a")).status, 200);
        release();
        const task = await terminal(p, r.json.items[0].task.id);
        assertEquals([task.status, task.error?.code], ["failed", "pool_not_found"]);
        assertEquals(await p.ctx.store.get(keys.pool("fast", "node-a")), null, "not re-created");
      });
    });
  });
});

Deno.test("periodic scan: queued when due by the injected clock, never twice, failures retried per interval", async (t) => {
  await withPoolCtx(async (p) => {
    const INTERVAL = 900_000; // the 15 min default
    const key = "fast/node-a";
    const node = await putNode(p, "node-a");
    const pending = await readyPool(p, "fast", "node-a");
    const scanTaskOf = async () => (await instance(p, "fast", "node-a")).scan_task_id ?? null;

    await t.step("pending instances and unready nodes are not scanned", async () => {
      await p.ctx.store.put(keys.pool("fast", "node-a"), { ...pending, status: "pending" });
      assertEquals(await reconcilePoolScan(p.ctx, key), null);
      await p.ctx.store.put(keys.pool("fast", "node-a"), pending);
      await p.ctx.store.put(keys.node("node-a"), { ...node, status: "unreachable" });
      assertEquals(await reconcilePoolScan(p.ctx, key), INTERVAL);
      await p.ctx.store.put(keys.node("node-a"), node);
      assertEquals(await scanTaskOf(), null);
    });

    await t.step("the cluster-wide rate limit defers a due scan", async () => {
      let clock = 0;
      const empty = new TokenBucket(1, () => clock);
      assertEquals(empty.take(), 0, "one token to start with");
      assertEquals(await reconcilePoolScan(p.ctx, key, empty), 1000, "come back in 1 s");
      assertEquals(await scanTaskOf(), null, "nothing queued");
      clock = 500;
      assertEquals(empty.take(), 500);
      clock = 1000;
      assertEquals(empty.take(), 0);
    });

    let scannedAt = 0;
    await t.step("never scanned: queued at once, with a reason; not twice", async () => {
      assertEquals(await reconcilePoolScan(p.ctx, key), INTERVAL);
      const id = await scanTaskOf();
      assert(id);
      const task = (await findTask(p.ctx.store, id))!;
      assertEquals([task.type, task.reason, task.status], [
        "pool.scan",
        "periodic scan",
        "pending",
      ]);
      assertEquals(await reconcilePoolScan(p.ctx, key), INTERVAL);
      assertEquals(await scanTaskOf(), id, "the one in flight");
      scannedAt = p.clock.now;
      await withWorker(p, async () => {
        assertEquals((await terminal(p, id)).status, "succeeded");
      });
    });

    await t.step("not due before the interval; due at it", async () => {
      p.clock.now = scannedAt + INTERVAL - 1000;
      assertEquals(await reconcilePoolScan(p.ctx, key), 1000);
      assertEquals(await scanTaskOf(), null);
      p.clock.now = scannedAt + INTERVAL;
      assertEquals(await reconcilePoolScan(p.ctx, key), INTERVAL);
      const id = await scanTaskOf();
      assert(id);
      p.agents.script = { kind: "unreachable" };
      await withWorker(p, async () => {
        assertEquals((await terminal(p, id)).error?.code, "agent_unreachable");
      });
    });

    await t.step("a failed scan is retried after an interval, not at once", async () => {
      const failedAt = p.clock.now;
      p.clock.now = failedAt + 1000;
      assertEquals(await reconcilePoolScan(p.ctx, key), INTERVAL - 1000);
      assertEquals(await scanTaskOf(), null);
      p.clock.now = failedAt + INTERVAL;
      await reconcilePoolScan(p.ctx, key);
      assert(await scanTaskOf());
    });
  });
});

Deno.test("periodic scan: workers.storage_pool_scan.enabled false (or no workers) queues nothing", async () => {
  for (
    const yaml of [
      "  storage_pool_scan:\n    enabled: false\n",
      "  enabled: false\n",
    ]
  ) {
    await withPoolCtx(async (p) => {
      await putNode(p, "node-a");
      await readyPool(p, "fast", "node-a");
      assertEquals(await reconcilePoolScan(p.ctx, "fast/node-a"), null);
      assertEquals((await instance(p, "fast", "node-a")).scan_task_id ?? null, null);
    }, yaml);
  }
});
