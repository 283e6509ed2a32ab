/**
 * Heartbeats stay bounded however much a node hosts (issue: "a node with 10,000 cached images
 * or VMs must not push its record past the store's value limit"): a real control plane, a
 * scripted agent with a real certificate posting over mTLS.
 */
import { assert, assertEquals } from "../assert.ts";
import { MAX_REPORTED_IMAGES, type ObservedPool } from "../../shared/api/nodes.ts";
import type { ObservedVm } from "../../shared/api/vm_runtime.ts";
import { keys, type NodeRecord, type PoolRecord } from "../../cp/repo/records.ts";
import { rangeAll } from "../../cp/store/store.ts";
import { poolFreeSlackBytes } from "../../cp/nodes/service.ts";
import { MAX_VALUE_BYTES } from "../../cp/store/kv.ts";
import { apiFor, FakeAgent, LogCapture, startTestCp, until } from "./fixtures.ts";
import { capPoolImages } from "../../agent/heartbeat.ts";
import { MAX_ORPHAN_CLEANUPS_IN_FLIGHT } from "../../cp/nodes/controller.ts";
import { createLogger } from "../../shared/log.ts";

const N = 10_000;

function vms(n: number): ObservedVm[] {
  return Array.from({ length: n }, (_, i) => ({
    id: crypto.randomUUID(),
    name: `vm-${String(i).padStart(5, "0")}`,
    phase: "running" as const,
    pid: 100_000 + i,
    exit: null,
  }));
}

function pool(path: string, images: number): ObservedPool {
  return {
    name: "default",
    path,
    status: "ready",
    message: null,
    total_bytes: 1e12,
    available_bytes: 5e11,
    images: Array.from({ length: images }, (_, i) => ({
      basename: `image-${String(N - i).padStart(5, "0")}-with-a-long-descriptive-name.qcow2`,
      sha256: "ab".repeat(32),
      size_bytes: 1e9 + i,
    })),
  };
}

const size = (v: unknown) => new TextEncoder().encode(JSON.stringify(v)).length;

Deno.test("heartbeat of a node with 10,000 VMs and 10,000 cached images", async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "otx-hb-bounds-" });
  const capture = new LogCapture();
  // A 10,000-VM heartbeat takes a moment to record: no `unreachable` flip in between.
  const cp = await startTestCp(dir, capture, "", 120);
  const agent = new FakeAgent(cp, "big-node");
  const store = cp.ctx.store;
  try {
    await agent.bootstrap();
    assertEquals((await agent.heartbeat()).status, 200);
    const poolPath = `${dir}/agent-pools/default`;
    const observed = vms(N);

    await t.step("is accepted; each VM is its own key, the node record stays small", async () => {
      const res = await agent.heartbeat({ vms: observed, pools: [pool(poolPath, N)] });
      assertEquals(res.status, 200, JSON.stringify(res.body).slice(0, 300));
      const stored = await rangeAll<ObservedVm>(store, keys.observedVmsOf("big-node"));
      assertEquals(stored.length, N);
      const node = (await store.get<NodeRecord>(keys.node("big-node")))!.value;
      assert(size(node) < 4096, `node record is ${size(node)} bytes`);
      assertEquals("observed_vms" in node, false);
    });

    await t.step("the pool record keeps the first 500 images by name, and the total", async () => {
      const rec = (await store.get<PoolRecord>(keys.pool("default", "big-node")))!.value;
      assertEquals(rec.images.length, MAX_REPORTED_IMAGES);
      assertEquals(rec.images_total, N);
      assertEquals(rec.images[0].basename, pool(poolPath, N).images.at(-1)!.basename);
      assert(size(rec) < MAX_VALUE_BYTES / 2, `pool record is ${size(rec)} bytes`);
      assert(
        capture.has(
          `pool caches more than ${MAX_REPORTED_IMAGES} images; only the first ` +
            `${MAX_REPORTED_IMAGES} by name are recorded`,
          { node: "big-node", pool: "default", images: N },
        ),
        "a Warn line says the list is capped",
      );
    });

    await t.step("an unchanged heartbeat writes nothing; one VM gone deletes one key", async () => {
      // (Orphan cleanup of the VMs the cluster does not know writes tasks meanwhile: compare
      // what the heartbeat itself would write.)
      const revisions = async () =>
        [
          ...(await rangeAll(store, keys.observedVmsOf("big-node"))),
          await store.get(keys.node("big-node")),
          await store.get(keys.pool("default", "big-node")),
        ].map((kv) => `${kv?.key}@${kv?.modRevision}`);
      const before = await revisions();
      await agent.heartbeat({ vms: observed, pools: [pool(poolPath, N)] });
      const after = await revisions();
      assertEquals(after.filter((r, i) => r !== before[i]), [], "no store write");
      const gone = observed[123];
      await agent.heartbeat({
        vms: observed.filter((v) => v !== gone),
        pools: [pool(poolPath, N)],
      });
      assertEquals(await store.get(keys.observedVm("big-node", gone.id)), null);
      assertEquals(
        (await rangeAll(store, keys.observedVmsOf("big-node"))).length,
        N - 1,
      );
    });

    await t.step("pool free space: small moves write nothing, larger ones do", async () => {
      const key = keys.pool("default", "big-node");
      const rev = async () => (await store.get(key))!.modRevision;
      const before = await rev();
      const p = pool(poolPath, N);
      const slack = poolFreeSlackBytes(p.total_bytes); // 5 GB of a 1 TB filesystem
      await agent.heartbeat({ vms: observed, pools: [{ ...p, available_bytes: 5e11 - 1e6 }] });
      assertEquals(await rev(), before, "1 MB less free: not written");
      await agent.heartbeat({
        vms: observed,
        pools: [{ ...p, available_bytes: 5e11 - 2 * slack }],
      });
      assert(await rev() !== before, "more than the slack: written");
      const rec = (await store.get<PoolRecord>(key))!.value;
      assertEquals(rec.available_bytes, 5e11 - 2 * slack);
    });

    await t.step("node delete --force forgets the node's observed VMs", async () => {
      // The VMs are not known to the control plane (orphans): the node controller queues their
      // deletion; deleting the node drops the observations either way.
      const api = await apiFor(cp);
      const res = await api("DELETE", "/v1/nodes/big-node?force=true");
      assertEquals(res.status, 204, res.text);
      assert(
        capture.has("many orphan VMs on node; deleting them a few at a time", {
          node: "big-node",
          in_flight_max: MAX_ORPHAN_CLEANUPS_IN_FLIGHT,
        }),
        "orphan cleanup was throttled",
      );
      assert(
        capture.lines.filter((l) => l.msg === "orphan VM on node; queued its deletion").length <
          100,
        "not one task per orphan at once",
      );
      await until(
        "observed VMs forgotten",
        async () =>
          (await store.range(keys.observedVmsOf("big-node"), { limit: 1 })).kvs
            .length === 0,
      );
    });
  } finally {
    await agent.close();
    await cp.stop();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("agent: capPoolImages caps each pool's list and logs once per change", () => {
  const lines: string[] = [];
  const log = createLogger("test", "info", (l) => lines.push(l));
  const capped = new Set<string>();
  const big = pool("/p", MAX_REPORTED_IMAGES + 7);
  const [out] = capPoolImages([big], log, capped);
  assertEquals(out.images.length, MAX_REPORTED_IMAGES);
  assertEquals(out.images_total, MAX_REPORTED_IMAGES + 7);
  capPoolImages([big], log, capped);
  assertEquals(lines.filter((l) => l.includes("more than")).length, 1, "logged once");
  const [small] = capPoolImages([pool("/p", 3)], log, capped);
  assertEquals(small.images.length, 3);
  assertEquals(small.images_total, undefined);
  assertEquals(lines.filter((l) => l.includes("no longer capped")).length, 1);
});
