/**
 * The node controller (on the controller scaffold, keyed by node name):
 * - a `ready` node whose last heartbeat is older than `nodes.stale_threshold_seconds` becomes
 *   `unreachable` (logged once per transition; spec: troubleshooting "Node flips ready ->
 *   unreachable"); otherwise the key is requeued for the moment it would become stale, so no
 *   periodic scan is needed. The next heartbeat makes it `ready` again. Age counts from the
 *   later of the last heartbeat and this control plane's start (like Kubernetes' node
 *   lifecycle controller): agents cannot heartbeat while the control plane is down, so a
 *   restarted control plane gives every node a full threshold before judging it.
 * - orphan cleanup: a VM the node's agent reports but the cluster no longer has (deleted with
 *   `--force` while the node was away, or a crash between the agent's work and the record)
 *   gets a `vm.delete` task (reason `orphan cleanup`), once.
 *
 * @module
 */
import type { CpContext } from "../context.ts";
import { Controller } from "../controllers/controller.ts";
import { keys, type NodeRecord, type VmRecord } from "../repo/records.ts";
import { rangeAll, updateKey } from "../store/store.ts";
import { enqueueOps, findTask, newTask } from "../tasks/queue.ts";
import { isTerminal } from "../../shared/api/tasks.ts";

/** Builds the node controller; the caller feeds it from the node informer and starts it. */
export function nodeController(ctx: CpContext): Controller {
  const orphanTasks = new Map<string, string>(); // vm id → cleanup task id
  const startedAt = ctx.now().getTime();
  const controller: Controller = new Controller({
    name: "node",
    log: ctx.log,
    resyncMs: 0,
    reconcile: async (name) => {
      const node = await markIfStale(ctx, name, startedAt);
      if (!node) return;
      if (node.status === "ready") {
        await cleanOrphans(ctx, node, orphanTasks);
        const threshold = ctx.cfg.nodes.stale_threshold_seconds * 1000;
        const last = node.last_heartbeat_at
          ? Math.max(Date.parse(node.last_heartbeat_at), startedAt)
          : null;
        if (last !== null) {
          return { requeueAfterMs: Math.max(10, last + threshold - ctx.now().getTime() + 10) };
        }
      }
    },
  });
  return controller;
}

/**
 * Flips a stale `ready` node to `unreachable`; returns the node as stored after.
 *
 * @param notBefore epoch ms: a heartbeat older than this counts as made at this time (the
 *   control plane's start), default 0
 */
export async function markIfStale(
  ctx: CpContext,
  name: string,
  notBefore = 0,
): Promise<NodeRecord | null> {
  const threshold = ctx.cfg.nodes.stale_threshold_seconds * 1000;
  const stale = (n: NodeRecord) =>
    n.status === "ready" && n.last_heartbeat_at !== null &&
    ctx.now().getTime() - Math.max(Date.parse(n.last_heartbeat_at), notBefore) > threshold;
  let flipped = null as NodeRecord | null; // decided by the committed attempt only
  const node = await updateKey<NodeRecord>(ctx.store, keys.node(name), (cur) => {
    flipped = cur && stale(cur) ? cur : null;
    if (!cur || !flipped) return undefined;
    return { ...cur, status: "unreachable", updated_at: ctx.now().toISOString() };
  });
  if (flipped) {
    ctx.log.warn("node unreachable", {
      node: name,
      from: flipped.status,
      last_heartbeat_at: flipped.last_heartbeat_at,
      stale_threshold_seconds: ctx.cfg.nodes.stale_threshold_seconds,
    });
  }
  return node;
}

async function cleanOrphans(
  ctx: CpContext,
  node: NodeRecord,
  orphanTasks: Map<string, string>,
): Promise<void> {
  const known = (id: string) => {
    const cache = ctx.cache?.vms;
    return cache ? cache.byIndex("id", id).length > 0 : null;
  };
  const candidates = node.observed_vms.filter((o) => known(o.id) !== true);
  if (candidates.length === 0) return;
  // Rare: confirm against the store (the cache may lag a just-created VM).
  const ids = new Set(
    (await rangeAll<VmRecord>(ctx.store, keys.vms)).map((kv) => kv.value.id),
  );
  for (const o of candidates) {
    if (ids.has(o.id)) continue;
    const prev = orphanTasks.get(o.id);
    if (prev) {
      const t = await findTask(ctx.store, prev);
      if (t && !isTerminal(t.status)) continue;
      if (t?.status === "succeeded") continue; // the next report drops it
    }
    const task = newTask("vm.delete", { name: o.name, id: o.id }, ctx.now(), {
      reason: "orphan cleanup",
      params: { node: node.name },
    });
    await ctx.store.txn({ compare: [], success: enqueueOps(task) });
    orphanTasks.set(o.id, task.id);
    ctx.log.warn("orphan VM on node; queued its deletion", {
      node: node.name,
      vm: o.name,
      vm_id: o.id,
      task_id: task.id,
    });
  }
}
