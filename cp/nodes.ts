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

/** The public view of a node. */
export function nodeView(n: NodeRecord, vmCount: number): Node {
  return {
    id: n.id,
    name: n.name,
    status: n.status,
    architecture: n.architecture,
    cordoned: n.cordoned,
    endpoint: n.endpoint,
    accelerator: n.accelerator,
    agent_version: n.agent_version,
    resources: n.resources,
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

/** VMs per node name. */
export async function vmCounts(ctx: CpContext): Promise<Map<string, number>> {
  const counts = new Map<string, number>();
  for (const kv of await rangeAll<VmRecord>(ctx.store, keys.vms)) {
    counts.set(kv.value.node, (counts.get(kv.value.node) ?? 0) + 1);
  }
  return counts;
}

/** Reads a node. @throws ApiError `node_not_found` */
export async function getNode(ctx: CpContext, name: string): Promise<NodeRecord> {
  const kv = await ctx.store.get<NodeRecord>(keys.node(name));
  if (!kv) throw new ApiError("node_not_found", `node "${name}" not found`);
  return kv.value;
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

  await ensureDefaultPool(ctx, node!, hb.pools_dir);
  await observePools(ctx, certNode, hb);
  await reconcileVms(ctx, certNode, hb);

  const desired = await rangeAll<PoolRecord>(store, keys.pools);
  return {
    node_status: "ready",
    desired_pools: desired
      .filter((kv) => kv.value.node === certNode)
      .map((kv) => ({ name: kv.value.name, path: kv.value.path })),
    heartbeat_interval_seconds: cfg.nodes.heartbeat_interval_seconds,
  };
}

/**
 * Auto-provisions `storage_pools.default_pool_name` at `<pools_dir>/<name>` on a ready node
 * that has no instance of it yet, if the path passes the allowed-path gate (else logs a
 * warning once and provisions nothing), and sets the cluster default pool when never set.
 */
async function ensureDefaultPool(ctx: CpContext, node: NodeRecord, poolsDir: string) {
  const { store, cfg, log } = ctx;
  const name = cfg.storage_pools.default_pool_name;
  const key = keys.pool(name, node.name);
  if (!(await store.get(key))) {
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
        log.info("default pool provisioned", { node: node.name, pool: name, path });
      }
    }
  }
  const settings = await store.txn({
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
  if (settings.succeeded) log.info("cluster default pool set", { pool: name });
}

/** Flips this node's pool instances to the status the agent observes. */
async function observePools(ctx: CpContext, nodeName: string, hb: HeartbeatRequest) {
  const pools = (await rangeAll<PoolRecord>(ctx.store, keys.pools))
    .filter((kv) => kv.value.node === nodeName);
  for (const kv of pools) {
    const seen = hb.pools.find((p) => p.name === kv.value.name && p.path === kv.value.path);
    await updateKey<PoolRecord>(ctx.store, kv.key, (cur) => {
      if (!cur) return undefined;
      const next: PoolRecord = seen
        ? {
          ...cur,
          status: seen.status,
          message: seen.message,
          total_bytes: seen.total_bytes,
          available_bytes: seen.available_bytes,
          images: seen.images,
        }
        : { ...cur, status: cur.status === "ready" ? "pending" : cur.status };
      if (
        next.status === cur.status && next.message === cur.message &&
        next.total_bytes === cur.total_bytes && next.available_bytes === cur.available_bytes &&
        JSON.stringify(next.images) === JSON.stringify(cur.images)
      ) return undefined;
      if (next.status !== cur.status) {
        ctx.log.info("pool status changed", {
          node: nodeName,
          pool: cur.name,
          from: cur.status,
          to: next.status,
          message: next.message,
        });
      }
      return { ...next, updated_at: ctx.now().toISOString() };
    });
  }
}

/**
 * Projects observed VM phases (`running` / `stopped` / `failed`) onto VMs of this node that
 * are settled (`running` / `stopped` / `failed`) and have no in-flight task, so in-flight
 * tasks are never fought. VMs the agent does not report are left alone.
 */
async function reconcileVms(ctx: CpContext, nodeName: string, hb: HeartbeatRequest) {
  const settled = new Set(["running", "stopped", "failed"]);
  const vms = (await rangeAll<VmRecord>(ctx.store, keys.vms))
    .filter((kv) => kv.value.node === nodeName && settled.has(kv.value.status));
  for (const kv of vms) {
    const seen = hb.vms.find((v) => v.id === kv.value.id);
    if (!seen || !settled.has(seen.phase) || seen.phase === kv.value.status) continue;
    if (await taskInFlight(ctx, kv.value)) continue;
    await updateKey<VmRecord>(ctx.store, kv.key, async (cur) => {
      if (!cur || cur.id !== kv.value.id || !settled.has(cur.status)) return undefined;
      if (cur.status === seen.phase || await taskInFlight(ctx, cur)) return undefined;
      ctx.log.info("vm status reconciled from heartbeat", {
        vm: cur.name,
        node: nodeName,
        from: cur.status,
        to: seen.phase,
      });
      return {
        ...cur,
        status: seen.phase as VmRecord["status"],
        error: seen.phase === "running" ? null : cur.error,
        updated_at: ctx.now().toISOString(),
      };
    });
  }
}

async function taskInFlight(ctx: CpContext, vm: VmRecord): Promise<boolean> {
  if (!vm.last_task_id) return false;
  const t = await ctx.store.get<TaskRecord>(keys.task(vm.last_task_id));
  return !!t && !isTerminal(t.value.status);
}

/** Marks `ready` nodes without a heartbeat for `stale_threshold_seconds` as `unreachable`. */
export async function markStaleNodes(ctx: CpContext): Promise<string[]> {
  const threshold = ctx.cfg.nodes.stale_threshold_seconds * 1000;
  const flipped: string[] = [];
  const nodes: KeyValue<NodeRecord>[] = await rangeAll<NodeRecord>(ctx.store, keys.nodes);
  for (const kv of nodes) {
    const stale = (n: NodeRecord) =>
      n.status === "ready" && n.last_heartbeat_at !== null &&
      ctx.now().getTime() - Date.parse(n.last_heartbeat_at) > threshold;
    if (!stale(kv.value)) continue;
    await updateKey<NodeRecord>(ctx.store, kv.key, (cur) => {
      if (!cur || !stale(cur)) return undefined;
      flipped.push(cur.name);
      ctx.log.warn("node unreachable", {
        node: cur.name,
        from: cur.status,
        last_heartbeat_at: cur.last_heartbeat_at,
        stale_threshold_seconds: ctx.cfg.nodes.stale_threshold_seconds,
      });
      return { ...cur, status: "unreachable", updated_at: ctx.now().toISOString() };
    });
  }
  return flipped;
}
