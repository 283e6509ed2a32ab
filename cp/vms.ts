/**
 * VMs: create (validate → resolve pool → schedule → one transaction writing the VM and its
 * task), delete, views (spec: "otherix vm subcommands", "VM placement scheduler"). Handlers
 * only record intent; the task worker does the work.
 *
 * Delete semantics: `DELETE` on a VM whose last task is still in flight returns that task
 * when it is a `vm.delete` (idempotent) and 409 `conflict` when it is a `vm.create` (wait
 * for it to finish or fail, then delete). Otherwise the VM becomes `deleting` with desired
 * phase `deleted` and a `vm.delete` task is queued; the record is removed when the agent
 * confirms the deletion.
 *
 * @module
 */
import type { Task } from "../shared/api/tasks.ts";
import { isTerminal } from "../shared/api/tasks.ts";
import { imageBasenameOf } from "../shared/api/images.ts";
import type { Vm, VmCreateRequest } from "../shared/api/vms.ts";
import { ApiError, isErrorCode } from "../shared/errors.ts";
import { AgentError } from "./agent_client.ts";
import type { CpContext } from "./context.ts";
import { findNode, getSettings, vmCounts } from "./nodes.ts";
import {
  keys,
  type NodeRecord,
  type PoolRecord,
  type TaskRecord,
  type VmRecord,
} from "./repo/records.ts";
import { schedule } from "./scheduler.ts";
import { rangeAll } from "./store/store.ts";
import { enqueueOps, newTask, taskView } from "./tasks/queue.ts";

/** The public view of a VM (user-data and pool path are not served). */
export function vmView(v: VmRecord): Vm {
  return {
    id: v.id,
    name: v.name,
    owner_id: v.owner_id,
    image_url: v.image_url,
    image_sha256: v.image_sha256,
    image: v.image,
    architecture: v.architecture,
    vcpus: v.vcpus,
    memory_mb: v.memory_mb,
    disk_gib: v.disk_gib,
    pool: v.pool,
    node: v.node,
    status: v.status,
    desired_phase: v.desired_phase,
    last_task_id: v.last_task_id,
    error: v.error,
    created_at: v.created_at,
    updated_at: v.updated_at,
  };
}

/** Reads a VM. @throws ApiError `vm_not_found` */
export async function getVm(ctx: CpContext, name: string): Promise<VmRecord> {
  const kv = await ctx.store.get<VmRecord>(keys.vm(name));
  if (!kv) throw new ApiError("vm_not_found", `vm "${name}" not found`);
  return kv.value;
}

/**
 * Records a VM to create and queues its `vm.create` task.
 *
 * @throws ApiError `default_pool_not_set`, `pool_not_found`, `node_not_found`,
 *   `pool_not_on_node`, `no_eligible_nodes`, `vm_already_exists`
 */
export async function createVm(
  ctx: CpContext,
  req: VmCreateRequest,
  ownerId: string,
): Promise<Task> {
  const { store } = ctx;
  if (await store.get(keys.vm(req.name))) {
    throw new ApiError("vm_already_exists", `vm "${req.name}" already exists`);
  }
  let poolName = req.pool;
  if (poolName === undefined) {
    const settings = await getSettings(ctx);
    if (!settings?.default_pool_name) {
      throw new ApiError(
        "default_pool_not_set",
        "no pool given and no cluster default pool is configured; pass a pool explicitly",
      );
    }
    poolName = settings.default_pool_name;
  }
  const poolInstances = (await rangeAll<PoolRecord>(store, keys.poolsNamed(poolName)))
    .map((kv) => kv.value);
  const nodes = (await rangeAll<NodeRecord>(store, keys.nodes)).map((kv) => kv.value);
  const placement = schedule(
    { pool: poolName, architecture: req.architecture, node: req.node },
    { nodes, poolInstances, vmCounts: await vmCounts(ctx) },
  );
  const now = ctx.now();
  const ts = now.toISOString();
  const vm: VmRecord = {
    id: crypto.randomUUID(),
    name: req.name,
    owner_id: ownerId,
    image_url: req.image_url,
    image_sha256: req.image_sha256 ?? null,
    image: imageBasenameOf(req.image_url),
    architecture: req.architecture,
    vcpus: req.vcpus,
    memory_mb: req.memory_mb,
    disk_gib: req.disk_gib,
    user_data: req.user_data ?? null,
    pool: poolName,
    pool_path: placement.pool.path,
    node: placement.node.name,
    status: "pending",
    desired_phase: "running",
    last_task_id: null,
    error: null,
    created_at: ts,
    updated_at: ts,
  };
  const task = newTask("vm.create", vm, now);
  vm.last_task_id = task.id;
  const res = await store.txn({
    compare: [{ key: keys.vm(vm.name), absent: true }],
    success: [{ type: "put", key: keys.vm(vm.name), value: vm }, ...enqueueOps(task)],
  });
  if (!res.succeeded) throw new ApiError("vm_already_exists", `vm "${req.name}" already exists`);
  ctx.log.info("vm create queued", {
    vm: vm.name,
    vm_id: vm.id,
    node: vm.node,
    pool: vm.pool,
    task_id: task.id,
  });
  return taskView(task);
}

/**
 * Queues deletion of a VM (see the module doc for semantics).
 *
 * @throws ApiError `vm_not_found`, `conflict` (a create task is in flight)
 */
export async function deleteVm(ctx: CpContext, name: string): Promise<Task> {
  const { store } = ctx;
  for (let attempt = 0; attempt < 50; attempt++) {
    const kv = await store.get<VmRecord>(keys.vm(name));
    if (!kv) throw new ApiError("vm_not_found", `vm "${name}" not found`);
    const vm = kv.value;
    if (vm.last_task_id) {
      const last = (await store.get<TaskRecord>(keys.task(vm.last_task_id)))?.value;
      if (last && !isTerminal(last.status)) {
        if (last.type === "vm.delete") return taskView(last);
        throw new ApiError(
          "conflict",
          `vm "${name}" has a ${last.type} task in progress (${last.id}); retry when it finishes`,
          { task_id: last.id, task_type: last.type, task_status: last.status },
        );
      }
    }
    const now = ctx.now();
    const task = newTask("vm.delete", vm, now);
    const next: VmRecord = {
      ...vm,
      status: "deleting",
      desired_phase: "deleted",
      last_task_id: task.id,
      updated_at: now.toISOString(),
    };
    const res = await store.txn({
      compare: [{ key: kv.key, modRevision: kv.modRevision }],
      success: [{ type: "put", key: kv.key, value: next }, ...enqueueOps(task)],
    });
    if (res.succeeded) {
      ctx.log.info("vm delete queued", { vm: name, vm_id: vm.id, task_id: task.id });
      return taskView(task);
    }
  }
  throw new ApiError("internal_error", `vm "${name}": too many concurrent updates`);
}

/**
 * The tail of a VM's serial console log, fetched from its node's agent.
 *
 * @throws ApiError `vm_not_found`, `node_not_ready` (no endpoint yet), `agent_unreachable`,
 *   or the agent's own error code
 */
export async function consoleLog(ctx: CpContext, name: string, tailBytes: number): Promise<string> {
  const vm = await getVm(ctx, name);
  const node = await findNode(ctx, vm.node);
  if (!node?.endpoint) {
    throw new ApiError("node_not_ready", `node ${vm.node} has no agent endpoint yet`);
  }
  try {
    return await ctx.agents.consoleLog(
      { name: node.name, endpoint: node.endpoint },
      vm.id,
      tailBytes,
    );
  } catch (e) {
    if (!(e instanceof AgentError)) throw e;
    if (e.kind === "unreachable") {
      throw new ApiError("agent_unreachable", `agent of node ${vm.node} unreachable: ${e.message}`);
    }
    const info = e.info;
    if (info && isErrorCode(info.code)) throw new ApiError(info.code, info.message, info.details);
    throw new ApiError("agent_unreachable", e.message);
  }
}
