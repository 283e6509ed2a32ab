/**
 * The node controller (on the controller scaffold, keyed by node name):
 * - a `ready` node whose last heartbeat is older than `nodes.stale_threshold_seconds` becomes
 *   `unreachable`, and `gone` after `nodes.gone_grace_seconds` more (each transition logged
 *   once; spec: troubleshooting "Node flips ready -> unreachable", "Node advances to gone");
 *   the key is requeued for the moment the next transition is due, so no periodic scan is
 *   needed. The next heartbeat makes it `ready` again: the heartbeat handler records it and
 *   this controller logs `node ready` (with the previous status) when it sees the change. Age counts from the
 *   later of the last heartbeat and this control plane's start (like Kubernetes' node
 *   lifecycle controller): agents cannot heartbeat while the control plane is down, so a
 *   restarted control plane gives every node a full threshold before judging it.
 * - orphan cleanup: a VM the node's agent reports but the cluster no longer has (deleted with
 *   `--force` while the node was away, or a crash between the agent's work and the record)
 *   gets a `vm.delete` task (reason `orphan cleanup`), once; at most
 *   {@link MAX_ORPHAN_CLEANUPS_IN_FLIGHT} per node at a time.
 *
 * @module
 */
import { type CpContext, leading } from "../context.ts";
import { Controller } from "../controllers/controller.ts";
import { keys, type NodeRecord, type VmRecord } from "../repo/records.ts";
import { updateKey } from "../store/store.ts";
import { enqueueOps, findTask, newTask } from "../tasks/queue.ts";
import { isTerminal } from "../../shared/api/tasks.ts";
import { pressuredKinds } from "./pressure.ts";
import { observedVmsOf } from "./observed.ts";

/** Builds the node controller; the caller feeds it from the node informer and starts it. */
export function nodeController(ctx: CpContext): Controller {
  const orphanTasks = new Map<string, string>(); // vm id → cleanup task id
  const throttledOrphans = new Set<string>(); // nodes whose orphan cleanup is throttled (logged)
  const startedAt = ctx.now().getTime();
  const lastSeen = new Map<string, NodeRecord["status"]>(); // for the "node ready" log line
  const lastPressure = new Map<string, string[]>(); // for the pressure set/clear log lines
  const controller: Controller = new Controller({
    name: "node",
    active: () => leading(ctx),
    log: ctx.log,
    resyncMs: 0,
    reconcile: async (name) => {
      // The later of this process's start and the last heartbeat it received itself.
      const floor = Math.max(startedAt, ctx.liveness?.get(name) ?? 0);
      const node = await markIfStale(ctx, name, floor);
      if (!node) {
        lastSeen.delete(name);
        return;
      }
      const prev = lastSeen.get(name);
      lastSeen.set(name, node.status);
      if (prev !== undefined && prev !== "ready" && node.status === "ready") {
        ctx.log.info("node ready", { node: name, from: prev });
      }
      logPressure(ctx, node, lastPressure);
      if (node.status === "ready") await cleanOrphans(ctx, node, orphanTasks, throttledOrphans);
      if ((node.status === "ready" || node.status === "unreachable") && node.last_heartbeat_at) {
        // Requeue for the moment the next transition is due: no periodic scan.
        const last = Math.max(Date.parse(node.last_heartbeat_at), floor);
        const stale = ctx.cfg.nodes.stale_threshold_seconds * 1000;
        const due = node.status === "ready"
          ? last + stale
          : last + stale + ctx.cfg.nodes.gone_grace_seconds * 1000;
        return { requeueAfterMs: Math.max(10, due - ctx.now().getTime() + 10) };
      }
    },
  });
  return controller;
}

/**
 * The liveness a node should have now from its heartbeat age: `ready` (fresh), `unreachable`
 * (older than `nodes.stale_threshold_seconds`) or `gone` (older than the threshold plus
 * `nodes.gone_grace_seconds`). Age counts from the later of the last heartbeat and
 * `notBefore` (epoch ms). Only a heartbeat makes a node `ready` again.
 */
export function livenessOf(ctx: CpContext, n: NodeRecord, notBefore = 0): NodeRecord["status"] {
  if (n.last_heartbeat_at === null) return n.status;
  const age = ctx.now().getTime() - Math.max(Date.parse(n.last_heartbeat_at), notBefore);
  const stale = ctx.cfg.nodes.stale_threshold_seconds * 1000;
  if (age > stale + ctx.cfg.nodes.gone_grace_seconds * 1000) return "gone";
  if (age > stale) return "unreachable";
  return "ready";
}

const RANK: Record<NodeRecord["status"], number> = {
  pending: 0,
  ready: 1,
  unreachable: 2,
  gone: 3,
};

/**
 * Moves a node down its liveness path (`ready → unreachable → gone`) when its heartbeats stopped
 * (see {@link livenessOf}); every transition is logged once, with the spec's wording (spec 000
 * "Node flips ready -> unreachable", "Node advances to gone"). Returns the node as stored
 * after.
 *
 * @param notBefore epoch ms: a heartbeat older than this counts as made at this time (the
 *   control plane's start), default 0
 */
export async function markIfStale(
  ctx: CpContext,
  name: string,
  notBefore = 0,
): Promise<NodeRecord | null> {
  // updateKey may call `fn` again after losing a race (e.g. to a heartbeat): only the last
  // call's decision is committed, so report the transition after the write.
  let from = null as NodeRecord | null;
  let to: NodeRecord["status"] | null = null;
  const node = await updateKey<NodeRecord>(ctx.store, keys.node(name), (cur) => {
    from = null;
    if (!cur || cur.status === "pending") return undefined;
    const target = livenessOf(ctx, cur, notBefore);
    if (RANK[target] <= RANK[cur.status]) return undefined;
    from = cur;
    to = target;
    return { ...cur, status: target, updated_at: ctx.now().toISOString() };
  });
  if (from) {
    const f = from as NodeRecord;
    const fields = {
      node: name,
      from: f.status,
      last_heartbeat_at: f.last_heartbeat_at,
      stale_threshold_seconds: ctx.cfg.nodes.stale_threshold_seconds,
      gone_grace_seconds: ctx.cfg.nodes.gone_grace_seconds,
    };
    if (to === "gone") ctx.log.warn("node gone: unreachable past the gone-grace window", fields);
    else ctx.log.warn("node unreachable", fields);
  }
  return node;
}

/**
 * Logs pressure transitions once per change (spec 001: Warn on set, Info on clear), e.g.
 * `node under memory pressure` with the free share and the threshold.
 */
function logPressure(ctx: CpContext, node: NodeRecord, last: Map<string, string[]>): void {
  const now = pressuredKinds(node.pressure);
  const before = last.get(node.name);
  last.set(node.name, now);
  if (before === undefined) return; // first sight after start: nothing changed that we saw
  for (const kind of now.filter((k) => !before.includes(k))) {
    const c = node.pressure![kind];
    ctx.log.warn(`node under ${kind.replace("_", " ")} pressure`, {
      node: node.name,
      condition: kind,
      available_percent: c.available_percent,
      threshold_percent: ctx.cfg.placement.pressure[kind].threshold_percent,
      consecutive: c.consecutive,
    });
  }
  for (const kind of before.filter((k) => !now.includes(k as never))) {
    ctx.log.info(`node ${kind.replace("_", " ")} pressure cleared`, {
      node: node.name,
      condition: kind,
      available_percent: node.pressure?.[kind as "memory"]?.available_percent ?? null,
    });
  }
}

/**
 * Most orphan cleanups in flight per node: a node reporting thousands of VMs the cluster does
 * not know (say, a control plane restored from an old backup) gets them deleted a few at a
 * time, not in one burst of tasks; an operator who notices has time to act.
 */
export const MAX_ORPHAN_CLEANUPS_IN_FLIGHT = 10;

async function cleanOrphans(
  ctx: CpContext,
  node: NodeRecord,
  orphanTasks: Map<string, string>,
  throttled: Set<string>,
): Promise<void> {
  const known = (id: string) => {
    const cache = ctx.cache?.vms;
    return cache ? cache.byIndex("id", id).length > 0 : null;
  };
  const candidates = [...(await observedVmsOf(ctx, node.name)).values()]
    .filter((o) => known(o.id) !== true);
  if (candidates.length === 0) return void throttled.delete(node.name);
  let inFlight = 0;
  const fresh = [];
  for (const o of candidates) {
    const prev = orphanTasks.get(o.id);
    const t = prev ? await findTask(ctx.store, prev) : null;
    if (t && !isTerminal(t.status)) inFlight++;
    else if (t?.status !== "succeeded") fresh.push(o); // succeeded: the next report drops it
  }
  const room = Math.max(0, MAX_ORPHAN_CLEANUPS_IN_FLIGHT - inFlight);
  if (fresh.length > room && !throttled.has(node.name)) {
    throttled.add(node.name);
    ctx.log.warn("many orphan VMs on node; deleting them a few at a time", {
      node: node.name,
      orphans: fresh.length + inFlight,
      in_flight_max: MAX_ORPHAN_CLEANUPS_IN_FLIGHT,
    });
  } else if (fresh.length <= room) throttled.delete(node.name);
  let queued = 0;
  for (const o of fresh) {
    if (queued >= room) break;
    // Confirm against the store: the cache may lag a just-created VM.
    if ((await ctx.store.get<VmRecord>(keys.vm(o.name)))?.value.id === o.id) continue;
    queued++;
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
