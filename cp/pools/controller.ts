/**
 * The pool provisioner (on the controller scaffold, keyed by node name): every `ready` node
 * gets an instance of `storage_pools.default_pool_name` at `<pools_dir>/<name>` once (spec 001:
 * the CP "auto-provisions that pool on every node as it reaches ready"), if that path passes
 * the allowed-path gate (else one warning per node and path, nothing provisioned), and the
 * agent is told its desired pools at once (`PUT /v1/pools` in the background, bounded:
 * cp/pools/push.ts; best effort: heartbeats carry them too). The cluster default pool setting itself is seeded at startup.
 *
 * "Once": the provisioning is recorded (`/pool-provisioned/<node>` with the node's id, in the
 * transaction that creates the instance, or when the node already has it), so an operator's
 * `pool delete` of the auto-provisioned instance sticks. A node deleted and joined again under
 * the same name has a new id and is provisioned again.
 *
 * @module
 */
import { type CpContext, leading } from "../context.ts";
import { Controller } from "../controllers/controller.ts";
import { keys, type NodeRecord, type PoolProvisionedRecord } from "../repo/records.ts";
import { checkPoolPath, joinPoolPath } from "./paths.ts";
import { newPoolRecord, pushDesiredPools } from "./service.ts";
import { PushQueue } from "./push.ts";

/** Builds the pool provisioner; the caller feeds it from the node informer and starts it. */
export function poolProvisioner(ctx: CpContext): Controller {
  const warned = new Set<string>();
  const pushes = new PushQueue((node) => pushDesiredPools(ctx, node));
  return new Controller({
    name: "pool",
    active: () => leading(ctx),
    log: ctx.log,
    reconcile: (nodeName) => provisionDefaultPool(ctx, nodeName, warned, pushes),
  });
}

/**
 * One reconcile of the provisioner for node `nodeName` (see the module doc). `warned`: the
 * (node, path) pairs already warned about (one warning each per process).
 */
export async function provisionDefaultPool(
  ctx: CpContext,
  nodeName: string,
  warned: Set<string>,
  pushes?: PushQueue,
): Promise<void> {
  const node = (await ctx.store.get<NodeRecord>(keys.node(nodeName)))?.value;
  if (!node || node.status !== "ready" || !node.pools_dir) return;
  const markerKey = keys.poolProvisioned(node.name);
  const marker = (await ctx.store.get<PoolProvisionedRecord>(markerKey))?.value;
  if (marker?.node_id === node.id) return;
  const name = ctx.cfg.storage_pools.default_pool_name;
  const key = keys.pool(name, node.name);
  const ts = ctx.now().toISOString();
  const markerOp = {
    type: "put" as const,
    key: markerKey,
    value: { node_id: node.id, pool: name, at: ts } satisfies PoolProvisionedRecord,
  };
  if (await ctx.store.get(key)) {
    // Provisioned before markers existed (or created by hand): remember it.
    await ctx.store.txn({ compare: [{ key, absent: false }], success: [markerOp] });
    return;
  }
  const path = joinPoolPath(node.pools_dir, name);
  const check = checkPoolPath(path, ctx.cfg.storage_pools.allowed_path_prefixes);
  if (!check.ok) {
    const k = `${node.name}\0${path}`;
    if (!warned.has(k)) {
      warned.add(k);
      ctx.log.warn("default pool not provisioned: path_not_allowed", {
        node: node.name,
        pool: name,
        path,
        reason: check.reason,
      });
    }
    return;
  }
  const pool = newPoolRecord(name, node.name, path, ts);
  const res = await ctx.store.txn({
    compare: [{ key, absent: true }],
    success: [{ type: "put", key, value: pool }, markerOp],
  });
  if (!res.succeeded) return;
  ctx.log.info("default pool provisioned", { node: node.name, pool: name, path });
  // In the background (bounded): an unreachable agent must not stall the other nodes.
  if (pushes) pushes.request(node.name);
  else await pushDesiredPools(ctx, node.name);
}
