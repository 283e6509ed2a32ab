/**
 * Nodes: registration through join-token bootstrap, heartbeats (status, capacity, pools and
 * VM reconciliation), and the public views (spec: "Nodes", "Step 1 — run seed-dev",
 * troubleshooting "Node flips ready -> unreachable").
 *
 * Status: `pending` after CSR redemption → `ready` on a heartbeat → `unreachable` when
 * heartbeats stop for `nodes.stale_threshold_seconds` (see `node_monitor.ts`) → `ready`
 * again on the next heartbeat.
 *
 * @module
 */
import { AGENT_CERT_ORG } from "../shared/constants.ts";
import type {
  BootstrapResponse,
  HeartbeatRequest,
  HeartbeatResponse,
  Node,
  ObservedPool,
} from "../shared/api/nodes.ts";
import type { PoolInstance } from "../shared/api/pools.ts";
import { isTerminal } from "../shared/api/tasks.ts";
import { ApiError } from "../shared/errors.ts";
import { signCsr } from "../shared/pki.ts";
import type { CpContext } from "./context.ts";
import { peekJoinToken, redeemJoinToken } from "./join_tokens.ts";
import { checkPoolPath, joinPoolPath } from "./pool_paths.ts";
import {
  type ClusterSettings,
  keys,
  type NodeRecord,
  type PoolRecord,
  type TaskRecord,
  type VmRecord,
} from "./repo/records.ts";
import { type KeyValue, rangeAll, updateKey } from "./store/store.ts";

/**
 * The public view of a node with `vmCount` VMs placed on it. `full` false is the reduced
 * shape served to roles without `node:manage` (spec: developer / viewer callers see no
 * hardware inventory): `resources` is null.
 */
export function nodeView(n: NodeRecord, vmCount: number, full = true): Node {
  return {
    id: n.id,
    name: n.name,
    status: n.status,
    architecture: n.architecture,
    cordoned: n.cordoned,
    endpoint: n.endpoint,
    accelerator: n.accelerator,
    agent_version: n.agent_version,
    resources: full ? n.resources : null,
    vm_count: vmCount,
    last_heartbeat_at: n.last_heartbeat_at,
    created_at: n.created_at,
    updated_at: n.updated_at,
  };
}

/** The public view of a pool instance. */
export function poolView(p: PoolRecord, defaultPool: string | null): PoolInstance {
  return {
    id: p.id,
    name: p.name,
    node: p.node,
    type: p.type,
    path: p.path,
    status: p.status,
    message: p.message,
    total_bytes: p.total_bytes,
    available_bytes: p.available_bytes,
    images: p.images,
    is_default: defaultPool !== null && p.name === defaultPool,
    created_at: p.created_at,
    updated_at: p.updated_at,
  };
}

/** Number of VM records placed on each node, keyed by node name (nodes without VMs absent). */
export async function vmCounts(ctx: CpContext): Promise<Map<string, number>> {
  const counts = new Map<string, number>();
  for (const kv of await rangeAll<VmRecord>(ctx.store, keys.vms)) {
    counts.set(kv.value.node, (counts.get(kv.value.node) ?? 0) + 1);
  }
  return counts;
}

/** Reads a node; null when it is not registered. */
export async function findNode(ctx: CpContext, name: string): Promise<NodeRecord | null> {
  return (await ctx.store.get<NodeRecord>(keys.node(name)))?.value ?? null;
}

/** Reads a node. @throws ApiError `node_not_found` */
export async function getNode(ctx: CpContext, name: string): Promise<NodeRecord> {
  const node = await findNode(ctx, name);
  if (!node) throw new ApiError("node_not_found", `node "${name}" not found`);
  return node;
}

/** The cluster settings (absent = never set). */
export async function getSettings(ctx: CpContext): Promise<ClusterSettings | null> {
  return (await ctx.store.get<ClusterSettings>(keys.settings))?.value ?? null;
}

/**
 * Redeems a join token with a CSR: signs it (CN = the token's node name, O = AGENT_CERT_ORG)
 * and creates the node (or resets an existing one) as `pending`, consuming one token use in
 * the same transaction.
 *
 * @throws ApiError `unauthenticated` / `token_expired` / `token_exhausted`,
 *   `validation_failed` for a bad CSR (no use is consumed)
 */
export async function bootstrapNode(
  ctx: CpContext,
  token: string,
  csrPem: string,
): Promise<BootstrapResponse> {
  const peek = await peekJoinToken(ctx.store, token, ctx.now());
  const certificatePem = await signCsr(ctx.pki.ca, csrPem, peek.node_name, AGENT_CERT_ORG);
  let created = false;
  const rec = await redeemJoinToken(ctx.store, token, ctx.now, async (tok) => {
    const key = keys.node(tok.node_name);
    const cur = await ctx.store.get<NodeRecord>(key);
    const ts = ctx.now().toISOString();
    created = !cur;
    const node: NodeRecord = cur ? { ...cur.value, status: "pending", updated_at: ts } : {
      id: crypto.randomUUID(),
      name: tok.node_name,
      status: "pending",
      architecture: null,
      cordoned: false,
      endpoint: null,
      accelerator: null,
      agent_version: null,
      resources: null,
      pools_dir: null,
      observed_vms: [],
      last_heartbeat_at: null,
      created_at: ts,
      updated_at: ts,
    };
    return {
      ops: [{ type: "put", key, value: node }],
      guards: cur ? [cur] : [],
      absent: cur ? [] : [key],
    };
  });
  if (rec.node_name !== peek.node_name) {
    throw new ApiError("internal_error", "join token changed during redemption");
  }
  ctx.log.info("node bootstrapped (CSR redeemed)", {
    node: rec.node_name,
    token_id: rec.id,
    uses: rec.uses,
    max_uses: rec.max_uses,
    created,
  });
  return { node_name: rec.node_name, certificate_pem: certificatePem, ca_pem: ctx.pki.ca.certPem };
}

/** Nodes whose pool-path warning was already logged (once per process and path). */
const warnedPaths = new Set<string>();

/**
 * Applies a heartbeat from `node` (the verified certificate CN): stores capacity, endpoint
 * and observations, flips `pending|unreachable → ready`, provisions the default pool on the
 * node's first `ready`, updates pool instance status from observed pools, reconciles VM
 * status for VMs without an in-flight task, and answers with the desired pools.
 *
 * @throws ApiError `permission_denied` when `hb.node_name` is not the certificate's node,
 *   `node_not_found` when the node is not registered
 */
export async function applyHeartbeat(
  ctx: CpContext,
  certNode: string,
  hb: HeartbeatRequest,
): Promise<HeartbeatResponse> {
  if (hb.node_name !== certNode) {
    throw new ApiError(
      "permission_denied",
      `heartbeat for node "${hb.node_name}" sent with the certificate of node "${certNode}"`,
    );
  }
  const { store, cfg, log } = ctx;
  let previous: NodeRecord["status"] | null = null;
  const now = ctx.now();
  const ts = now.toISOString();
  const node = await updateKey<NodeRecord>(store, keys.node(certNode), (cur) => {
    if (!cur) throw new ApiError("node_not_found", `node "${certNode}" is not registered`);
    previous = cur.status;
    return {
      ...cur,
      status: "ready",
      architecture: hb.architecture,
      accelerator: hb.accelerator,
      endpoint: hb.endpoint,
      agent_version: hb.agent_version,
      resources: hb.resources,
      pools_dir: hb.pools_dir,
      observed_vms: hb.vms,
      last_heartbeat_at: ts,
      updated_at: ts,
    };
  });
  if (previous !== "ready") log.info("node ready", { node: certNode, from: previous });

  // One read of this node's pool instances serves provisioning, observation and the answer.
  const pools = (await rangeAll<PoolRecord>(store, keys.pools))
    .filter((kv) => kv.value.node === certNode);
  await ensureDefaultPool(ctx, node!, hb.pools_dir, pools);
  const current = await observePools(ctx, certNode, hb, pools);
  await reconcileVms(ctx, certNode, hb);

  return {
    node_status: "ready",
    desired_pools: current.map((p) => ({ name: p.name, path: p.path })),
    heartbeat_interval_seconds: cfg.nodes.heartbeat_interval_seconds,
  };
}

/** A pool instance's key and value. */
type PoolEntry = { key: string; value: PoolRecord };

/**
 * Auto-provisions `storage_pools.default_pool_name` at `<pools_dir>/<name>` on a ready node
 * that has no instance of it yet (`pools`: the node's instances; a created one is appended),
 * if the path passes the allowed-path gate (else logs a warning once and provisions nothing).
 * The cluster default pool setting itself is seeded once at startup
 * ({@link seedClusterSettings}).
 */
async function ensureDefaultPool(
  ctx: CpContext,
  node: NodeRecord,
  poolsDir: string,
  pools: PoolEntry[],
) {
  const { store, cfg, log } = ctx;
  const name = cfg.storage_pools.default_pool_name;
  const key = keys.pool(name, node.name);
  if (!pools.some((kv) => kv.key === key)) {
    const path = joinPoolPath(poolsDir, name);
    const check = checkPoolPath(path, cfg.storage_pools.allowed_path_prefixes);
    if (!check.ok) {
      const k = `${node.name}\0${path}`;
      if (!warnedPaths.has(k)) {
        warnedPaths.add(k);
        log.warn("default pool not provisioned: path_not_allowed", {
          node: node.name,
          pool: name,
          path,
          reason: check.reason,
        });
      }
    } else {
      const ts = ctx.now().toISOString();
      const pool: PoolRecord = {
        id: crypto.randomUUID(),
        name,
        node: node.name,
        type: "local_dir",
        path,
        status: "pending",
        message: null,
        total_bytes: null,
        available_bytes: null,
        images: [],
        created_at: ts,
        updated_at: ts,
      };
      const res = await store.txn({
        compare: [{ key, absent: true }],
        success: [{ type: "put", key, value: pool }],
      });
      if (res.succeeded) {
        pools.push({ key, value: pool });
        log.info("default pool provisioned", { node: node.name, pool: name, path });
      } else {
        const raced = await store.get<PoolRecord>(key); // provisioned by a concurrent heartbeat
        if (raced) pools.push(raced);
      }
    }
  }
}

/**
 * Seeds the cluster settings on boot when they were never set: the default pool is
 * `storage_pools.default_pool_name` (spec: "The CP seeds it from default_pool_name on boot").
 * An operator's later change is never overwritten.
 */
export async function seedClusterSettings(ctx: CpContext): Promise<void> {
  const name = ctx.cfg.storage_pools.default_pool_name;
  const res = await ctx.store.txn({
    compare: [{ key: keys.settings, absent: true }],
    success: [{
      type: "put",
      key: keys.settings,
      value: {
        default_pool_name: name,
        updated_at: ctx.now().toISOString(),
      } satisfies ClusterSettings,
    }],
  });
  if (res.succeeded) ctx.log.info("cluster default pool set", { pool: name });
}

/** `cur` updated with what the agent observes of it (`seen`: absent = not reported). */
function observedPool(cur: PoolRecord, seen: ObservedPool | undefined): PoolRecord {
  return seen
    ? {
      ...cur,
      status: seen.status,
      message: seen.message,
      total_bytes: seen.total_bytes,
      available_bytes: seen.available_bytes,
      images: seen.images,
    }
    : { ...cur, status: cur.status === "ready" ? "pending" : cur.status };
}

function samePoolState(a: PoolRecord, b: PoolRecord): boolean {
  return a.status === b.status && a.message === b.message &&
    a.total_bytes === b.total_bytes && a.available_bytes === b.available_bytes &&
    JSON.stringify(a.images) === JSON.stringify(b.images);
}

/**
 * Flips this node's pool instances (`pools`) to the status the agent observes, writing only
 * the ones that changed.
 *
 * @returns the node's pool instances as stored afterwards
 */
async function observePools(
  ctx: CpContext,
  nodeName: string,
  hb: HeartbeatRequest,
  pools: PoolEntry[],
): Promise<PoolRecord[]> {
  const out: PoolRecord[] = [];
  for (const kv of pools) {
    const seen = hb.pools.find((p) => p.name === kv.value.name && p.path === kv.value.path);
    if (samePoolState(kv.value, observedPool(kv.value, seen))) {
      out.push(kv.value);
      continue;
    }
    // `from`: set by the last (committed) attempt only; updateKey may retry `fn`.
    let from = null as PoolRecord["status"] | null;
    const stored = await updateKey<PoolRecord>(ctx.store, kv.key, (cur) => {
      from = null;
      if (!cur) return undefined;
      const next = observedPool(cur, seen);
      if (samePoolState(cur, next)) return undefined;
      from = cur.status;
      return { ...next, updated_at: ctx.now().toISOString() };
    });
    if (stored) out.push(stored);
    if (stored && from !== null && from !== stored.status) {
      ctx.log.info("pool status changed", {
        node: nodeName,
        pool: stored.name,
        from,
        to: stored.status,
        message: stored.message,
      });
    }
  }
  return out;
}

/**
 * Projects observed VM phases (`running` / `stopped` / `failed`) onto VMs of this node that
 * are settled (`running` / `stopped` / `failed` / `unknown`) and have no in-flight task, so in-flight
 * tasks are never fought. VMs the agent does not report are left alone, and so are VMs
 * whose deletion failed (desired phase `deleted`): they keep `failed` and the task error
 * until the delete is retried.
 */
async function reconcileVms(ctx: CpContext, nodeName: string, hb: HeartbeatRequest) {
  const settled = new Set(["running", "stopped", "failed", "unknown"]);
  const projectable = (v: VmRecord) => settled.has(v.status) && v.desired_phase !== "deleted";
  const vms = (await rangeAll<VmRecord>(ctx.store, keys.vms))
    .filter((kv) => kv.value.node === nodeName && projectable(kv.value));
  for (const kv of vms) {
    const seen = hb.vms.find((v) => v.id === kv.value.id);
    if (!seen || !settled.has(seen.phase) || seen.phase === kv.value.status) continue;
    if (await taskInFlight(ctx, kv.value)) continue;
    let from = null as VmRecord["status"] | null; // set by the committed attempt only
    await updateKey<VmRecord>(ctx.store, kv.key, async (cur) => {
      from = null;
      if (!cur || cur.id !== kv.value.id || !projectable(cur)) return undefined;
      if (cur.status === seen.phase || await taskInFlight(ctx, cur)) return undefined;
      from = cur.status;
      return {
        ...cur,
        status: seen.phase as VmRecord["status"],
        error: seen.phase === "running" ? null : cur.error,
        updated_at: ctx.now().toISOString(),
      };
    });
    if (from !== null) {
      ctx.log.info("vm status reconciled from heartbeat", {
        vm: kv.value.name,
        node: nodeName,
        from,
        to: seen.phase,
      });
    }
  }
}

async function taskInFlight(ctx: CpContext, vm: VmRecord): Promise<boolean> {
  if (!vm.last_task_id) return false;
  const t = await ctx.store.get<TaskRecord>(keys.task(vm.last_task_id));
  return !!t && !isTerminal(t.value.status);
}

/**
 * Marks `ready` nodes without a heartbeat for `nodes.stale_threshold_seconds` as
 * `unreachable` (logged once per transition).
 *
 * @returns the names of the nodes flipped by this call
 */
export async function markStaleNodes(ctx: CpContext): Promise<string[]> {
  const threshold = ctx.cfg.nodes.stale_threshold_seconds * 1000;
  const flipped: string[] = [];
  const nodes: KeyValue<NodeRecord>[] = await rangeAll<NodeRecord>(ctx.store, keys.nodes);
  for (const kv of nodes) {
    const stale = (n: NodeRecord) =>
      n.status === "ready" && n.last_heartbeat_at !== null &&
      ctx.now().getTime() - Date.parse(n.last_heartbeat_at) > threshold;
    if (!stale(kv.value)) continue;
    // updateKey may call `fn` again after losing a race (e.g. to a heartbeat): only the last
    // call's decision is committed, so report the flip after the write.
    let flippedFrom = null as NodeRecord | null;
    await updateKey<NodeRecord>(ctx.store, kv.key, (cur) => {
      flippedFrom = cur && stale(cur) ? cur : null;
      if (!cur || !flippedFrom) return undefined;
      return { ...cur, status: "unreachable", updated_at: ctx.now().toISOString() };
    });
    if (flippedFrom) {
      flipped.push(flippedFrom.name);
      ctx.log.warn("node unreachable", {
        node: flippedFrom.name,
        from: flippedFrom.status,
        last_heartbeat_at: flippedFrom.last_heartbeat_at,
        stale_threshold_seconds: ctx.cfg.nodes.stale_threshold_seconds,
      });
      await markVmsUnknown(ctx, flippedFrom.name);
    }
  }
  return flipped;
}

/**
 * Marks the settled VMs (`running` / `stopped`) of a node that just became `unreachable` as
 * `unknown`: their state can no longer be confirmed. VMs with a task in flight are left to
 * the task (its worker reports `agent_unreachable` if the node stays away).
 */
async function markVmsUnknown(ctx: CpContext, nodeName: string): Promise<void> {
  const confirmable = (v: VmRecord) =>
    v.node === nodeName && (v.status === "running" || v.status === "stopped");
  const vms = (await rangeAll<VmRecord>(ctx.store, keys.vms)).filter((kv) => confirmable(kv.value));
  for (const kv of vms) {
    if (await taskInFlight(ctx, kv.value)) continue;
    await updateKey<VmRecord>(ctx.store, kv.key, async (cur) => {
      if (!cur || cur.id !== kv.value.id || !confirmable(cur)) return undefined;
      if (await taskInFlight(ctx, cur)) return undefined;
      return { ...cur, status: "unknown", updated_at: ctx.now().toISOString() };
    });
  }
}
