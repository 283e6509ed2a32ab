// deno-lint-ignore-file no-explicit-any -- JSON responses and the store proxy are dynamic
/**
 * Node registration, heartbeats and the node / VM controllers' reconciles against an
 * in-process context (no servers): what a heartbeat reads and writes, bootstrap with a bad
 * CSR, the reduced node view of non-managing roles, stale nodes, VM status from observations.
 */
import "reflect-metadata";
import * as x509 from "@peculiar/x509";
import { assert, assertEquals, assertRejects } from "../assert.ts";
import type { AgentClient } from "../../cp/agent_client.ts";
import { publicApp } from "../../cp/app.ts";
import { issueAccessToken } from "../../cp/auth/jwt.ts";
import { parseApiConfig } from "../../cp/config.ts";
import type { CpContext } from "../../cp/context.ts";
import { createJoinToken } from "../../cp/join_tokens.ts";
import { applyHeartbeat, bootstrapNode } from "../../cp/nodes/service.ts";
import { markIfStale } from "../../cp/nodes/controller.ts";
import { reconcileVm } from "../../cp/vms/controller.ts";
import { nextPressure, pressuredKinds } from "../../cp/nodes/pressure.ts";
import { hashToken } from "../../cp/auth/tokens.ts";
import {
  type JoinTokenRecord,
  keys,
  type NodeRecord,
  type VmRecord,
} from "../../cp/repo/records.ts";
import { openKvStore } from "../../cp/store/kv.ts";
import type { Store, TxnRequest } from "../../cp/store/store.ts";
import { createUser } from "../../cp/users/service.ts";
import type { HeartbeatRequest } from "../../shared/api/agent.ts";
import { ApiError } from "../../shared/errors.ts";
import { createLogger } from "../../shared/log.ts";
import { certFingerprint, createCa, createCsr, splitSans } from "../../shared/pki.ts";
import type { Role } from "../../shared/rbac.ts";

/** Runs before a store transaction is applied (tests use it to inject a racing write). */
type TxnHook = (req: TxnRequest, raw: Store) => Promise<void>;

/** A store that records every call as `<method> <first argument>` and runs `hooks.txn`. */
function counting(store: Store, hooks: { txn?: TxnHook }): { store: Store; calls: string[] } {
  const calls: string[] = [];
  const proxy = new Proxy(store, {
    get(target, prop) {
      const v = (target as any)[prop];
      if (typeof v !== "function") return v;
      return async (...args: unknown[]) => {
        calls.push(`${String(prop)} ${typeof args[0] === "string" ? args[0] : ""}`);
        if (prop === "txn" && hooks.txn) await hooks.txn(args[0] as TxnRequest, target);
        return await v.apply(target, args);
      };
    },
  });
  return { store: proxy, calls };
}

async function withCtx(
  fn: (ctx: CpContext, calls: string[], dir: string, hooks: { txn?: TxnHook }) => Promise<void>,
) {
  const dir = await Deno.makeTempDir({ prefix: "otx-nodes-" });
  const kv = await openKvStore(`${dir}/store.kv`);
  const hooks: { txn?: TxnHook } = {};
  const { store, calls } = counting(kv, hooks);
  const ca = await createCa();
  const ctx: CpContext = {
    cfg: parseApiConfig(
      `store:\n  data_dir: ${dir}\nstorage_pools:\n  allowed_path_prefixes: [${dir}/pools/]\n`,
    ),
    log: createLogger("test", "error"),
    store,
    pki: { ca, caFingerprint: await certFingerprint(ca.certPem), replica: ca, replicaName: "cp" },
    jwtSecret: crypto.getRandomValues(new Uint8Array(32)),
    agents: {} as AgentClient,
    now: () => new Date(),
  };
  try {
    await fn(ctx, calls, dir, hooks);
  } finally {
    await kv.close();
    await Deno.remove(dir, { recursive: true });
  }
}

async function register(ctx: CpContext, node: string): Promise<void> {
  const tok = await createJoinToken(ctx.store, { node_name: node }, {
    defaultTtlSeconds: 60,
    createdBy: "test",
    caFingerprint: ctx.pki.caFingerprint,
    now: ctx.now(),
  });
  const csr = await createCsr(node, splitSans(["127.0.0.1"]));
  await bootstrapNode(ctx, tok.token, csr.csrPem);
}

/** A VM record on `node` in the default pool under `dir`, with `over` applied. */
function vmRecord(dir: string, name: string, over: Partial<VmRecord> = {}): VmRecord {
  const ts = new Date().toISOString();
  return {
    id: crypto.randomUUID(),
    name,
    owner_id: "u",
    image_url: "http://h/i.img",
    image_sha256: null,
    image: "i.img",
    architecture: "amd64",
    vcpus: 1,
    memory_mb: 128,
    disk_gib: 1,
    user_data: null,
    pool: "default",
    pool_path: `${dir}/pools/default`,
    node: "node-a",
    status: "running",
    desired_phase: "running",
    image_format: "raw",
    restart_policy: "on-failure",
    restart_count: 0,
    last_exit: null,
    last_task: null,
    active_task_id: null,
    last_restart_at: null,
    error: null,
    created_at: ts,
    updated_at: ts,
    ...over,
  };
}

function heartbeat(node: string, dir: string): HeartbeatRequest {
  return {
    node_name: node,
    endpoint: "https://127.0.0.1:9443",
    architecture: "amd64",
    accelerator: "tcg",
    agent_version: "test",
    pools_dir: `${dir}/pools`,
    resources: {
      cpu_cores_total: 2,
      load_average_1m: 0,
      memory_total_mib: 2048,
      memory_available_mib: 1024,
      system_disk_total_bytes: 100,
      system_disk_available_bytes: 50,
    },
    pools: [{
      name: "default",
      path: `${dir}/pools/default`,
      status: "ready",
      message: null,
      total_bytes: 100,
      available_bytes: 50,
      images: [],
    }],
    vms: [],
    tasks: [],
  };
}

/** Stores the default pool instance of `node` (what the pool provisioner creates). */
async function provisionDefaultPool(ctx: CpContext, node: string, dir: string): Promise<void> {
  const ts = new Date().toISOString();
  await ctx.store.put(keys.pool("default", node), {
    id: crypto.randomUUID(),
    name: "default",
    node,
    type: "local_dir",
    path: `${dir}/pools/default`,
    status: "pending",
    message: null,
    total_bytes: null,
    available_bytes: null,
    images: [],
    created_at: ts,
    updated_at: ts,
  });
}

/** Flips `name` if stale; returns whether it flipped. */
async function flipped(ctx: CpContext, name: string): Promise<boolean> {
  const before = (await ctx.store.get<NodeRecord>(keys.node(name)))!.value.status;
  const after = (await markIfStale(ctx, name))!.status;
  return before !== after;
}

Deno.test("heartbeat: records only; one read of the node's pools, no VM scan, no write when nothing changed", async () => {
  await withCtx(async (ctx, calls, dir) => {
    await register(ctx, "node-a");
    await provisionDefaultPool(ctx, "node-a", dir);
    const first = await applyHeartbeat(ctx, "node-a", heartbeat("node-a", dir));
    assertEquals(first.desired_pools, [{ name: "default", path: `${dir}/pools/default` }]);
    const pool = (await ctx.store.get<{ status: string }>(keys.pool("default", "node-a")))!;
    assertEquals(pool.value.status, "ready");

    const nodeBefore = (await ctx.store.get(keys.node("node-a")))!.modRevision;
    calls.length = 0;
    const second = await applyHeartbeat(ctx, "node-a", heartbeat("node-a", dir));
    assertEquals(
      (await ctx.store.get(keys.node("node-a")))!.modRevision,
      nodeBefore,
      "a heartbeat that changes nothing is not written",
    );
    assert(!calls.some((c) => c.startsWith("txn")), `no store write: ${calls}`);
    assertEquals(second.desired_pools, first.desired_pools);
    const poolCalls = calls.filter((c) => / \/pools\//.test(c));
    assertEquals(poolCalls, ["range /pools/"], "pools are read once per heartbeat");
    assert(!calls.some((c) => / \/vms\//.test(c)), `no VM reads: ${calls}`);
    assertEquals(
      (await ctx.store.get<{ status: string }>(keys.pool("default", "node-a")))!.modRevision,
      pool.modRevision,
      "an unchanged pool is not rewritten",
    );
  });
});

Deno.test("bootstrap: a bad CSR is validation_failed and consumes no token use", async () => {
  await withCtx(async (ctx) => {
    const tok = await createJoinToken(ctx.store, { node_name: "node-b" }, {
      defaultTtlSeconds: 60,
      createdBy: "test",
      caFingerprint: ctx.pki.caFingerprint,
      now: ctx.now(),
    });
    const csr = await createCsr("node-b", { dns: [], ip: [] });
    // A CSR whose DNS SAN is not a host name (it used to reach the CA as an IP: a 500).
    const keysPair = await crypto.subtle.generateKey(
      { name: "ECDSA", namedCurve: "P-256" },
      true,
      ["sign", "verify"],
    ) as CryptoKeyPair;
    const bad = await x509.Pkcs10CertificateRequestGenerator.create({
      name: "CN=node-b",
      keys: keysPair,
      signingAlgorithm: { name: "ECDSA", hash: "SHA-256" },
      extensions: [new x509.SubjectAlternativeNameExtension([{ type: "dns", value: "a:b" }])],
    });
    for (const pem of [bad.toString("pem"), "not a csr"]) {
      const e = await assertRejects(() => bootstrapNode(ctx, tok.token, pem));
      assert(e instanceof ApiError && e.code === "validation_failed", String(e));
    }
    const rec = await ctx.store.get<JoinTokenRecord>(keys.joinToken(await hashToken(tok.token)));
    assertEquals(rec!.value.uses, 0);
    assertEquals(await ctx.store.get(keys.node("node-b")), null);
    await bootstrapNode(ctx, tok.token, csr.csrPem);
    assert(await ctx.store.get(keys.node("node-b")));
  });
});

Deno.test("nodes API: developer and viewer get the reduced node shape (no hardware inventory)", async () => {
  await withCtx(async (ctx, _calls, dir) => {
    await register(ctx, "node-a");
    await provisionDefaultPool(ctx, "node-a", dir);
    await applyHeartbeat(ctx, "node-a", heartbeat("node-a", dir));
    const app = publicApp(ctx);
    const as = async (role: Role, path: string) => {
      const u = await createUser(ctx.store, {
        email: `${role}-${crypto.randomUUID()}@example.com`,
        password: "password",
        role,
      });
      const t = await issueAccessToken(ctx.jwtSecret, { sub: u.id, role }, 60);
      const res = await app.request(path, { headers: { authorization: `Bearer ${t.token}` } });
      assertEquals(res.status, 200);
      return await res.json();
    };
    for (const role of ["admin", "operator"] as const) {
      assertEquals((await as(role, "/v1/nodes/node-a")).resources.cpu_cores_total, 2, role);
      assertEquals((await as(role, "/v1/nodes")).items[0].resources.cpu_cores_total, 2, role);
    }
    for (const role of ["developer", "viewer"] as const) {
      const one = await as(role, "/v1/nodes/node-a");
      assertEquals([one.name, one.status, one.resources], ["node-a", "ready", null], role);
      assertEquals((await as(role, "/v1/nodes")).items[0].resources, null, role);
    }
  });
});

Deno.test("node monitor: a heartbeat racing the stale flip wins, and no flip is reported", async () => {
  await withCtx(async (ctx, _calls, dir, hooks) => {
    const lines: Record<string, unknown>[] = [];
    ctx.log = createLogger("test", "debug", (l) => lines.push(JSON.parse(l)));
    await register(ctx, "node-a");
    await applyHeartbeat(ctx, "node-a", heartbeat("node-a", dir));
    // Later than the stale threshold (90 s) after that heartbeat.
    ctx.now = () => new Date(Date.now() + 120_000);
    // A heartbeat lands between the monitor's read and its write.
    let raced = false;
    hooks.txn = async (req, raw) => {
      const put = req.success.find((op) => op.type === "put" && op.key === keys.node("node-a"));
      if (raced || !put || (put as { value: NodeRecord }).value.status !== "unreachable") return;
      raced = true;
      const cur = (await raw.get<NodeRecord>(keys.node("node-a")))!.value;
      await raw.put(keys.node("node-a"), {
        ...cur,
        last_heartbeat_at: ctx.now().toISOString(),
      });
    };
    assertEquals(await flipped(ctx, "node-a"), false);
    assert(raced);
    assertEquals((await ctx.store.get<NodeRecord>(keys.node("node-a")))!.value.status, "ready");
    assert(!lines.some((l) => l.msg === "node unreachable"), "no phantom flip logged");
    // Without a racing heartbeat the flip happens and is reported once.
    ctx.now = () => new Date(Date.now() + 240_000);
    assertEquals(await flipped(ctx, "node-a"), true);
    assertEquals(lines.filter((l) => l.msg === "node unreachable").length, 1);
  });
});

Deno.test("vm controller: a VM whose delete failed keeps failed + error; others follow the agent", async () => {
  await withCtx(async (ctx, _calls, dir) => {
    await register(ctx, "node-a");
    const vm = (name: string, over: Partial<VmRecord>) => vmRecord(dir, name, over);
    const error = { code: "vm_delete_failed", message: "disk busy" };
    const undeleted = vm("vm-del", { status: "failed", desired_phase: "deleted", error });
    const stopped = vm("vm-stop", { status: "stopped" });
    for (const v of [undeleted, stopped]) await ctx.store.put(keys.vm(v.name), v);
    const hb = heartbeat("node-a", dir);
    hb.vms = [undeleted, stopped].map((v) => ({
      id: v.id,
      name: v.name,
      phase: "running",
      pid: 1,
      exit: null,
    }));
    await applyHeartbeat(ctx, "node-a", hb);
    for (const v of [undeleted, stopped]) await reconcileVm(ctx, v.name);
    const del = (await ctx.store.get<VmRecord>(keys.vm("vm-del")))!.value;
    assertEquals([del.status, del.error], ["failed", error]);
    assertEquals((await ctx.store.get<VmRecord>(keys.vm("vm-stop")))!.value.status, "running");
  });
});

Deno.test("node monitor: VMs of an unreachable node become unknown until a heartbeat confirms them", async () => {
  await withCtx(async (ctx, _calls, dir) => {
    await register(ctx, "node-a");
    await register(ctx, "node-b");
    const hb = heartbeat("node-a", dir);
    await applyHeartbeat(ctx, "node-a", hb);
    await applyHeartbeat(ctx, "node-b", heartbeat("node-b", dir));
    const vm = (name: string, node: string, status: VmRecord["status"]) =>
      vmRecord(dir, name, { node, status });
    const a1 = vm("a1", "node-a", "running");
    const a2 = vm("a2", "node-a", "failed");
    const b1 = vm("b1", "node-b", "running");
    for (const v of [a1, a2, b1]) await ctx.store.put(keys.vm(v.name), v);
    // node-a goes silent past the stale threshold; node-b keeps beating.
    const later = Date.now() + (ctx.cfg.nodes.stale_threshold_seconds + 1) * 1000;
    await ctx.store.put(keys.node("node-b"), {
      ...(await ctx.store.get<NodeRecord>(keys.node("node-b")))!.value,
      last_heartbeat_at: new Date(later).toISOString(),
    });
    await ctx.store.put(keys.observedVm("node-b", b1.id), {
      id: b1.id,
      name: "b1",
      phase: "running",
      pid: 1,
      exit: null,
    });
    ctx.now = () => new Date(later);
    assertEquals(await flipped(ctx, "node-a"), true);
    assertEquals(await flipped(ctx, "node-b"), false);
    for (const v of [a1, a2, b1]) await reconcileVm(ctx, v.name);
    const status = async (n: string) => (await ctx.store.get<VmRecord>(keys.vm(n)))!.value.status;
    assertEquals(await status("a1"), "unknown");
    assertEquals(await status("a2"), "failed", "a failure is kept, not hidden");
    assertEquals(await status("b1"), "running");
    // The agent comes back and reports a1 stopped (it was restarted meanwhile).
    // (restart policy never: the controller records it and does not restart it)
    await ctx.store.put(keys.vm("a1"), {
      ...(await ctx.store.get<VmRecord>(keys.vm("a1")))!.value,
      restart_policy: "never",
    });
    const exit = { reason: "crashed" as const, at: new Date().toISOString(), detail: null };
    hb.vms = [{ id: a1.id, name: a1.name, phase: "stopped", pid: null, exit }];
    await applyHeartbeat(ctx, "node-a", hb);
    await reconcileVm(ctx, "a1");
    const back = (await ctx.store.get<VmRecord>(keys.vm("a1")))!.value;
    assertEquals([back.status, back.desired_phase, back.last_exit], ["stopped", "stopped", exit]);
  });
});

Deno.test("node controller: after a control plane restart a node gets a full threshold", async () => {
  await withCtx(async (ctx, _calls, dir) => {
    await register(ctx, "node-a");
    await applyHeartbeat(ctx, "node-a", heartbeat("node-a", dir));
    const threshold = ctx.cfg.nodes.stale_threshold_seconds * 1000;
    // The control plane was down for longer than the threshold and just started.
    const startedAt = Date.now() + threshold + 5_000;
    ctx.now = () => new Date(startedAt + 1_000);
    const status = async () => (await ctx.store.get<NodeRecord>(keys.node("node-a")))!.value.status;
    await markIfStale(ctx, "node-a", startedAt);
    assertEquals(await status(), "ready", "judged from the control plane's start");
    ctx.now = () => new Date(startedAt + threshold + 1_000);
    await markIfStale(ctx, "node-a", startedAt);
    assertEquals(await status(), "unreachable", "still no heartbeat a threshold later");
  });
});

Deno.test("pressure: set after N low heartbeats, cleared by the first healthy one; scheduler skips it", async (t) => {
  const cfg = parseApiConfig(
    "placement:\n  pressure:\n    memory:\n      consecutive_required: 2\n",
  );
  const r = (memFree: number, diskFree: number) => ({
    cpu_cores_total: 2,
    load_average_1m: 0,
    memory_total_mib: 1000,
    memory_available_mib: memFree,
    system_disk_total_bytes: 1000,
    system_disk_available_bytes: diskFree,
  });
  await t.step("memory: 2 low readings set it, one healthy clears it", () => {
    let p = nextPressure(undefined, r(50, 500), cfg.placement.pressure, "t1");
    assertEquals([p.memory.under_pressure, p.memory.consecutive, p.memory.available_percent], [
      false,
      1,
      5,
    ]);
    p = nextPressure(p, r(50, 500), cfg.placement.pressure, "t2");
    assertEquals([p.memory.under_pressure, p.memory.since], [true, "t2"]);
    p = nextPressure(p, r(40, 500), cfg.placement.pressure, "t3");
    assertEquals([p.memory.under_pressure, p.memory.since], [true, "t2"], "since stays");
    assertEquals(pressuredKinds(p), ["memory"]);
    p = nextPressure(p, r(500, 500), cfg.placement.pressure, "t4");
    assertEquals(p.memory, {
      under_pressure: false,
      consecutive: 0,
      since: null,
      available_percent: 50,
    });
  });
  await t.step("system_disk uses its own default (3 in a row); disabled never sets", () => {
    let p = nextPressure(undefined, r(500, 50), cfg.placement.pressure, "t");
    p = nextPressure(p, r(500, 50), cfg.placement.pressure, "t");
    assertEquals(p.system_disk.under_pressure, false);
    p = nextPressure(p, r(500, 50), cfg.placement.pressure, "t");
    assertEquals(p.system_disk.under_pressure, true);
    const off = parseApiConfig("placement:\n  pressure:\n    system_disk:\n      enabled: false\n");
    let q = nextPressure(undefined, r(500, 0), off.placement.pressure, "t");
    for (let i = 0; i < 5; i++) q = nextPressure(q, r(500, 0), off.placement.pressure, "t");
    assertEquals(q.system_disk.under_pressure, false);
  });
});
