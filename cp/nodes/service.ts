/**
 * Nodes: registration through join-token bootstrap, recording what agents observe
 * (heartbeats and pushed reports), and the public views (spec: "Nodes", "Step 1 — run
 * seed-dev", troubleshooting "Node flips ready -> unreachable").
 *
 * The request handlers only record: the node's capacity, endpoint and observed VMs, its pool
 * instances' observed status, and the agent's task transitions (`/agent-tasks/<id>`, which
 * task workers watch). Acting on it is the controllers' job: the node controller
 * (`unreachable`, orphans, cp/nodes/controller.ts), the pool provisioner
 * (cp/pools/controller.ts) and the VM controller (cp/vms/controller.ts).
 *
 * Status: `pending` after CSR redemption → `ready` on a heartbeat → `unreachable` when
 * heartbeats stop for `nodes.stale_threshold_seconds` → `ready` again on the next heartbeat.
 *
 * @module
 */
import { agentUrls, liveReplicas } from "../cluster/replicas.ts";
import {
  type BootstrapResponse,
  MAX_REPORTED_IMAGES,
  type Node,
  type ObservedPool,
} from "../../shared/api/nodes.ts";
import type {
  AgentTask,
  HeartbeatRequest,
  HeartbeatResponse,
  NodeReport,
} from "../../shared/api/agent.ts";
import { ApiError } from "../../shared/errors.ts";
import type { CpContext } from "../context.ts";
import { peekJoinToken, redeemJoinToken } from "../join_tokens.ts";
import { issueAgentCert } from "./certs.ts";
import { nextPressure } from "./pressure.ts";
import { forgetObservedVms, recordObservedVms } from "./observed.ts";
import {
  type ClusterSettings,
  keys,
  type NodeRecord,
  type PoolRecord,
  type VmRecord,
} from "../repo/records.ts";
import { type KeyValue, rangeAll, updateKey } from "../store/store.ts";

/**
 * The public view of a node with the `usage` of the VMs placed on it. `full` false is the
 * reduced shape served to roles without `node:manage` (spec: developer / viewer callers see no
 * hardware inventory): `resources`, allocations and pressure are null. `lastHeartbeatMs`: the
 * last heartbeat this process received (epoch ms; liveness is not persisted on every
 * heartbeat), shown when newer than the stored one.
 */
export function nodeView(
  n: NodeRecord,
  usage: NodeUsage,
  full = true,
  lastHeartbeatMs?: number,
): Node {
  const persisted = n.last_heartbeat_at ? Date.parse(n.last_heartbeat_at) : 0;
  const lastHeartbeat = lastHeartbeatMs !== undefined && lastHeartbeatMs > persisted
    ? new Date(lastHeartbeatMs).toISOString()
    : n.last_heartbeat_at;
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
    migration_host: full ? n.migration?.host ?? null : null,
    migration_port_range: full ? n.migration?.port_range ?? null : null,
    vm_count: usage.vms,
    allocated_vcpus: full ? usage.vcpus : null,
    allocated_memory_mib: full ? usage.memory_mib : null,
    pressure: full ? n.pressure ?? null : null,
    last_heartbeat_at: lastHeartbeat,
    created_at: n.created_at,
    updated_at: n.updated_at,
  };
}

/** What the VMs placed on a node take: count, vCPUs and memory (MiB). */
export interface NodeUsage {
  vms: number;
  vcpus: number;
  memory_mib: number;
}

/**
 * The usage of each node by the VMs placed on it (from the VM informer's index when wired,
 * else one scan of the VMs).
 */
export async function nodeUsageOf(ctx: CpContext): Promise<(node: string) => NodeUsage> {
  if (ctx.cache) return (node) => cachedNodeUsage(ctx, node);
  const all = (await rangeAll<VmRecord>(ctx.store, keys.vms)).map((kv) => kv.value);
  return (node) => usageOf(all.filter((v) => v.node === node));
}

/** What `vms` take together. */
function usageOf(vms: VmRecord[]): NodeUsage {
  return {
    vms: vms.length,
    vcpus: vms.reduce((a, v) => a + v.vcpus, 0),
    memory_mib: vms.reduce((a, v) => a + v.memory_mb, 0),
  };
}

/** The usage of `node` from the VM informer's index (zero when the caches are not wired). */
export function cachedNodeUsage(ctx: CpContext, node: string): NodeUsage {
  const cache = ctx.cache?.vms;
  const vms = (cache?.byIndex("node", node) ?? []).map((k) => cache!.get(k))
    .filter((v): v is VmRecord => !!v);
  return usageOf(vms);
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
  const issued = await issueAgentCert(ctx, csrPem, peek.node_name);
  let created = false;
  const rec = await redeemJoinToken(ctx.store, token, ctx.now, async (tok) => {
    const key = keys.node(tok.node_name);
    const cur = await ctx.store.get<NodeRecord>(key);
    const ts = ctx.now().toISOString();
    created = !cur;
    const node: NodeRecord = cur
      ? { ...cur.value, status: "pending", cert_fingerprint: issued.fingerprint, updated_at: ts }
      : {
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
        last_heartbeat_at: null,
        cert_fingerprint: issued.fingerprint,
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
  return { node_name: rec.node_name, certificate_pem: issued.certPem, ca_pem: ctx.pki.ca.certPem };
}

/**
 * The node record after heartbeat `hb` at `ts`, or undefined when the heartbeat changes
 * nothing but its timestamp and volatile readings (then it is not written: liveness stays in
 * memory, `ctx.liveness`).
 */
function heartbeatUpdate(
  cur: NodeRecord,
  hb: HeartbeatRequest,
  cfg: CpContext["cfg"],
  ts: string,
): NodeRecord | undefined {
  // Records written before observed VMs moved to their own keys carry the list: drop it.
  const { observed_vms: _moved, ...rest } = cur as NodeRecord & { observed_vms?: unknown };
  const next: NodeRecord = {
    ...rest,
    pressure: nextPressure(cur.pressure, hb.resources, cfg.placement.pressure, ts),
    status: "ready",
    architecture: hb.architecture,
    accelerator: hb.accelerator,
    endpoint: hb.endpoint,
    agent_version: hb.agent_version,
    resources: hb.resources,
    pools_dir: hb.pools_dir,
    migration: hb.migration ?? null,
    last_heartbeat_at: ts,
    updated_at: ts,
  };
  const stable = (n: NodeRecord) =>
    JSON.stringify({
      ...n,
      last_heartbeat_at: null,
      updated_at: null,
      resources: n.resources && { ...n.resources, ...VOLATILE_RESOURCES },
      pressure: n.pressure && {
        memory: { ...n.pressure.memory, available_percent: null },
        system_disk: { ...n.pressure.system_disk, available_percent: null },
      },
    });
  return stable(cur) === stable(next) && !_moved ? undefined : next;
}

/** Readings that change on every heartbeat; alone they do not warrant a store write. */
const VOLATILE_RESOURCES = {
  load_average_1m: 0,
  memory_available_mib: 0,
  system_disk_available_bytes: 0,
};

/**
 * Records a heartbeat from `node` (the verified certificate CN): capacity, endpoint and
 * observed VMs; `pending|unreachable|gone → ready` (logged by the node controller); its pool
 * instances' observed status; the agent tasks it carries; its pressure conditions
 * (cp/nodes/pressure.ts). Answers with the node's desired pools.
 *
 * Writes: a heartbeat that changes nothing but its timestamp and volatile readings (load,
 * free memory and disk) writes nothing; liveness is kept in `ctx.liveness` (this process's
 * memory), which the node controller and the node views read, so thousands of idle nodes cost
 * no stream of store writes (Kubernetes moved node liveness to leases for the same reason).
 * After a restart the node controller gives every node a full stale threshold.
 *
 * @throws ApiError `permission_denied` when `hb.node_name` is not the certificate's node,
 *   `node_not_found` when the node is not registered
 */
export async function applyHeartbeat(
  ctx: CpContext,
  certNode: string,
  hb: HeartbeatRequest,
): Promise<HeartbeatResponse> {
  checkSender(certNode, hb.node_name, "heartbeat");
  const { store, cfg } = ctx;
  const ts = ctx.now().toISOString();
  const nowMs = ctx.now().getTime();
  (ctx.liveness ??= new Map()).set(certNode, nowMs);
  // Steady state: the informer cache already holds what this heartbeat says, so neither a
  // store read nor a write is needed (a lagging cache only delays the write to the next one).
  const cached = ctx.cache?.nodes.get(keys.node(certNode));
  if (!cached || heartbeatUpdate(cached, hb, cfg, ts) !== undefined) {
    await updateKey<NodeRecord>(store, keys.node(certNode), (cur) => {
      if (!cur) throw new ApiError("node_not_found", `node "${certNode}" is not registered`);
      return heartbeatUpdate(cur, hb, cfg, ts);
    });
  }
  await recordObservedVms(ctx, certNode, hb.vms);
  await recordAgentTasks(ctx, hb.tasks);
  const current = await observePools(ctx, certNode, hb, await nodePools(ctx, certNode));
  return {
    node_status: "ready",
    desired_pools: current.map((p) => ({ name: p.name, path: p.path })),
    heartbeat_interval_seconds: cfg.nodes.heartbeat_interval_seconds,
    control_planes: agentUrls(liveReplicas(ctx.cache?.replicas), ctx.pki.replicaName).slice(0, 16),
  };
}

/**
 * Records a report pushed by `node`'s agent: its observed VMs and the task transitions.
 * A report from a node that is not `ready` only records tasks (its next heartbeat brings it
 * back to `ready` with the full picture).
 *
 * @throws ApiError `permission_denied` (not the certificate's node), `node_not_found`
 */
export async function applyReport(
  ctx: CpContext,
  certNode: string,
  report: NodeReport,
): Promise<void> {
  checkSender(certNode, report.node_name, "report");
  // VMs first: a worker woken by a task transition must find the VMs as new as the task.
  // (The node's existence and certificate pin were checked before the body was read.)
  await recordObservedVms(ctx, certNode, report.vms);
  await recordAgentTasks(ctx, report.tasks);
}

function checkSender(certNode: string, claimed: string, what: string): void {
  if (claimed !== certNode) {
    throw new ApiError(
      "permission_denied",
      `${what} for node "${claimed}" sent with the certificate of node "${certNode}"`,
    );
  }
}

/**
 * Records the agent's view of tasks that are still active on the control plane
 * (`/agent-tasks/<id>`, watched by the task's worker); unchanged or finished tasks are
 * skipped.
 */
async function recordAgentTasks(ctx: CpContext, tasks: AgentTask[]): Promise<void> {
  for (const t of tasks) {
    const key = keys.agentTask(t.id);
    const cur = await ctx.store.get<AgentTask>(key);
    if (cur && cur.value.updated_at === t.updated_at && cur.value.status === t.status) continue;
    await ctx.store.txn({
      compare: [
        { key: keys.activeTask(t.id), absent: false },
        cur ? { key, modRevision: cur.modRevision } : { key, absent: true },
      ],
      success: [{ type: "put", key, value: t }],
    });
  }
}

/** The pool instances of `node` (from the pool informer's index when wired). */
export async function nodePools(ctx: CpContext, node: string): Promise<PoolEntry[]> {
  const cache = ctx.cache?.pools;
  if (cache) {
    return cache.byIndex("node", node).map((key) => ({ key, value: cache.get(key)! }))
      .filter((e) => e.value);
  }
  return (await rangeAll<PoolRecord>(ctx.store, keys.pools)).filter((kv) => kv.value.node === node);
}

/** A pool instance's key and (possibly cached) value. */
export type PoolEntry = { key: string; value: PoolRecord };

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

/**
 * `cur` updated with what the agent observes of it (`seen`: absent = not reported). The image
 * list is capped at MAX_REPORTED_IMAGES here too (an agent that does not cap cannot push the
 * record past the store's value limit).
 */
function observedPool(cur: PoolRecord, seen: ObservedPool | undefined): PoolRecord {
  if (!seen) return { ...cur, status: cur.status === "ready" ? "pending" : cur.status };
  const total = Math.max(seen.images_total ?? 0, seen.images.length);
  const { images_total: _old, ...rest } = cur;
  return {
    ...rest,
    status: seen.status,
    message: seen.message,
    total_bytes: seen.total_bytes,
    available_bytes: seen.available_bytes,
    images: seen.images.length > MAX_REPORTED_IMAGES
      ? [...seen.images].sort((a, b) => a.basename < b.basename ? -1 : 1)
        .slice(0, MAX_REPORTED_IMAGES)
      : seen.images,
    ...(total > MAX_REPORTED_IMAGES ? { images_total: total } : {}),
  };
}

/**
 * Free-space changes smaller than this are not worth a store write on their own: the larger of
 * 64 MiB and 0.5 % of the filesystem (a busy pool's free bytes change on every heartbeat;
 * placement re-reads them when they move by more, and scans record them exactly).
 */
export function poolFreeSlackBytes(totalBytes: number | null): number {
  return Math.max(64 * 1024 ** 2, Math.floor((totalBytes ?? 0) * 0.005));
}

function samePoolState(a: PoolRecord, b: PoolRecord): boolean {
  const free = a.available_bytes === b.available_bytes ||
    (a.available_bytes !== null && b.available_bytes !== null &&
      Math.abs(a.available_bytes - b.available_bytes) < poolFreeSlackBytes(b.total_bytes));
  return a.status === b.status && a.message === b.message &&
    a.total_bytes === b.total_bytes && free &&
    a.images_total === b.images_total && JSON.stringify(a.images) === JSON.stringify(b.images);
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
    if (stored?.images_total !== undefined && kv.value.images_total === undefined) {
      ctx.log.warn(
        `pool caches more than ${MAX_REPORTED_IMAGES} images; only the first ` +
          `${MAX_REPORTED_IMAGES} by name are recorded`,
        { node: nodeName, pool: stored.name, images: stored.images_total },
      );
    }
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
 * Cordons (`true`) or uncordons a node: a cordoned node takes no new VMs (the scheduler skips
 * it); its VMs keep running. Idempotent; a change is logged once.
 *
 * @throws ApiError `node_not_found`
 */
export async function setCordoned(
  ctx: CpContext,
  name: string,
  cordoned: boolean,
): Promise<NodeRecord> {
  let changed = false;
  const node = await updateKey<NodeRecord>(ctx.store, keys.node(name), (cur) => {
    changed = false;
    if (!cur) throw new ApiError("node_not_found", `node "${name}" not found`);
    if (cur.cordoned === cordoned) return undefined;
    changed = true;
    return { ...cur, cordoned, updated_at: ctx.now().toISOString() };
  });
  if (changed) ctx.log.info(cordoned ? "node cordoned" : "node uncordoned", { node: name });
  return node!;
}

/** The VMs placed on `node` (from the VM informer's index when wired, else one scan). */
async function vmsOnNode(ctx: CpContext, node: string): Promise<KeyValue<VmRecord>[]> {
  const cache = ctx.cache?.vms;
  const keysOf = cache
    ? cache.byIndex("node", node)
    : (await rangeAll<VmRecord>(ctx.store, keys.vms)).filter((kv) => kv.value.node === node)
      .map((kv) => kv.key);
  const out: KeyValue<VmRecord>[] = [];
  for (const key of keysOf) {
    const kv = await ctx.store.get<VmRecord>(key);
    if (kv && kv.value.node === node) out.push(kv);
  }
  return out;
}

/**
 * Deletes a node record and its pool instances. Refused with 409 `conflict` while VMs live on
 * the node (details: `vms` names, `count`) unless `force`, which marks those VMs `lost` (only
 * `vm delete` applies to them; their disks stay on the host). The node's certificate is no
 * longer accepted: heartbeats of a deleted node answer `node_not_found`, and a new bootstrap
 * pins a new certificate.
 *
 * @throws ApiError `node_not_found`, `conflict`
 */
export async function deleteNode(ctx: CpContext, name: string, force: boolean): Promise<void> {
  for (let attempt = 0; attempt < 20; attempt++) {
    const nodeKv = await ctx.store.get<NodeRecord>(keys.node(name));
    if (!nodeKv) throw new ApiError("node_not_found", `node "${name}" not found`);
    const vms = await vmsOnNode(ctx, name);
    if (vms.length > 0 && !force) {
      const names = vms.map((kv) => kv.value.name).sort();
      throw new ApiError(
        "conflict",
        `node "${name}" hosts ${names.length} VM(s): ${names.join(", ")}; delete them first, ` +
          "or pass --force to delete the node anyway (its VMs are marked lost)",
        { vms: names, count: names.length },
      );
    }
    const pools = await nodePools(ctx, name);
    const ts = ctx.now().toISOString();
    const res = await ctx.store.txn({
      compare: [
        { key: nodeKv.key, modRevision: nodeKv.modRevision },
        ...vms.map((kv) => ({ key: kv.key, modRevision: kv.modRevision })),
      ],
      success: [
        { type: "delete", key: nodeKv.key },
        // Its VMs become `lost` and hold nothing; a node joining under this name starts empty.
        { type: "delete", key: keys.nodeAllocation(name) },
        ...pools.map((p) => ({ type: "delete" as const, key: p.key })),
        ...vms.map((kv) => ({
          type: "put" as const,
          key: kv.key,
          value: {
            ...kv.value,
            status: "lost",
            error: {
              code: "node_not_found",
              message: `node "${name}" was deleted with --force while this VM lived there`,
            },
            updated_at: ts,
          } satisfies VmRecord,
        })),
      ],
    });
    if (!res.succeeded) continue;
    await forgetObservedVms(ctx, name);
    ctx.log.warn("node deleted", {
      node: name,
      forced: force,
      lost_vms: vms.map((kv) => kv.value.name),
      pools: pools.length,
    });
    return;
  }
  throw new ApiError("internal_error", `node "${name}": too many concurrent updates`);
}
