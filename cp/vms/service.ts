/**
 * VMs: create (validate → resolve pool → place → one transaction writing the VM, its node's
 * allocation and its task: cp/vms/placement.ts), delete, lifecycle verbs, views (spec: "otherix vm subcommands", "VM placement
 * scheduler"). Handlers only record intent — the desired phase and a task — and the task
 * worker (cp/vms/tasks.ts) and the VM controller (cp/vms/controller.ts) do the work.
 *
 * One task at a time per VM (`active_task_id`): a verb while a task runs is 409 `vm_busy`.
 * `DELETE` is the exception: it supersedes the running task (a create's download is aborted,
 * nothing is left on the agent) and queues a `vm.delete` that runs once the superseded task
 * has stopped; a second `DELETE` returns the same delete task. `DELETE ?force=true` on a VM
 * whose node is not `ready` removes the record at once; the agent deletes the leftovers when
 * it returns (orphan cleanup by the node controller). A `lost` VM (its node was deleted) is
 * removed at once, with or without `force`.
 *
 * @module
 */
import { readOrCached } from "../store/health.ts";
import { actionTaskType, type Task, type VmAction } from "../../shared/api/tasks.ts";
import { isTerminal } from "../../shared/api/tasks.ts";
import { imageBasenameOf } from "../../shared/api/images.ts";
import type { PlacementDecision } from "../../shared/api/placement.ts";
import type { Vm, VmActionRequest, VmCreateRequest, VmLastTask } from "../../shared/api/vms.ts";
import { ApiError, isErrorCode } from "../../shared/errors.ts";
import { redactText, redactUrl } from "../../shared/url_redact.ts";
import { AgentError } from "../agent_client.ts";
import type { CpContext } from "../context.ts";
import { failpoint } from "../failpoints.ts";
import { findNode, getSettings } from "../nodes/service.ts";
import { keys, type TaskRecord, type VmRecord } from "../repo/records.ts";
import type { PlacementRequest } from "../scheduler.ts";
import { dryRunPlacement, placeAndRecord } from "./placement.ts";
import { readAllocation, releaseWrite } from "./allocations.ts";
import { attachWrite, checkNetworksExist, releaseNicsWrite } from "../networks/ipam.ts";
import { mergeCloudConfig } from "./cloud_config.ts";
import type { KeyValue } from "../store/store.ts";
import { enqueueOps, newTask, taskView, terminal } from "../tasks/queue.ts";
import { busyStatusOf, checkTransition, desiredPhaseOf } from "./transitions.ts";

/**
 * The public view of a VM (user-data, pool path and bookkeeping are not served). Credentials
 * in `image_url` and in error messages are shown as `***` (shared/url_redact.ts): the record
 * keeps them for dispatch to the agent only.
 */
export function vmView(v: VmRecord): Vm {
  const {
    user_data: _u,
    pool_path: _p,
    active_task_id: _a,
    last_restart_at: _r,
    ...view
  } = v;
  const err = <T extends { message: string } | null>(e: T): T =>
    e ? { ...e, message: redactText(e.message) } : e;
  return {
    ...view,
    image_url: redactUrl(v.image_url),
    error: err(v.error),
    last_task: v.last_task ? { ...v.last_task, error: err(v.last_task.error) } : null,
    nics: v.nics ?? [],
  };
}

/** The summary of `t` a VM record keeps as `last_task`. */
export function lastTaskOf(t: TaskRecord): VmLastTask {
  return { id: t.id, type: t.type, status: t.status, error: t.error };
}

/** Reads a VM. @throws ApiError `vm_not_found` */
export async function getVm(ctx: CpContext, name: string): Promise<VmRecord> {
  // Without quorum the cache answers, marked stale (cp/store/health.ts).
  const vm = await readOrCached(
    ctx.storeHealth,
    async () => (await ctx.store.get<VmRecord>(keys.vm(name)))?.value ?? null,
    () => ctx.cache?.vms.get(keys.vm(name)) ?? (ctx.cache ? null : undefined),
  );
  if (!vm) throw new ApiError("vm_not_found", `vm "${name}" not found`);
  return vm;
}

/**
 * The pool a create targets: `req.pool`, else the cluster default pool.
 *
 * @throws ApiError `default_pool_not_set`
 */
async function resolvePool(ctx: CpContext, req: VmCreateRequest): Promise<string> {
  if (req.pool !== undefined) return req.pool;
  const settings = await getSettings(ctx);
  if (!settings?.default_pool_name) {
    throw new ApiError(
      "default_pool_not_set",
      "no pool given and no cluster default pool is configured: run 'otherix cluster " +
        "set-default-pool <name>' or pass --pool",
    );
  }
  return settings.default_pool_name;
}

/** What the scheduler places for `req` in pool `pool`. */
function placementRequestOf(req: VmCreateRequest, pool: string): PlacementRequest {
  return {
    pool,
    architecture: req.architecture,
    node: req.node,
    vcpus: req.vcpus,
    memory_mib: req.memory_mb,
    disk_bytes: req.disk_gib * 1024 ** 3,
  };
}

/**
 * Where `req` would be placed, with every candidate's filters, utilisation and score
 * (`vm create --dry-run`); nothing is created.
 *
 * @throws ApiError `default_pool_not_set`, `pool_not_found`, `node_not_found`,
 *   `pool_not_on_node`
 */
export async function dryRunCreate(
  ctx: CpContext,
  req: VmCreateRequest,
): Promise<PlacementDecision> {
  const pool = await resolvePool(ctx, req);
  const d = await dryRunPlacement(ctx, placementRequestOf(req, pool));
  const winner = d.verdicts.find((v) => v.winner) ?? null;
  return {
    algorithm: d.algorithm,
    pool,
    node: winner?.node ?? null,
    candidates: d.verdicts,
  };
}

/**
 * Records a VM to create and queues its `vm.create` task.
 *
 * @throws ApiError `default_pool_not_set`, `pool_not_found`, `node_not_found`,
 *   `pool_not_on_node`, `no_eligible_nodes`, `vm_already_exists`, `network_not_found`,
 *   `network_addresses_exhausted`
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
  const poolName = await resolvePool(ctx, req);
  const placementReq = placementRequestOf(req, poolName);
  const now = ctx.now();
  const ts = now.toISOString();
  const vm: Omit<VmRecord, "node" | "pool_path"> = {
    id: crypto.randomUUID(),
    name: req.name,
    owner_id: ownerId,
    image_url: req.image_url,
    image_sha256: req.image_sha256 ?? null,
    image: imageBasenameOf(req.image_url),
    image_format: null,
    architecture: req.architecture,
    vcpus: req.vcpus,
    memory_mb: req.memory_mb,
    disk_gib: req.disk_gib,
    user_data: mergeCloudConfig(req.user_data, req.ssh_authorized_keys),
    pool: poolName,
    status: "pending",
    desired_phase: "running",
    restart_policy: req.restart_policy,
    restart_count: 0,
    last_exit: null,
    last_task: null,
    error: null,
    active_task_id: null,
    last_restart_at: null,
    created_at: ts,
    updated_at: ts,
  };
  const task = newTask("vm.create", vm, now);
  vm.active_task_id = task.id;
  vm.last_task = lastTaskOf(task);
  // NICs: networks checked before placement; MACs and addresses allocated in the same
  // transaction as the VM record (cp/networks/ipam.ts).
  const networks = req.networks ?? [];
  if (networks.length) await checkNetworksExist(ctx, networks);
  const placed = await placeAndRecord(
    ctx,
    placementReq,
    { ...vm, nics: [] },
    () => enqueueOps(task),
    networks.length
      ? async (rec) => {
        const w = await attachWrite(ctx, rec, networks);
        return { vm: { ...rec, nics: w.nics }, compare: w.compare, ops: w.ops };
      }
      : undefined,
  );
  ctx.log.info("vm create queued", {
    vm: vm.name,
    vm_id: vm.id,
    node: placed.node,
    pool: vm.pool,
    task_id: task.id,
    restart_policy: vm.restart_policy,
  });
  failpoint("vm.create.after_record");
  return taskView(task);
}

/** The VM's in-flight task (null: none, or the recorded one already ended). */
async function activeTask(ctx: CpContext, vm: VmRecord): Promise<KeyValue<TaskRecord> | null> {
  if (!vm.active_task_id) return null;
  const t = await ctx.store.get<TaskRecord>(keys.task(vm.active_task_id));
  return t && !isTerminal(t.value.status) ? t : null;
}

/**
 * Queues deletion of a VM (see the module doc for semantics).
 *
 * @param force remove the record at once when the VM's node is not `ready`
 * @throws ApiError `vm_not_found`
 */
export async function deleteVm(ctx: CpContext, name: string, force = false): Promise<Task> {
  const { store } = ctx;
  for (let attempt = 0; attempt < 50; attempt++) {
    const kv = await store.get<VmRecord>(keys.vm(name));
    if (!kv) throw new ApiError("vm_not_found", `vm "${name}" not found`);
    const vm = kv.value;
    const active = await activeTask(ctx, vm);
    if (active?.value.type === "vm.delete") return taskView(active.value);
    const now = ctx.now();
    if (force || vm.status === "lost") {
      const node = await findNode(ctx, vm.node);
      if (!node || node.status !== "ready") {
        // The agent is away: forget the VM now; its leftovers are removed if it returns.
        const task = terminal(
          newTask("vm.delete", vm, now, {
            reason: `forced: node ${vm.node} is ${node?.status ?? "not registered"}`,
            params: { node: vm.node },
          }),
          null,
          now,
        );
        const ops = [
          { type: "delete" as const, key: kv.key },
          { type: "put" as const, key: keys.task(task.id), value: task },
          ...(active
            ? [{
              type: "put" as const,
              key: active.key,
              value: terminal(active.value, {
                code: "task_cancelled",
                message: `vm "${name}" was force-deleted`,
              }, now),
            }, { type: "delete" as const, key: keys.activeTask(active.value.id) }]
            : []),
        ];
        const release = releaseWrite(await readAllocation(ctx, vm.node), vm, now.toISOString());
        const nics = await releaseNicsWrite(ctx, vm);
        const res = await store.txn({
          compare: [
            { key: kv.key, modRevision: kv.modRevision },
            ...(active ? [{ key: active.key, modRevision: active.modRevision }] : []),
            ...release.compare,
            ...nics.compare,
          ],
          success: [...ops, ...release.ops, ...nics.ops],
        });
        if (!res.succeeded) continue;
        ctx.log.warn("vm force-deleted while its node is away", {
          vm: name,
          vm_id: vm.id,
          node: vm.node,
          node_status: node?.status ?? null,
          task_id: task.id,
        });
        return taskView(task);
      }
    }
    const task = newTask("vm.delete", vm, now, {
      params: { node: vm.node, after_task_id: active?.value.id ?? null },
    });
    const next: VmRecord = {
      ...vm,
      status: "deleting",
      desired_phase: "deleted",
      active_task_id: task.id,
      last_task: lastTaskOf(task),
      updated_at: now.toISOString(),
    };
    const res = await store.txn({
      compare: [
        { key: kv.key, modRevision: kv.modRevision },
        ...(active ? [{ key: active.key, modRevision: active.modRevision }] : []),
      ],
      success: [
        { type: "put", key: kv.key, value: next },
        ...enqueueOps(task),
        ...(active
          ? [{
            type: "put" as const,
            key: active.key,
            value: { ...active.value, cancel_requested: true, updated_at: now.toISOString() },
          }]
          : []),
      ],
    });
    if (res.succeeded) {
      ctx.log.info("vm delete queued", {
        vm: name,
        vm_id: vm.id,
        task_id: task.id,
        cancels: active?.value.id ?? null,
      });
      return taskView(task);
    }
  }
  throw new ApiError("internal_error", `vm "${name}": too many concurrent updates`);
}

/**
 * Records a lifecycle verb: the desired phase it implies and its `vm.<action>` task, in one
 * transaction.
 *
 * @throws ApiError `vm_not_found`, `vm_busy` (another task is in flight; details.task_id),
 *   `vm_invalid_state` (details.status)
 */
export async function requestAction(
  ctx: CpContext,
  name: string,
  action: VmAction,
  body: VmActionRequest,
): Promise<Task> {
  const { store } = ctx;
  for (let attempt = 0; attempt < 50; attempt++) {
    const kv = await store.get<VmRecord>(keys.vm(name));
    if (!kv) throw new ApiError("vm_not_found", `vm "${name}" not found`);
    const vm = kv.value;
    const active = await activeTask(ctx, vm);
    if (active) {
      throw new ApiError(
        "vm_busy",
        `vm "${name}" has a ${active.value.type} task in progress (${active.value.id}); ` +
          "retry when it finishes",
        { task_id: active.value.id, task_type: active.value.type, status: vm.status },
      );
    }
    checkTransition(vm, action);
    const now = ctx.now();
    const task = newTask(actionTaskType(action), vm, now, {
      params: body.timeout_seconds !== undefined ? { timeout_seconds: body.timeout_seconds } : {},
    });
    const next: VmRecord = {
      ...vm,
      desired_phase: desiredPhaseOf(action) ?? vm.desired_phase,
      status: busyStatusOf(action) ?? vm.status,
      active_task_id: task.id,
      last_task: lastTaskOf(task),
      // A user's start begins a fresh restart history.
      ...(action === "start" ? { restart_count: 0, last_restart_at: null } : {}),
      updated_at: now.toISOString(),
    };
    const res = await store.txn({
      compare: [{ key: kv.key, modRevision: kv.modRevision }],
      success: [{ type: "put", key: kv.key, value: next }, ...enqueueOps(task)],
    });
    if (res.succeeded) {
      ctx.log.info(`vm ${action} queued`, { vm: name, vm_id: vm.id, task_id: task.id });
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
