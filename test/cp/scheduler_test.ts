// deno-lint-ignore-file no-explicit-any -- 409 details are inspected dynamically
/**
 * The scheduler as a pure function (cp/scheduler.ts): filters, LeastAllocated and
 * least-VM-count scoring, the name tie-break, overcommit ratios, disabled resources, the
 * explained decision and the 409 payload.
 */
import { assert, assertEquals } from "../assert.ts";
import {
  type Allocation,
  type Candidate,
  decide,
  noEligibleNodesError,
  type PlacementRequest,
  type PlacementSettings,
} from "../../cp/scheduler.ts";
import type { NodeRecord, PoolRecord } from "../../cp/repo/records.ts";

const TS = "2026-01-01T00:00:00.000Z";
const GIB = 1024 ** 3;

function node(name: string, cores = 4, memMib = 8192, over: Partial<NodeRecord> = {}): NodeRecord {
  return {
    id: crypto.randomUUID(),
    name,
    status: "ready",
    architecture: "amd64",
    cordoned: false,
    endpoint: `https://${name}:9443`,
    accelerator: "tcg",
    agent_version: "test",
    resources: {
      cpu_cores_total: cores,
      load_average_1m: 0,
      memory_total_mib: memMib,
      memory_available_mib: memMib,
      system_disk_total_bytes: 100 * GIB,
      system_disk_available_bytes: 50 * GIB,
    },
    pools_dir: "/var/lib/otherix/pools",
    last_heartbeat_at: TS,
    created_at: TS,
    updated_at: TS,
    ...over,
  };
}

function pool(nodeName: string, over: Partial<PoolRecord> = {}): PoolRecord {
  return {
    id: crypto.randomUUID(),
    name: "default",
    node: nodeName,
    type: "local_dir",
    path: "/var/lib/otherix/pools/default",
    status: "ready",
    message: null,
    total_bytes: 100 * GIB,
    available_bytes: 80 * GIB,
    images: [],
    created_at: TS,
    updated_at: TS,
    ...over,
  };
}

function cand(
  n: NodeRecord,
  alloc: Partial<Allocation> = {},
  over: Partial<Candidate> = {},
): Candidate {
  const p = pool(n.name);
  return {
    node: n,
    pool: p,
    allocation: { vms: 0, vcpus: 0, memory_mib: 0, ...alloc },
    diskAvailableBytes: p.available_bytes,
    poolUnderPressure: false,
    ...over,
  };
}

const STRICT: PlacementSettings = {
  algorithm: "resource_aware",
  resources: {
    cpu: { enabled: true, overcommit_ratio: 1 },
    memory: { enabled: true, overcommit_ratio: 1 },
    disk: { enabled: true, overcommit_ratio: 1 },
  },
};

const REQ: PlacementRequest = {
  pool: "default",
  architecture: "amd64",
  vcpus: 2,
  memory_mib: 2048,
  disk_bytes: 10 * GIB,
};

Deno.test("scheduler: resource_aware (LeastAllocated)", async (t) => {
  await t.step("the node left least utilised after placement wins", () => {
    const d = decide(REQ, [
      cand(node("busy"), { vms: 1, vcpus: 2, memory_mib: 4096 }),
      cand(node("idle"), { vms: 5, vcpus: 0, memory_mib: 0 }),
    ], STRICT);
    assertEquals(d.winner?.pool.node, "idle", "VM count does not matter here");
  });

  await t.step("bigger nodes score higher for the same allocation", () => {
    const d = decide(REQ, [cand(node("small", 4, 4096)), cand(node("big", 16, 65536))], STRICT);
    assertEquals(d.winner?.pool.node, "big");
  });

  await t.step("ties break by lowercase node name", () => {
    const d = decide(
      REQ,
      [cand(node("node-b")), cand(node("Node-A")), cand(node("node-c"))],
      STRICT,
    );
    assertEquals(d.winner?.pool.node, "Node-A");
  });

  await t.step("the score is the mean free share of CPU and memory after placement", () => {
    const d = decide(REQ, [cand(node("a", 4, 8192), { vcpus: 0, memory_mib: 2048 })], STRICT, true);
    // cpu: (4-2)/4 = 0.5; memory: (8192-4096)/8192 = 0.5 → 50
    assertEquals(d.verdicts[0].score, 50);
  });
});

Deno.test("scheduler: least_vm_count picks the fewest VMs, ties by name", () => {
  const settings: PlacementSettings = { ...STRICT, algorithm: "least_vm_count" };
  const d = decide(REQ, [
    cand(node("node-c"), { vms: 1 }),
    cand(node("node-a"), { vms: 3 }),
    cand(node("node-b"), { vms: 1 }),
  ], settings);
  assertEquals(d.winner?.pool.node, "node-b");
  assertEquals(d.algorithm, "least_vm_count");
});

Deno.test("scheduler: filters", async (t) => {
  const only = (c: Candidate, settings = STRICT, req = REQ) => decide(req, [c], settings, true);
  const failed = (c: Candidate, settings = STRICT, req = REQ) =>
    only(c, settings, req).verdicts[0].filters.filter((f) => !f.pass).map((f) => f.name);

  await t.step("node state, cordon, pressure, architecture, pool state and pressure", () => {
    assertEquals(failed(cand(node("a", 4, 8192, { status: "unreachable" }))), ["node_ready"]);
    assertEquals(failed(cand(node("a", 4, 8192, { cordoned: true }))), ["not_cordoned"]);
    const pressure = {
      memory: { under_pressure: true, consecutive: 3, since: TS, available_percent: 1 },
      system_disk: { under_pressure: false, consecutive: 0, since: null, available_percent: 50 },
    };
    const pressured = only(cand(node("a", 4, 8192, { pressure })));
    assertEquals(pressured.verdicts[0].reasons, ["node is under memory pressure"]);
    assertEquals(failed(cand(node("a", 4, 8192, { architecture: "arm64" }))), ["architecture"]);
    const n = node("a");
    assertEquals(failed(cand(n, {}, { pool: pool("a", { status: "pending" }) })), ["pool_ready"]);
    assertEquals(failed(cand(n, {}, { poolUnderPressure: true })), ["no_pool_pressure"]);
    assertEquals(failed({ ...cand(n), node: undefined }).includes("node_ready"), true);
  });

  await t.step("CPU, memory and disk must fit (strict by default)", () => {
    const n = node("a", 4, 8192);
    assertEquals(failed(cand(n, { vcpus: 3 })), ["cpu_fit"]);
    assertEquals(failed(cand(n, { vcpus: 2 })), [], "exactly full fits");
    assertEquals(failed(cand(n, { memory_mib: 6145 })), ["memory_fit"]);
    assertEquals(failed(cand(n, {}, { diskAvailableBytes: 9 * GIB })), ["disk_fit"]);
    assertEquals(failed(cand(n, {}, { diskAvailableBytes: null })), ["disk_fit"]);
    const v = only(cand(n, { vcpus: 3 })).verdicts[0];
    assertEquals(v.reasons, ["cpu: 3+2 of 4 vCPUs"]);
    assertEquals(v.utilization.cpu_used, 3);
  });

  await t.step("an overcommit ratio stretches the capacity; disabled resources are ignored", () => {
    const n = node("a", 4, 8192);
    const over: PlacementSettings = {
      ...STRICT,
      resources: { ...STRICT.resources, cpu: { enabled: true, overcommit_ratio: 2 } },
    };
    assertEquals(failed(cand(n, { vcpus: 6 }), over), []);
    assertEquals(failed(cand(n, { vcpus: 7 }), over), ["cpu_fit"]);
    const off: PlacementSettings = {
      ...STRICT,
      resources: {
        cpu: { enabled: false, overcommit_ratio: 1 },
        memory: { enabled: false, overcommit_ratio: 1 },
        disk: { enabled: false, overcommit_ratio: 1 },
      },
    };
    assertEquals(
      failed(cand(n, { vcpus: 100, memory_mib: 1e6 }, { diskAvailableBytes: 0 }), off),
      [],
    );
    assertEquals(only(cand(n), off).verdicts[0].score, 0, "nothing to score: name decides");
  });
});

Deno.test("scheduler: nothing eligible → a 409 naming each candidate's utilisation", async (t) => {
  await t.step("insufficient resources", () => {
    const cs = [
      cand(node("a", 2, 4096), { vcpus: 2 }),
      cand(node("b", 4, 8192, { cordoned: true })),
    ];
    const d = decide(REQ, cs, STRICT);
    assertEquals(d.winner, null);
    const e = noEligibleNodesError(REQ, d);
    assertEquals(e.code, "no_eligible_nodes");
    const det = e.details as Record<string, any>;
    assertEquals(det.reason, "insufficient_resources");
    assertEquals(det.node_utilization.map((u: { node: string }) => u.node), ["a", "b"]);
    assertEquals(det.node_utilization[0].cpu_used, 2);
    assertEquals(det.node_utilization[0].cpu_total, 2);
    assertEquals(det.node_utilization[0].disk_total_bytes, 100 * GIB);
    assertEquals(det.node_utilization[0].disk_used_bytes, 20 * GIB);
    assertEquals(det.node_utilization[0].rejected, ["cpu: 2+2 of 2 vCPUs"]);
    assert(e.message.includes("b: node is cordoned"), e.message);
  });

  await t.step("pressure, or nothing ready", () => {
    const pressured = cand(node("a"), {}, { poolUnderPressure: true });
    assertEquals(
      (noEligibleNodesError(REQ, decide(REQ, [pressured], STRICT)).details as any).reason,
      "node_pressure",
    );
    const down = cand(node("a", 4, 8192, { status: "gone" }));
    assertEquals(
      (noEligibleNodesError(REQ, decide(REQ, [down], STRICT)).details as any).reason,
      "no_ready_nodes",
    );
  });

  await t.step("the explained decision marks the winner and sorts by name", () => {
    const d = decide(REQ, [cand(node("b")), cand(node("a"), { vcpus: 4 })], STRICT, true);
    assertEquals(d.verdicts.map((v) => [v.node, v.eligible, v.winner]), [
      ["a", false, false],
      ["b", true, true],
    ]);
  });
});
