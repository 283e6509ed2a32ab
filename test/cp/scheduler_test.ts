import { assert, assertEquals, assertThrows } from "../assert.ts";
import { schedule } from "../../cp/scheduler.ts";
import type { NodeRecord, PoolRecord } from "../../cp/repo/records.ts";
import { ApiError } from "../../shared/errors.ts";

const TS = "2026-01-01T00:00:00.000Z";

function node(name: string, over: Partial<NodeRecord> = {}): NodeRecord {
  return {
    id: crypto.randomUUID(),
    name,
    status: "ready",
    architecture: "amd64",
    cordoned: false,
    endpoint: `https://${name}:9443`,
    accelerator: "tcg",
    agent_version: "test",
    resources: null,
    pools_dir: "/var/lib/otherix/pools",
    last_heartbeat_at: TS,
    created_at: TS,
    updated_at: TS,
    ...over,
  };
}

function pool(name: string, nodeName: string, status: PoolRecord["status"] = "ready"): PoolRecord {
  return {
    id: crypto.randomUUID(),
    name,
    node: nodeName,
    type: "local_dir",
    path: `/var/lib/otherix/pools/${name}`,
    status,
    message: null,
    total_bytes: null,
    available_bytes: null,
    images: [],
    created_at: TS,
    updated_at: TS,
  };
}

function code(fn: () => unknown): { code: string; details?: Record<string, unknown> } {
  const e = assertThrows(fn);
  assert(e instanceof ApiError, `expected ApiError, got ${e}`);
  return { code: e.code, details: e.details };
}

Deno.test("scheduler: least VM count wins, ties broken by node name", () => {
  const nodes = [node("node-c"), node("node-a"), node("node-b")];
  const pools = nodes.map((n) => pool("default", n.name));
  const counts = new Map([["node-a", 3], ["node-b", 1], ["node-c", 1]]);
  const p = schedule({ pool: "default", architecture: "amd64" }, {
    nodes,
    poolInstances: pools,
    vmCounts: counts,
  });
  assertEquals(p.node.name, "node-b");
  assertEquals(p.pool.node, "node-b");
  const tie = schedule({ pool: "default", architecture: "amd64" }, {
    nodes,
    poolInstances: pools,
    vmCounts: new Map(),
  });
  assertEquals(tie.node.name, "node-a");
});

Deno.test("scheduler: excludes not-ready, cordoned, wrong-arch nodes and non-ready pools", () => {
  const nodes = [
    node("n-pending", { status: "pending", architecture: null }),
    node("n-unreach", { status: "unreachable" }),
    node("n-cordon", { cordoned: true }),
    node("n-arm", { architecture: "arm64" }),
    node("n-poolpending"),
    node("n-ok"),
    node("n-nopool"),
  ];
  const pools = [
    pool("default", "n-pending"),
    pool("default", "n-unreach"),
    pool("default", "n-cordon"),
    pool("default", "n-arm"),
    pool("default", "n-poolpending", "pending"),
    pool("default", "n-ok"),
    pool("other", "n-nopool"),
  ];
  const p = schedule({ pool: "default", architecture: "amd64" }, {
    nodes,
    poolInstances: pools,
    vmCounts: new Map([["n-ok", 50]]),
  });
  assertEquals(p.node.name, "n-ok");
  const reasons = Object.fromEntries(p.candidates.map((c) => [c.node, c.reasons]));
  assertEquals(reasons["n-pending"], [
    "node is pending",
    "architecture unknown does not match amd64",
  ]);
  assertEquals(reasons["n-unreach"], ["node is unreachable"]);
  assertEquals(reasons["n-cordon"], ["node is cordoned"]);
  assertEquals(reasons["n-arm"], ["architecture arm64 does not match amd64"]);
  assertEquals(reasons["n-poolpending"], ["pool instance is pending"]);
  assertEquals(reasons["n-ok"], []);
  assert(!("n-nopool" in reasons), "nodes without the pool are not candidates");
});

Deno.test("scheduler: no eligible node → no_eligible_nodes with per-candidate reasons", () => {
  const e = code(() =>
    schedule({ pool: "default", architecture: "arm64" }, {
      nodes: [node("a"), node("b", { status: "unreachable" })],
      poolInstances: [pool("default", "a"), pool("default", "b")],
      vmCounts: new Map(),
    })
  );
  assertEquals(e.code, "no_eligible_nodes");
  const cands = e.details!.candidates as { node: string; reasons: string[] }[];
  assertEquals(cands.map((c) => c.node), ["a", "b"]);
  assertEquals(cands[1].reasons, [
    "node is unreachable",
    "architecture amd64 does not match arm64",
  ]);
});

Deno.test("scheduler: node hint pins placement; pool not on node → pool_not_on_node", () => {
  const nodes = [node("a"), node("b")];
  const pools = [pool("default", "a"), pool("default", "b"), pool("fast", "a")];
  const p = schedule({ pool: "default", architecture: "amd64", node: "b" }, {
    nodes,
    poolInstances: pools,
    vmCounts: new Map([["b", 10]]),
  });
  assertEquals(p.node.name, "b");
  assertEquals(
    code(() =>
      schedule({ pool: "fast", architecture: "amd64", node: "b" }, {
        nodes,
        poolInstances: pools,
        vmCounts: new Map(),
      })
    ).code,
    "pool_not_on_node",
  );
  assertEquals(
    code(() =>
      schedule({ pool: "default", architecture: "amd64", node: "zzz" }, {
        nodes,
        poolInstances: pools,
        vmCounts: new Map(),
      })
    ).code,
    "node_not_found",
  );
  // Hinted node exists with the pool but is cordoned: no_eligible_nodes, not a fallback.
  const e = code(() =>
    schedule({ pool: "default", architecture: "amd64", node: "a" }, {
      nodes: [node("a", { cordoned: true }), node("b")],
      poolInstances: pools,
      vmCounts: new Map(),
    })
  );
  assertEquals(e.code, "no_eligible_nodes");
});

Deno.test("scheduler: unknown pool → pool_not_found", () => {
  assertEquals(
    code(() =>
      schedule({ pool: "nope", architecture: "amd64" }, {
        nodes: [node("a")],
        poolInstances: [pool("default", "a")],
        vmCounts: new Map(),
      })
    ).code,
    "pool_not_found",
  );
});
