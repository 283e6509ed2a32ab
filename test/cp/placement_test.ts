// deno-lint-ignore-file no-explicit-any -- JSON responses are inspected dynamically
/**
 * Capacity-aware placement against a real control plane and scripted agents with real
 * certificates (cp/vms/placement.ts): concurrent creates never overcommit a node, allocations
 * follow creates and deletes, `dry_run` explains and creates nothing, pins and their errors.
 */
import { assertEquals, assertStringIncludes, assertThrows } from "../assert.ts";
import { parseApiConfig } from "../../cp/config.ts";
import type { CpContext } from "../../cp/context.ts";
import { logPlacementSettings } from "../../cp/vms/placement.ts";
import { keys } from "../../cp/repo/records.ts";
import { type NodeAllocation, seedAllocations } from "../../cp/vms/allocations.ts";
import { openKvStore } from "../../cp/store/kv.ts";
import { rangeAll } from "../../cp/store/store.ts";
import { apiFor, FakeAgent, LogCapture, startTestCp, until } from "./fixtures.ts";

const SMALL = {
  cpu_cores_total: 4,
  load_average_1m: 0,
  memory_total_mib: 8192,
  memory_available_mib: 8192,
  system_disk_total_bytes: 1e12,
  system_disk_available_bytes: 5e11,
};

const vm = (name: string, over: Record<string, unknown> = {}) => ({
  name,
  image_url: "http://127.0.0.1:1/images/img.raw",
  architecture: "amd64",
  vcpus: 1,
  memory_mb: 1024,
  disk_gib: 1,
  ...over,
});

Deno.test("placement: capacity-aware, concurrency-safe, explained", async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "otx-place-" });
  const capture = new LogCapture();
  const cp = await startTestCp(dir, capture, "", 60);
  const agents = ["node-a", "node-b"].map((n) => new FakeAgent(cp, n));
  try {
    for (const a of agents) {
      await a.bootstrap();
      assertEquals((await a.heartbeat()).status, 200);
      assertEquals((await a.heartbeat({ resources: SMALL })).status, 200);
    }
    const api = await apiFor(cp);
    await until(
      "nodes cached with their resources",
      () =>
        agents.every((a) =>
          cp.ctx.cache?.nodes.get(keys.node(a.nodeName))?.resources?.cpu_cores_total === 4
        ),
    );

    await t.step("dry run: every candidate's filters and score; nothing created", async () => {
      const res = await api("POST", "/v1/vms?dry_run=true", vm("probe"));
      assertEquals(res.status, 200, res.text);
      assertEquals(res.json.algorithm, "resource_aware");
      assertEquals(res.json.node, "node-a", "equal scores: the first name wins");
      assertEquals(res.json.candidates.map((c: any) => [c.node, c.eligible, c.winner]), [
        ["node-a", true, true],
        ["node-b", true, false],
      ]);
      assertEquals(res.json.candidates[0].filters.length, 9);
      assertEquals((await api("GET", "/v1/vms/probe")).status, 404);
      assertEquals(await cp.ctx.store.get(keys.nodeAllocation("node-a")), null);
    });

    await t.step("20 concurrent 1-vCPU creates fill two 4-core nodes exactly", async () => {
      const results = await Promise.all(
        Array.from({ length: 20 }, (_, i) => api("POST", "/v1/vms", vm(`vm-${i}`))),
      );
      const ok = results.filter((r) => r.status === 202);
      const refused = results.filter((r) => r.status === 409);
      assertEquals([ok.length, refused.length], [8, 12], results.map((r) => r.text).join("\n"));
      for (const r of refused) {
        assertEquals(r.json.error.code, "no_eligible_nodes");
        assertEquals(r.json.error.details.reason, "insufficient_resources");
        const u = r.json.error.details.node_utilization;
        assertEquals(u.map((x: any) => [x.node, x.cpu_used, x.cpu_total]), [
          ["node-a", 4, 4],
          ["node-b", 4, 4],
        ]);
      }
      const vms = (await rangeAll<any>(cp.ctx.store, keys.vms)).map((kv) => kv.value);
      for (const n of ["node-a", "node-b"]) {
        const mine = vms.filter((v) => v.node === n);
        assertEquals(mine.length, 4, `${n} holds 4`);
        const a = (await cp.ctx.store.get<NodeAllocation>(keys.nodeAllocation(n)))!.value;
        assertEquals([a.vms, a.vcpus, a.memory_mib], [4, 4, 4096]);
        assertEquals(Object.keys(a.pending_disks).sort(), mine.map((v) => v.id).sort());
      }
    });

    await t.step("pinning: --node; unknown node; pool not on node", async () => {
      const full = await api("POST", "/v1/vms", vm("pinned", { node: "node-b" }));
      assertEquals(full.status, 409);
      assertEquals(full.json.error.details.node_utilization.length, 1);
      const unknown = await api("POST", "/v1/vms", vm("pinned", { node: "nope" }));
      assertEquals([unknown.status, unknown.json.error.code], [404, "node_not_found"]);
      const noPool = await api("POST", "/v1/vms", vm("pinned", { pool: "fast" }));
      assertEquals(noPool.json.error.code, "pool_not_found");
    });

    await t.step("deletes release the allocation; the freed room is used again", async () => {
      for (
        const r of (await rangeAll<any>(cp.ctx.store, keys.vms)).filter((kv) =>
          kv.value.node === "node-a"
        )
      ) {
        const del = await api("DELETE", `/v1/vms/${r.value.name}`);
        assertEquals(del.status, 202, del.text);
      }
      await until("node-a's allocation released", async () => {
        const a = (await cp.ctx.store.get<NodeAllocation>(keys.nodeAllocation("node-a")))?.value;
        return a && a.vms === 0 && a.vcpus === 0 && a.memory_mib === 0 &&
          Object.keys(a.pending_disks).length === 0;
      });
      const again = await api("POST", "/v1/vms", vm("again", { vcpus: 4 }));
      assertEquals(again.status, 202, again.text);
      const rec = await cp.ctx.store.get<any>(keys.vm("again"));
      assertEquals(rec!.value.node, "node-a");
    });

    await t.step("bad input changes nothing", async () => {
      const alloc = async () =>
        (await cp.ctx.store.get(keys.nodeAllocation("node-a")))?.modRevision;
      const before = await alloc();
      const bad = await api("POST", "/v1/vms?dry_run=maybe", vm("x"));
      assertEquals([bad.status, bad.json.error.code], [400, "validation_failed"]);
      const huge = await api("POST", "/v1/vms", vm("x", { vcpus: 0 }));
      assertEquals(huge.json.error.code, "validation_failed");
      assertEquals(await cp.ctx.store.get(keys.vm("x")), null);
      assertEquals(await alloc(), before, "the allocation is untouched");
    });
  } finally {
    for (const a of agents) await a.close();
    await cp.stop();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("placement settings: overcommit and all-disabled are announced; bad values refused", async (t) => {
  const ctxWith = (yaml: string, capture: LogCapture) =>
    ({ cfg: parseApiConfig(yaml), log: capture.logger() }) as unknown as CpContext;

  await t.step("a Warn line per overcommitted resource, with the spec's wording", () => {
    const capture = new LogCapture();
    logPlacementSettings(ctxWith(
      "placement:\n  resources:\n    memory:\n      overcommit_ratio: 1.5\n",
      capture,
    ));
    assertEquals(capture.lines.map((l) => [l.level, l.msg]), [[
      "warn",
      "placement.resources.memory.overcommit_ratio=1.50 — overcommit enabled (OOM kill risk " +
      "under memory pressure); see docs/scheduler-configuration.md",
    ]]);
  });

  await t.step("defaults are strict and quiet; all checks off is announced", () => {
    const quiet = new LogCapture();
    logPlacementSettings(ctxWith("", quiet));
    assertEquals(quiet.lines, []);
    const off = new LogCapture();
    logPlacementSettings(ctxWith(
      "placement:\n  resources:\n" +
        ["cpu", "memory", "disk"].map((r) => `    ${r}:\n      enabled: false\n`).join(""),
      off,
    ));
    assertEquals(off.lines.length, 1);
    assertStringIncludes(String(off.lines[0].msg), "all disabled");
  });

  await t.step("an unknown algorithm or a bad ratio fails config loading", () => {
    assertThrows(() => parseApiConfig("placement:\n  algorithm: random\n"));
    assertThrows(() =>
      parseApiConfig("placement:\n  resources:\n    cpu:\n      overcommit_ratio: -1\n")
    );
    assertEquals(parseApiConfig("").placement.algorithm, "resource_aware");
  });
});

Deno.test("allocations are seeded from VM records written before they existed", async () => {
  const dir = await Deno.makeTempDir({ prefix: "otx-seed-" });
  const store = await openKvStore(`${dir}/store.kv`);
  try {
    const capture = new LogCapture();
    const ctx = {
      cfg: parseApiConfig(""),
      log: capture.logger(),
      store,
      now: () => new Date("2026-01-01T00:00:00Z"),
    } as unknown as CpContext;
    const rec = (name: string, node: string, status = "running") => ({
      id: crypto.randomUUID(),
      name,
      node,
      pool: "default",
      vcpus: 2,
      memory_mb: 512,
      disk_gib: 3,
      status,
      created_at: "2025-12-01T00:00:00Z",
    });
    for (const v of [rec("a", "n1"), rec("b", "n1"), rec("c", "n2", "lost")]) {
      await store.put(keys.vm(v.name), v);
    }
    assertEquals((await seedAllocations(ctx)).sort(), ["n1", "n2"]);
    const n1 = (await store.get<NodeAllocation>(keys.nodeAllocation("n1")))!.value;
    assertEquals([n1.vms, n1.vcpus, n1.memory_mib], [2, 4, 1024]);
    assertEquals(Object.values(n1.pending_disks).map((d) => d.bytes), [
      3 * 1024 ** 3,
      3 * 1024 ** 3,
    ]);
    const n2 = (await store.get<NodeAllocation>(keys.nodeAllocation("n2")))!.value;
    assertEquals(n2.vms, 0, "a lost VM holds nothing");
    assertEquals(await seedAllocations(ctx), [], "seeding again changes nothing");
  } finally {
    await store.close();
    await Deno.remove(dir, { recursive: true });
  }
});
