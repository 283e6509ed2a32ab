/**
 * Pool scans (spec 001 "VM placement scheduler": the pool-scan worker; troubleshooting: scans
 * are async operations reporting a stable code): a durable `pool.scan` task per pool instance
 * asks the node's agent (`POST /v1/pools/scan` over mTLS) for the pool's filesystem size and
 * free bytes, the VM disks it holds and its cached images, and records them on the instance
 * (`last_scan`, `total_bytes`, `available_bytes`) with the `disk` pressure condition
 * (cp/pools/pressure.ts), in the transaction that ends the task.
 *
 * One scan per instance at a time: the instance records the task in flight
 * (`scan_task_id`), written with the task; {@link queueScan} returns that task instead of
 * queuing another. Scans are queued by `otherix pool scan` and by the periodic scan
 * controller (cp/pools/scan_controller.ts).
 *
 * Errors ending a scan: `pool_not_found` (the instance was deleted), `node_not_ready` (its node
 * is not `ready` or has no endpoint), `agent_unreachable`, and the agent's own codes
 * (`pool_not_found`: the agent does not provide the pool; `path_not_allowed`;
 * `pool_scan_failed`). A failed scan records only `last_scan_error` on the instance (and
 * clears `scan_task_id`).
 *
 * Logs (spec 001: Warn on set, Info on clear): `pool under disk pressure` and
 * `pool disk pressure cleared`.
 *
 * @module
 */
import type { AgentPoolScan } from "../../shared/api/pools.ts";
import { isTerminal } from "../../shared/api/tasks.ts";
import { type ErrorInfo, isErrorCode } from "../../shared/errors.ts";
import { AgentError } from "../agent_client.ts";
import type { CpContext } from "../context.ts";
import {
  keys,
  type NodeRecord,
  type PoolRecord,
  type PoolScanRecord,
  type TaskRecord,
} from "../repo/records.ts";
import { enqueueOps, findTask, newTask } from "../tasks/queue.ts";
import type { TaskHandler, TaskRuntime } from "../tasks/registry.ts";
import { ApiError } from "../../shared/errors.ts";
import { diskPressureConfig, nextDiskPressure } from "./pressure.ts";
import { vmsInInstance } from "./service.ts";

/** A new `pending` `pool.scan` task of instance `pool`. */
export function newScanTask(pool: PoolRecord, now: Date, reason: string | null): TaskRecord {
  const task = newTask("pool.scan", { name: pool.name, id: pool.id }, now, {
    reason,
    params: { node: pool.node },
  });
  return { ...task, resource: { kind: "pool", name: pool.name, id: pool.id } };
}

/**
 * Queues a scan of the instance stored at `key`, or returns the scan already queued or
 * running for it.
 *
 * @param reason why the system asks (`periodic scan`); null for a user's request
 * @param when queue only if the stored instance satisfies this (default: always)
 * @returns the task, or null when the instance does not exist (any more) or `when` refused
 * @throws ApiError `internal_error` after too many concurrent updates of the instance
 */
export async function queueScan(
  ctx: CpContext,
  key: string,
  reason: string | null,
  when: (stored: PoolRecord) => boolean = () => true,
): Promise<TaskRecord | null> {
  for (let attempt = 0; attempt < 20; attempt++) {
    const kv = await ctx.store.get<PoolRecord>(key);
    if (!kv) return null;
    const inFlight = await scanInFlight(ctx, kv.value);
    if (inFlight) return inFlight;
    if (!when(kv.value)) return null;
    const task = newScanTask(kv.value, ctx.now(), reason);
    const res = await ctx.store.txn({
      compare: [{ key, modRevision: kv.modRevision }],
      success: [
        { type: "put", key, value: { ...kv.value, scan_task_id: task.id } satisfies PoolRecord },
        ...enqueueOps(task),
      ],
    });
    if (!res.succeeded) continue;
    ctx.log.info("pool scan queued", {
      pool: kv.value.name,
      node: kv.value.node,
      task_id: task.id,
      reason,
    });
    return task;
  }
  throw new ApiError("internal_error", `pool instance ${key}: too many concurrent updates`);
}

/** The scan task queued or running for `pool`, if any. */
export async function scanInFlight(ctx: CpContext, pool: PoolRecord): Promise<TaskRecord | null> {
  if (!pool.scan_task_id) return null;
  const task = await findTask(ctx.store, pool.scan_task_id);
  return task && !isTerminal(task.status) ? task : null;
}

/** The `pool.scan` handler (register it with the task worker). */
export const poolScanHandler: TaskHandler = { types: ["pool.scan"], run: runScan };

async function runScan(rt: TaskRuntime): Promise<void> {
  const { ctx, task } = rt;
  const name = task.resource.name;
  const nodeName = task.params.node ?? "";
  const key = keys.pool(name, nodeName);
  const kv = await ctx.store.get<PoolRecord>(key);
  if (!kv || kv.value.id !== task.resource.id) {
    return await finishScan(rt, key, {
      code: "pool_not_found",
      message: `pool "${name}" has no instance ${task.resource.id} on node "${nodeName}" ` +
        "(deleted)",
    });
  }
  const pool = kv.value;
  const node = (await ctx.store.get<NodeRecord>(keys.node(nodeName)))?.value;
  if (!node || node.status !== "ready" || !node.endpoint) {
    return await finishScan(rt, key, {
      code: "node_not_ready",
      message: `cannot scan pool "${name}": node "${nodeName}" is ` +
        `${node ? (node.endpoint ? node.status : "without an agent endpoint") : "not registered"}`,
    });
  }
  const startedAt = ctx.now();
  await rt.progress(`scanning ${pool.path} on node ${nodeName}`);
  let scan: AgentPoolScan;
  try {
    scan = await ctx.agents.scanPool(
      { name: node.name, endpoint: node.endpoint },
      { name: pool.name, path: pool.path },
      rt.signal,
    );
  } catch (e) {
    rt.signal.throwIfAborted();
    return await finishScan(rt, key, scanError(e, nodeName));
  }
  const placed = await vmsInInstance(ctx, pool);
  const found = new Set(scan.vm_disks.map((d) => d.vm_id));
  const scannedAt = ctx.now().toISOString();
  const record: PoolScanRecord = {
    scanned_at: scannedAt,
    started_at: startedAt.toISOString(),
    total_bytes: scan.total_bytes,
    available_bytes: scan.available_bytes,
    vm_disk_bytes: scan.vm_disks.reduce((a, d) => a + d.bytes, 0),
    vm_disk_count: scan.vm_disks.length,
    image_bytes: scan.image_bytes,
    image_count: scan.image_count,
    unobserved_vm_ids: placed
      .filter((v) => Date.parse(v.created_at) <= startedAt.getTime() && !found.has(v.id))
      .map((v) => v.id),
  };
  const cfg = diskPressureConfig(ctx.cfg);
  // Set by the last (committed) attempt of finishScan.
  let before = null as PoolRecord | null;
  let after = null as PoolRecord | null;
  await finishScan(rt, key, null, (cur) => {
    before = cur;
    after = {
      ...cur,
      total_bytes: scan.total_bytes,
      available_bytes: scan.available_bytes,
      last_scan: record,
      pressure: {
        disk: nextDiskPressure(
          cur.pressure?.disk,
          scan.available_bytes,
          scan.total_bytes,
          cfg,
          scannedAt,
        ),
      },
      updated_at: scannedAt,
    };
    return after;
  });
  if (before && after) logPressure(ctx, before, after, cfg.threshold_percent);
}

/** The task error of a failed agent call. */
function scanError(e: unknown, nodeName: string): ErrorInfo {
  if (e instanceof AgentError) {
    if (e.kind === "unreachable") {
      return { code: "agent_unreachable", message: `agent of node ${nodeName}: ${e.message}` };
    }
    if (e.info && isErrorCode(e.info.code)) {
      return { code: e.info.code, message: e.info.message, details: e.info.details };
    }
    return { code: "pool_scan_failed", message: e.message };
  }
  return { code: "pool_scan_failed", message: e instanceof Error ? e.message : String(e) };
}

/**
 * Ends the task (`error` null: succeeded) and, in the same transaction, writes the instance:
 * `apply(current)` on success, and `scan_task_id` cleared when it names this task. Retries
 * when the instance changed meanwhile (heartbeats update it); an instance that is gone is
 * left alone (a succeeded scan then fails with `pool_not_found`).
 */
async function finishScan(
  rt: TaskRuntime,
  key: string,
  error: ErrorInfo | null,
  apply?: (cur: PoolRecord) => PoolRecord,
): Promise<void> {
  for (let attempt = 0; attempt < 20; attempt++) {
    const kv = await rt.ctx.store.get<PoolRecord>(key);
    if (!kv || kv.value.id !== rt.task.resource.id) {
      await rt.finish(
        error ?? {
          code: "pool_not_found",
          message: `pool "${rt.task.resource.name}" instance ${rt.task.resource.id} was deleted ` +
            "during the scan",
        },
      );
      return;
    }
    const at = rt.ctx.now().toISOString();
    const base = error
      ? { ...kv.value, last_scan_error: { at, code: error.code, message: error.message } }
      : { ...(apply ? apply(kv.value) : kv.value), last_scan_error: null };
    const next: PoolRecord = {
      ...base,
      scan_task_id: kv.value.scan_task_id === rt.task.id ? null : kv.value.scan_task_id ?? null,
    };
    const ok = await rt.finish(error, {
      compare: [{ key, modRevision: kv.modRevision }],
      ops: [{ type: "put", key, value: next }],
    });
    if (ok) return;
  }
  throw new Error(`pool scan ${rt.task.id}: the instance keeps changing; retrying the task`);
}

/** Logs a disk-pressure transition between `before` and `after` (Warn on set, Info on clear). */
function logPressure(
  ctx: CpContext,
  before: PoolRecord,
  after: PoolRecord,
  thresholdPercent: number,
): void {
  const was = before.pressure?.disk.under_pressure ?? false;
  const now = after.pressure?.disk;
  if (!now || was === now.under_pressure) return;
  const fields = {
    pool: after.name,
    node: after.node,
    condition: "disk",
    available_percent: now.available_percent,
    threshold_percent: thresholdPercent,
  };
  if (now.under_pressure) {
    ctx.log.warn("pool under disk pressure", { ...fields, consecutive: now.consecutive });
  } else ctx.log.info("pool disk pressure cleared", fields);
}
