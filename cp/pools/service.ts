/**
 * Pool instances (spec 003 "Storage pools"): lookup by name or instance UUID, create, delete,
 * and telling an agent its desired pools.
 *
 * - Create registers one (name, node) instance as `pending`; the node's agent learns it at
 *   once (`PUT /v1/pools`, best effort) or from its next heartbeat response, creates the
 *   directory and reports `ready` or `failed` (cp/nodes/service.ts records it). Not
 *   idempotent: the same (name, node) twice is 409 `conflict`.
 * - Delete removes one instance: a UUID names it; a name needs `node` when it exists on
 *   several nodes (409 `pool_name_ambiguous`). Refused with 409 `conflict` while VMs placed in
 *   the instance exist (their disks live there; spec: "There is no force-delete for pools by
 *   design"); the delete is guarded on the node's allocation record, which every placement
 *   rewrites, so a VM placed meanwhile is seen. The image cache never blocks it. The agent is
 *   told its new desired set and stops providing the pool; the directory and its image cache
 *   stay on the node's disk (nothing is destroyed; creating the pool again at the same path
 *   reuses the cache).
 *
 * @module
 */
import type { PoolCreateRequest } from "../../shared/api/pools.ts";
import { isUuid } from "../../shared/api/pools.ts";
import { ApiError } from "../../shared/errors.ts";
import type { CpContext } from "../context.ts";
import { getSettings, nodePools } from "../nodes/service.ts";
import { keys, type NodeRecord, type PoolRecord, type VmRecord } from "../repo/records.ts";
import { type KeyValue, rangeAll } from "../store/store.ts";
import { inPool } from "./capacity.ts";
import { assertPoolPathAllowed, normalizePoolPath, pathsOverlap } from "./paths.ts";

/** The cluster default pool name (null: none configured). */
export async function defaultPoolName(ctx: CpContext): Promise<string | null> {
  return (await getSettings(ctx))?.default_pool_name ?? null;
}

/** The instances of pool `name`, ordered by node name (read from the store). */
export async function instancesNamed(
  ctx: CpContext,
  name: string,
): Promise<KeyValue<PoolRecord>[]> {
  return await rangeAll<PoolRecord>(ctx.store, keys.poolsNamed(name));
}

/** The instance with id `id` (read from the store), or null. */
export async function findInstanceById(
  ctx: CpContext,
  id: string,
): Promise<KeyValue<PoolRecord> | null> {
  const want = id.toLowerCase();
  const cache = ctx.cache?.pools;
  if (cache) {
    // The cache names the key; the store has the current value (a new instance may not be
    // cached yet: fall back to a scan below).
    const key = cache.keys().find((k) => cache.get(k)?.id === want);
    const kv = key ? await ctx.store.get<PoolRecord>(key) : null;
    if (kv && kv.value.id === want) return kv;
  }
  return (await rangeAll<PoolRecord>(ctx.store, keys.pools)).find((kv) => kv.value.id === want) ??
    null;
}

/** `pool "<name>" not found` (404). */
function notFound(ref: string): ApiError {
  return isUuid(ref)
    ? new ApiError("pool_not_found", `pool instance ${ref} not found`, { id: ref })
    : new ApiError("pool_not_found", `pool "${ref}" not found`, { pool: ref });
}

/**
 * The instances `ref` (a pool name or an instance UUID) designates, optionally on `node`
 * only; a name without `node` designates every instance of the pool.
 *
 * @throws ApiError `pool_not_found` (no such pool or instance), `pool_not_on_node` (`node`
 *   given, but the pool has no instance there)
 */
export async function resolveInstances(
  ctx: CpContext,
  ref: string,
  node?: string,
): Promise<KeyValue<PoolRecord>[]> {
  if (isUuid(ref)) {
    const kv = await findInstanceById(ctx, ref);
    if (!kv) throw notFound(ref);
    if (node !== undefined && kv.value.node !== node) {
      throw new ApiError(
        "pool_not_on_node",
        `pool instance ${ref} (pool "${kv.value.name}") is on node "${kv.value.node}", not on ` +
          `node "${node}"`,
        { id: ref, pool: kv.value.name, node },
      );
    }
    return [kv];
  }
  const all = await instancesNamed(ctx, ref);
  if (all.length === 0) throw notFound(ref);
  if (node === undefined) return all;
  const on = all.filter((kv) => kv.value.node === node);
  if (on.length === 0) {
    throw new ApiError("pool_not_on_node", `pool "${ref}" has no instance on node "${node}"`, {
      pool: ref,
      node,
      pool_nodes: all.map((kv) => kv.value.node),
    });
  }
  return on;
}

/**
 * The one instance `ref` designates (see {@link resolveInstances}); `verb` names the command
 * in the ambiguity message (`delete`).
 *
 * @throws ApiError `pool_not_found`, `pool_not_on_node`, `pool_name_ambiguous` (a name on
 *   several nodes without `node`; details `{pool, instances: [{node, id, path}]}`)
 */
export async function resolveInstance(
  ctx: CpContext,
  ref: string,
  node: string | undefined,
  verb: string,
): Promise<KeyValue<PoolRecord>> {
  const found = await resolveInstances(ctx, ref, node);
  if (found.length === 1) return found[0];
  const instances = found.map((kv) => ({
    node: kv.value.node,
    id: kv.value.id,
    path: kv.value.path,
  }));
  throw new ApiError(
    "pool_name_ambiguous",
    `pool "${ref}" has ${instances.length} instances (` +
      instances.map((i) => `node ${i.node}: ${i.id}`).join(", ") +
      `); pick one: otherix pool ${verb} ${ref} --node <node>, or otherix pool ${verb} ` +
      "<instance-uuid>",
    { pool: ref, instances },
  );
}

/**
 * Registers instance (`req.name`, `req.node`) at `req.path` as `pending` and tells the node's
 * agent (best effort).
 *
 * @throws ApiError `path_not_allowed` (the allowed-path gate), `node_not_found`, `conflict`
 *   (the instance exists, or another pool of the node uses, contains or lies inside the path)
 */
export async function createPool(ctx: CpContext, req: PoolCreateRequest): Promise<PoolRecord> {
  assertPoolPathAllowed(req.path, ctx.cfg.storage_pools.allowed_path_prefixes);
  const path = normalizePoolPath(req.path);
  const nodeKv = await ctx.store.get<NodeRecord>(keys.node(req.node));
  if (!nodeKv) {
    throw new ApiError("node_not_found", `node "${req.node}" not found`, { node: req.node });
  }
  const key = keys.pool(req.name, req.node);
  const existing = await ctx.store.get<PoolRecord>(key);
  if (existing) {
    throw new ApiError(
      "conflict",
      `pool "${req.name}" already exists on node "${req.node}" (instance ${existing.value.id})`,
      { pool: req.name, node: req.node, id: existing.value.id },
    );
  }
  const clash = (await nodePools(ctx, req.node)).find((e) => pathsOverlap(e.value.path, path));
  if (clash) {
    throw new ApiError(
      "conflict",
      `path ${path} overlaps pool "${clash.value.name}" on node "${req.node}" ` +
        `(${clash.value.path}): pools of one node must not share directories`,
      { pool: clash.value.name, node: req.node, path: clash.value.path },
    );
  }
  const ts = ctx.now().toISOString();
  const pool = newPoolRecord(req.name, req.node, path, ts, req.type);
  const res = await ctx.store.txn({
    compare: [{ key, absent: true }, { key: nodeKv.key, absent: false }],
    success: [{ type: "put", key, value: pool }],
  });
  if (!res.succeeded) {
    if (!(await ctx.store.get(nodeKv.key))) {
      throw new ApiError("node_not_found", `node "${req.node}" not found`, { node: req.node });
    }
    throw new ApiError("conflict", `pool "${req.name}" already exists on node "${req.node}"`, {
      pool: req.name,
      node: req.node,
    });
  }
  ctx.log.info("pool created", { pool: pool.name, node: pool.node, path, id: pool.id });
  await pushDesiredPools(ctx, req.node);
  return pool;
}

/**
 * The VMs placed in instance `pool`, read from the store: found through the VM informer's node
 * index when wired (a VM committed a moment ago may be missed), else (or with `authoritative`)
 * from one scan of every VM record.
 */
export async function vmsInInstance(
  ctx: CpContext,
  pool: PoolRecord,
  authoritative = false,
): Promise<VmRecord[]> {
  const cache = ctx.cache?.vms;
  if (!cache || authoritative) {
    return (await rangeAll<VmRecord>(ctx.store, keys.vms)).map((kv) => kv.value)
      .filter((v) => inPool(pool, v));
  }
  const out: VmRecord[] = [];
  for (const key of cache.byIndex("node", pool.node)) {
    const kv = await ctx.store.get<VmRecord>(key);
    if (kv && inPool(pool, kv.value)) out.push(kv.value);
  }
  return out;
}

/**
 * Deletes the instance `ref` designates (see {@link resolveInstance}) and tells its agent.
 *
 * @returns the deleted instance
 * @throws ApiError `pool_not_found`, `pool_not_on_node`, `pool_name_ambiguous`, `conflict`
 *   (VM disks live there: details `{pool, node, id, vm_disks, vms}`)
 */
export async function deletePool(
  ctx: CpContext,
  ref: string,
  node: string | undefined,
): Promise<PoolRecord> {
  for (let attempt = 0; attempt < 20; attempt++) {
    const kv = await resolveInstance(ctx, ref, node, "delete");
    const pool = kv.value;
    // Placing a VM rewrites its node's allocation in the same transaction
    // (cp/vms/allocations.ts): guarding the delete on it means no VM can be placed on the node
    // between the check below and the delete.
    const allocKey = keys.nodeAllocation(pool.node);
    const alloc = await ctx.store.get(allocKey);
    const vms = (await vmsInInstance(ctx, pool, true)).map((v) => v.name).sort();
    if (vms.length > 0) {
      throw new ApiError(
        "conflict",
        `pool "${pool.name}" on node "${pool.node}" still backs ${vms.length} VM disk(s) ` +
          `(vm_disks: ${vms.length}; VMs: ${vms.join(", ")}); delete or migrate those VMs ` +
          "first (pools have no force-delete)",
        { pool: pool.name, node: pool.node, id: pool.id, vm_disks: vms.length, vms },
      );
    }
    const res = await ctx.store.txn({
      compare: [
        { key: kv.key, modRevision: kv.modRevision },
        alloc ? { key: allocKey, modRevision: alloc.modRevision } : { key: allocKey, absent: true },
      ],
      success: [{ type: "delete", key: kv.key }],
    });
    if (!res.succeeded) continue; // a heartbeat, a scan or a placement came between: again
    ctx.log.info("pool deleted", {
      pool: pool.name,
      node: pool.node,
      path: pool.path,
      id: pool.id,
    });
    await pushDesiredPools(ctx, pool.node);
    return pool;
  }
  throw new ApiError("internal_error", `pool "${ref}": too many concurrent updates`);
}

/**
 * A new pool instance record: `pending` until its agent reports the directory, no figures yet.
 * `ts`: creation time (ISO).
 */
export function newPoolRecord(
  name: string,
  node: string,
  path: string,
  ts: string,
  type: PoolRecord["type"] = "local_dir",
): PoolRecord {
  return {
    id: crypto.randomUUID(),
    name,
    node,
    type,
    path,
    status: "pending",
    message: null,
    total_bytes: null,
    available_bytes: null,
    images: [],
    created_at: ts,
    updated_at: ts,
  };
}

/**
 * Tells node `nodeName`'s agent its complete desired pool set (`PUT /v1/pools`), read from the
 * store. Best effort: a failure is logged at debug level; the agent's next heartbeat response
 * carries the same set.
 */
export async function pushDesiredPools(ctx: CpContext, nodeName: string): Promise<void> {
  const node = (await ctx.store.get<NodeRecord>(keys.node(nodeName)))?.value;
  if (!node?.endpoint) return;
  // The node's instances only (the pool informer's node index when wired): never every pool
  // of the cluster, which made provisioning N nodes cost N² reads.
  const desired = (await nodePools(ctx, nodeName)).map((e) => ({
    name: e.value.name,
    path: e.value.path,
  }));
  try {
    await ctx.agents.putPools({ name: node.name, endpoint: node.endpoint }, desired);
  } catch (e) {
    ctx.log.debug("cannot push pools to the agent; its next heartbeat brings them", {
      node: nodeName,
      err: e,
    });
  }
}

/**
 * The name of the node `ref` designates (a node name, or a node UUID looked up among the
 * nodes); null when no node has that UUID.
 */
export async function nodeNameOf(ctx: CpContext, ref: string): Promise<string | null> {
  if (!isUuid(ref)) return ref;
  const want = ref.toLowerCase();
  const cached = ctx.cache?.nodes.list().find((n) => n.id === want);
  if (cached) return cached.name;
  const nodes = (await rangeAll<NodeRecord>(ctx.store, keys.nodes)).map((kv) => kv.value);
  return nodes.find((n) => n.id === want)?.name ?? null;
}
