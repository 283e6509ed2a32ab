/**
 * The VM controller (on the controller scaffold, keyed by VM name): level-triggered, it
 * drives each VM from what its node's agent observes toward `desired_phase` whenever the VM
 * or its node changes, and on resync. It does nothing while a task acts on the VM (the task
 * projects its own result). Otherwise:
 *
 * - node not `ready`: a settled VM shows `unknown` (its state cannot be confirmed);
 * - the agent's observed phase becomes the VM's status, and a new QEMU exit its `last_exit`;
 * - desired `running` but QEMU stopped on its own — decided by the exit's reason and the
 *   VM's `restart_policy` (shared/api/vms.ts RestartPolicySchema):
 *   - `host-reboot`: started again whatever the policy (start at boot);
 *   - `guest-shutdown`: `always` restarts; otherwise the desired phase becomes `stopped`;
 *   - `crashed`: `always` and `on-failure` restart with backoff (`vms.restart_backoff_*`:
 *     immediate, then initial·2^(n−2) up to max; the count resets after `reset` seconds of
 *     steady running); `never` records desired `stopped`.
 *   A restart is a `vm.start` task with a `reason` (`restart_policy: crashed`, …).
 * - the agent no longer has the VM at all: `failed` with a clear error;
 * - `lost` VMs (their node was deleted with `--force`) are left alone until deleted.
 *
 * @module
 */
import type { VmExit } from "../../shared/api/vm_runtime.ts";
import { type CpContext, leading } from "../context.ts";
import { Controller, type ReconcileResult } from "../controllers/controller.ts";
import { keys, type NodeRecord, type TaskRecord, type VmRecord } from "../repo/records.ts";
import { enqueueOps, newTask } from "../tasks/queue.ts";
import type { Op } from "../store/store.ts";
import { isTerminal } from "../../shared/api/tasks.ts";
import { lastTaskOf } from "./service.ts";
import { statusOfPhase } from "./transitions.ts";
import { observedVm } from "../nodes/observed.ts";
import { withLearntAddresses } from "./nic_addresses.ts";

/** Builds the VM controller; the caller feeds it from the informers and starts it. */
export function vmController(ctx: CpContext): Controller {
  return new Controller({
    name: "vm",
    active: () => leading(ctx),
    log: ctx.log,
    workers: 2,
    reconcile: (name) => reconcileVm(ctx, name),
  });
}

/** Delay before the n-th restart (n ≥ 1), ms: 0, then initial·2^(n−2) up to max. */
export function restartBackoffMs(ctx: CpContext, n: number): number {
  if (n <= 1) return 0;
  const { restart_backoff_initial_seconds: initial, restart_backoff_max_seconds: max } =
    ctx.cfg.vms;
  return Math.min(max, initial * 2 ** (n - 2)) * 1000;
}

function sameExit(a: VmExit | null, b: VmExit | null): boolean {
  return (a?.at ?? null) === (b?.at ?? null) && (a?.reason ?? null) === (b?.reason ?? null);
}

/**
 * One reconcile of VM `name` (see the module doc). Writes at most one VM update (and a task),
 * guarded by the VM's revision; a lost race throws and the key is retried.
 */
export async function reconcileVm(ctx: CpContext, name: string): Promise<ReconcileResult | void> {
  const { store, log } = ctx;
  const kv = await store.get<VmRecord>(keys.vm(name));
  if (!kv) return;
  const vm = kv.value;
  const now = ctx.now();
  const ts = now.toISOString();
  let next: VmRecord = { ...vm };
  const ops: Op[] = [];
  let requeue: number | undefined;
  if (vm.active_task_id) {
    const t = (await store.get<TaskRecord>(keys.task(vm.active_task_id)))?.value;
    if (t && !isTerminal(t.status)) return;
    next.active_task_id = null; // a stale marker (task gone or ended without projecting)
  }
  if (vm.desired_phase === "deleted" || vm.status === "lost") return commit();
  const node = (await store.get<NodeRecord>(keys.node(vm.node)))?.value;
  if (!node) return commit();
  if (node.status !== "ready") {
    if (["running", "paused", "stopped"].includes(vm.status)) next.status = "unknown";
    return commit();
  }
  const seen = await observedVm(ctx, node.name, vm.id);
  if (!seen) {
    // Only after two heartbeats newer than the VM's last change left it out (a heartbeat
    // built before a create finished may arrive after it).
    const margin = 2 * ctx.cfg.nodes.heartbeat_interval_seconds * 1000;
    const lastHeartbeat = Math.max(
      node.last_heartbeat_at ? Date.parse(node.last_heartbeat_at) : 0,
      ctx.liveness?.get(node.name) ?? 0,
    );
    const settledLong = lastHeartbeat - Date.parse(vm.updated_at) > margin;
    if (settledLong && ["running", "paused", "stopped", "unknown"].includes(vm.status)) {
      next.status = "failed";
      next.error = {
        code: "vm_not_found",
        message: `node ${vm.node} no longer reports this VM (its agent state was lost)`,
      };
    }
    if (!settledLong) requeue = margin;
    return commit();
  }
  const status = statusOfPhase(seen.phase);
  if (status) next.status = status;
  if (status === "running") next.error = null;
  const newExit = seen.exit !== null && !sameExit(seen.exit, vm.last_exit);
  if (newExit) next.last_exit = seen.exit;
  next.cloud_init = seen.cloud_init ?? null;
  next.nics = withLearntAddresses(next.nics, seen.nic_addresses);

  if (
    status === "running" && vm.restart_count > 0 && vm.last_restart_at &&
    now.getTime() - Date.parse(vm.last_restart_at) >=
      ctx.cfg.vms.restart_backoff_reset_seconds * 1000
  ) {
    next.restart_count = 0;
  }
  if (status === "stopped" && vm.desired_phase === "running") {
    const reason = seen.exit?.reason ?? null;
    const policy = vm.restart_policy;
    const hostReboot = reason === "host-reboot";
    const stays = !hostReboot && newExit &&
      ((reason === "guest-shutdown" && policy !== "always") ||
        (reason === "crashed" && policy === "never"));
    if (stays) {
      next.desired_phase = "stopped";
      log.info("vm stopped on its own; desired phase now stopped", {
        vm: name,
        reason,
        restart_policy: policy,
      });
    } else {
      const n = hostReboot ? vm.restart_count : vm.restart_count + 1;
      const wait = hostReboot ? 0 : restartBackoffMs(ctx, n);
      const since = vm.last_restart_at ? Date.parse(vm.last_restart_at) : 0;
      const due = since + wait;
      if (now.getTime() < due) {
        requeue = due - now.getTime();
      } else {
        const why = hostReboot
          ? "start at boot (host reboot)"
          : `restart_policy ${policy}: ${reason ?? "stopped"}`;
        const task = newTask("vm.start", vm, now, { reason: why });
        next = {
          ...next,
          status: "starting",
          active_task_id: task.id,
          last_task: lastTaskOf(task),
          restart_count: n,
          last_restart_at: ts,
        };
        ops.push(...enqueueOps(task));
        log.info("vm restart queued", {
          vm: name,
          reason: why,
          restart_count: n,
          task_id: task.id,
        });
      }
    }
  }
  return commit();

  async function commit(): Promise<ReconcileResult | void> {
    const changed = JSON.stringify({ ...next, updated_at: "" }) !==
      JSON.stringify({ ...vm, updated_at: "" });
    if (changed) {
      if (next.status !== vm.status) {
        log.info("vm status changed", { vm: name, from: vm.status, to: next.status });
      }
      const res = await store.txn({
        compare: [{ key: kv!.key, modRevision: kv!.modRevision }],
        success: [{ type: "put", key: kv!.key, value: { ...next, updated_at: ts } }, ...ops],
      });
      if (!res.succeeded) throw new Error(`vm ${name} changed concurrently`);
    }
    return requeue !== undefined ? { requeueAfterMs: requeue } : undefined;
  }
}
