/**
 * The `vm.*` task handler: runs `vm.create`, `vm.delete` and every lifecycle verb
 * (`vm.start`, `vm.stop`, …) on the VM's node agent (spec: "Behind the scenes: handler
 * enqueues vm.create task → worker …").
 *
 * Per task (idempotent: after a crash another worker runs it again from its stored state):
 * 1. `vm.delete` that superseded a task waits until that task has stopped.
 * 2. Start: the node must be `ready` with an endpoint (else `node_not_ready`); the task
 *    becomes `running` and the VM shows the verb's busy status (`creating`, `starting`, …).
 * 3. Dispatch to the agent with the task's id (`POST /v1/vms`, `POST /v1/vms/{id}/actions`,
 *    `DELETE /v1/vms/{id}`); a retried dispatch finds the same agent task.
 * 4. Wait for the agent task to end. Agents push transitions (`POST /v1/nodes/report`,
 *    recorded under `/agent-tasks/<id>`), which this handler watches: no poll on the path.
 *    A slow fallback poll (`workers.poll_interval_ms`) notices an agent that restarted and
 *    lost the task (404 → re-dispatch). Bounds: `workers.agent_unreachable_timeout_seconds`
 *    of failed contact → `agent_unreachable`; `workers.task_timeout_seconds` overall.
 * 5. Finish and project onto the VM in one transaction: create → `running` (+ image format);
 *    verbs → the agent's resulting phase; delete → the record is removed; failures → the
 *    error on the VM (`failed` for create/delete).
 *
 * A `vm delete` that supersedes a create or verb cancels it: the handler stops waiting and
 * ends the task `task_cancelled`; the delete's agent call aborts whatever the agent is
 * still doing for the VM.
 *
 * @module
 */
import type { AgentTask, AgentVmActionRequest } from "../../shared/api/agent.ts";
import {
  isTerminal,
  type TaskType,
  TaskTypeSchema,
  type VmAction,
} from "../../shared/api/tasks.ts";
import type { ErrorInfo } from "../../shared/errors.ts";
import { AgentError, type AgentTarget } from "../agent_client.ts";
import { failpoint } from "../failpoints.ts";
import { findNode } from "../nodes/service.ts";
import { observedVm } from "../nodes/observed.ts";
import { readAllocation, releaseWrite } from "./allocations.ts";
import { releaseNicsWrite } from "../networks/ipam.ts";
import { agentNicsOf } from "../networks/nics.ts";
import { keys, type TaskRecord, type VmRecord } from "../repo/records.ts";
import type { KeyValue } from "../store/store.ts";
import { ClaimLostError, type TaskHandler, type TaskRuntime } from "../tasks/registry.ts";
import { lastTaskOf } from "./service.ts";
import { busyStatusOf, statusOfPhase } from "./transitions.ts";

/** Every `vm.*` task type (today: all of them). */
const VM_TASK_TYPES = TaskTypeSchema.options.filter((t) => t.startsWith("vm."));

/** The verb of a `vm.<verb>` task type. */
function verbOf(type: TaskType): VmAction | "create" | "delete" {
  return type.slice(3) as VmAction | "create" | "delete";
}

/** The catch-all error code of a task type. */
function catchAll(type: TaskType): ErrorInfo["code"] {
  return type === "vm.create"
    ? "vm_create_failed"
    : type === "vm.delete"
    ? "vm_delete_failed"
    : "vm_action_failed";
}

class Cancelled extends Error {}

/** The `vm.*` handler. */
export const vmTaskHandler: TaskHandler = {
  types: VM_TASK_TYPES,
  run,
};

async function run(rt: TaskRuntime): Promise<void> {
  const { ctx } = rt;
  const type = rt.task.type;
  const verb = verbOf(type);
  try {
    if (type === "vm.delete" && rt.task.params.after_task_id) {
      await waitTaskEnded(rt, rt.task.params.after_task_id);
    }
    if (rt.cancelled.aborted) throw new Cancelled();

    let vmKv = await readVm(rt);
    if (!vmKv && type !== "vm.delete") {
      await rt.finish({ code: catchAll(type), message: "the VM record no longer exists" });
      return;
    }
    const nodeName = vmKv?.value.node ?? rt.task.params.node ?? "";
    const node = await findNode(ctx, nodeName);
    if (rt.task.status === "pending") {
      if (!node || node.status !== "ready" || !node.endpoint) {
        const why = !node
          ? "is not registered"
          : !node.endpoint
          ? "has no endpoint"
          : `is ${node.status}`;
        await finishProjected(rt, {
          code: "node_not_ready",
          message: `node ${nodeName} ${why} at dispatch`,
          details: { node: nodeName, status: node?.status ?? null },
        }, null);
        return;
      }
      vmKv = await markRunning(rt, vmKv, verb);
      rt.log.info("task running", { node: nodeName });
    }
    failpoint("task.before_dispatch");

    const started = Date.parse(rt.task.started_at ?? rt.task.created_at);
    const deadline = started + ctx.cfg.workers.task_timeout_seconds * 1000;
    let result: AgentTask | null = null;
    for (let dispatches = 0; result === null; dispatches++) {
      const cur = await findNode(ctx, nodeName);
      if (!cur?.endpoint) {
        await finishProjected(rt, {
          code: "node_not_ready",
          message: `node ${nodeName} is no longer registered or has no endpoint`,
        }, null);
        return;
      }
      const target: AgentTarget = { name: cur.name, endpoint: cur.endpoint };
      rt.mark("dispatching");
      const at = await dispatch(rt, target, vmKv?.value ?? null, deadline);
      if (at === "gone") {
        // delete of a VM the agent does not know: already gone.
        await finishProjected(rt, null, null);
        return;
      }
      rt.mark("dispatched");
      if (dispatches === 0) failpoint("task.after_dispatch");
      result = isTerminal(at.status) ? at : await waitAgentTask(rt, target, deadline);
    }
    rt.mark("agent_done");
    for (const [step, ms] of Object.entries(result.timings)) rt.mark(`agent.${step}`, ms);
    failpoint("task.before_finish");
    if (result.status === "failed") {
      const err = result.error ?? { code: catchAll(type), message: "agent task failed" };
      // A restart the agent finds already done is a success (stale observation raced it).
      if (
        type === "vm.start" && rt.task.reason !== null && err.code === "vm_invalid_state" &&
        err.details?.phase === "running"
      ) {
        await finishProjected(rt, null, { ...result, result: { phase: "running" } });
        return;
      }
      await finishProjected(rt, err, result);
      return;
    }
    await finishProjected(rt, null, result);
  } catch (e) {
    if (e instanceof Cancelled) {
      await finishProjected(rt, {
        code: "task_cancelled",
        message: `cancelled: vm "${rt.task.resource.name}" is being deleted`,
      }, null);
      return;
    }
    if (e instanceof TaskFailure) {
      await finishProjected(rt, e.info, null);
      return;
    }
    throw e;
  }
}

/** Ends the task with `info`. */
class TaskFailure extends Error {
  constructor(readonly info: ErrorInfo) {
    super(info.message);
  }
}

async function readVm(rt: TaskRuntime): Promise<KeyValue<VmRecord> | null> {
  const kv = await rt.ctx.store.get<VmRecord>(keys.vm(rt.task.resource.name));
  return kv && kv.value.id === rt.task.resource.id ? kv : null;
}

/** `pending` → `running`, and the VM's busy status, atomically. */
async function markRunning(
  rt: TaskRuntime,
  vmKv: KeyValue<VmRecord> | null,
  verb: ReturnType<typeof verbOf>,
): Promise<KeyValue<VmRecord> | null> {
  for (let i = 0; i < 50; i++) {
    const next: TaskRecord = { ...rt.task, status: "running" };
    const vm = vmKv?.value;
    const mine = vm && vm.active_task_id === rt.task.id;
    const busy = busyStatusOf(verb);
    const nextVm: VmRecord | null = mine
      ? {
        ...vm,
        status: busy ?? vm.status,
        last_task: lastTaskOf(next),
        updated_at: rt.ctx.now().toISOString(),
      }
      : null;
    const ok = await rt.update(next, {
      compare: vmKv ? [{ key: vmKv.key, modRevision: vmKv.modRevision }] : [],
      ops: nextVm ? [{ type: "put", key: vmKv!.key, value: nextVm }] : [],
    });
    if (ok) return await readVm(rt);
    vmKv = await readVm(rt);
  }
  throw new Error("too many concurrent VM updates");
}

/** Sends the task to the agent; "gone" when a delete finds no such VM. */
async function dispatch(
  rt: TaskRuntime,
  target: AgentTarget,
  vm: VmRecord | null,
  deadline: number,
): Promise<AgentTask | "gone"> {
  const { ctx, task } = rt;
  const unreachableMs = ctx.cfg.workers.agent_unreachable_timeout_seconds * 1000;
  const firstTry = ctx.now().getTime();
  for (let attempt = 0;; attempt++) {
    if (rt.cancelled.aborted && task.type !== "vm.delete") throw new Cancelled();
    try {
      if (task.type === "vm.delete") {
        return (await ctx.agents.deleteVm(target, task.resource.id, task.id, rt.signal)) ??
          "gone";
      }
      if (!vm) throw new TaskFailure({ code: catchAll(task.type), message: "no VM record" });
      if (task.type === "vm.create") {
        const nics = await agentNicsOf(ctx, vm); // NICs: shared/api/network_agent.ts
        return await ctx.agents.createVm(target, {
          ...(nics.length ? { nics } : {}),
          task_id: task.id,
          vm: {
            id: vm.id,
            name: vm.name,
            image_url: vm.image_url,
            ...(vm.image_sha256 ? { image_sha256: vm.image_sha256 } : {}),
            architecture: vm.architecture,
            vcpus: vm.vcpus,
            memory_mb: vm.memory_mb,
            disk_gib: vm.disk_gib,
            ...(vm.user_data !== null ? { user_data: vm.user_data } : {}),
          },
          pool: { name: vm.pool, path: vm.pool_path },
        }, rt.signal);
      }
      const action = verbOf(task.type) as VmAction;
      const req: AgentVmActionRequest = {
        task_id: task.id,
        action,
        ...(task.params.timeout_seconds !== undefined
          ? { timeout_seconds: task.params.timeout_seconds }
          : {}),
        ...(action === "start" && vm.desired_phase === "paused" ? { paused: true } : {}),
      };
      return await ctx.agents.vmAction(target, vm.id, req, rt.signal);
    } catch (e) {
      if (rt.signal.aborted) throw new ClaimLostError(task.id);
      if (!(e instanceof AgentError)) throw e;
      if (e.kind === "api") {
        throw new TaskFailure(e.info ?? { code: catchAll(task.type), message: e.message });
      }
      const now = ctx.now().getTime();
      if (now - firstTry >= unreachableMs || now > deadline) {
        throw new TaskFailure({
          code: "agent_unreachable",
          message: `agent of node ${target.name} at ${target.endpoint} unreachable for ` +
            `${ctx.cfg.workers.agent_unreachable_timeout_seconds}s: ${e.message}`,
        });
      }
      rt.log.debug("agent unreachable; retrying dispatch", { err: e.message, attempt });
      await delay(Math.min(1000, 100 * 2 ** attempt), rt);
    }
  }
}

/** Waits `ms`, or less when the task is cancelled; throws when the claim is lost. */
function delay(ms: number, rt: TaskRuntime, wake?: (w: () => void) => void): Promise<void> {
  return new Promise((resolve, reject) => {
    const done = () => {
      clearTimeout(t);
      rt.signal.removeEventListener("abort", onAbort);
      rt.cancelled.removeEventListener("abort", done);
      resolve();
    };
    const onAbort = () => {
      clearTimeout(t);
      rt.cancelled.removeEventListener("abort", done);
      reject(new ClaimLostError(rt.task.id));
    };
    const t = setTimeout(done, ms);
    if (rt.signal.aborted) return onAbort();
    rt.signal.addEventListener("abort", onAbort, { once: true });
    rt.cancelled.addEventListener("abort", done, { once: true });
    wake?.(done);
  });
}

/**
 * Waits for the agent task to end: woken by the reports recorded under `/agent-tasks/<id>`,
 * with a fallback poll of the agent. Returns null when the agent lost the task (re-dispatch).
 */
async function waitAgentTask(
  rt: TaskRuntime,
  target: AgentTarget,
  deadline: number,
): Promise<AgentTask | null> {
  const { ctx, task } = rt;
  const key = keys.agentTask(task.id);
  let wake: (() => void) | null = null;
  const rev = await ctx.store.currentRevision();
  const cancel = ctx.store.watch(key, () => wake?.(), { fromRevision: rev });
  const unreachableMs = ctx.cfg.workers.agent_unreachable_timeout_seconds * 1000;
  let lastContact = ctx.now().getTime();
  let nextPoll = lastContact + ctx.cfg.workers.poll_interval_ms;
  try {
    for (;;) {
      if (rt.cancelled.aborted && task.type !== "vm.delete") throw new Cancelled();
      const seen = (await ctx.store.get<AgentTask>(key))?.value;
      if (seen && isTerminal(seen.status)) return seen;
      if (seen?.progress) {
        // Unchanged figures are not written; byte figures are throttled (rt.progress).
        await rt.progress(seen.progress, seen.progress_bytes ?? null);
      }
      const now = ctx.now().getTime();
      if (now > deadline) {
        throw new TaskFailure({
          code: catchAll(task.type),
          message: `timed out after ${ctx.cfg.workers.task_timeout_seconds}s waiting for the agent`,
        });
      }
      if (now >= nextPoll) {
        nextPoll = now + ctx.cfg.workers.poll_interval_ms;
        try {
          const at = await ctx.agents.getTask(target, task.id, rt.signal);
          lastContact = ctx.now().getTime();
          if (at === null) {
            rt.log.warn("agent lost the task; re-dispatching", { endpoint: target.endpoint });
            return null;
          }
          if (isTerminal(at.status)) return at;
        } catch (e) {
          if (rt.signal.aborted) throw new ClaimLostError(task.id);
          if (!(e instanceof AgentError)) throw e;
          if (e.kind === "api") {
            throw new TaskFailure(e.info ?? { code: catchAll(task.type), message: e.message });
          }
          if (ctx.now().getTime() - lastContact >= unreachableMs) {
            throw new TaskFailure({
              code: "agent_unreachable",
              message: `agent of node ${target.name} at ${target.endpoint} unreachable for ` +
                `${ctx.cfg.workers.agent_unreachable_timeout_seconds}s: ${e.message}`,
            });
          }
          nextPoll = ctx.now().getTime() + Math.min(1000, ctx.cfg.workers.poll_interval_ms);
        }
      }
      await delay(Math.max(1, nextPoll - ctx.now().getTime()), rt, (w) => (wake = w));
      wake = null;
    }
  } finally {
    cancel();
  }
}

/** Waits until task `id` is terminal (or gone); cancellation does not apply. */
async function waitTaskEnded(rt: TaskRuntime, id: string): Promise<void> {
  const { ctx } = rt;
  let wake: (() => void) | null = null;
  const rev = await ctx.store.currentRevision();
  const cancel = ctx.store.watch(keys.task(id), () => wake?.(), { fromRevision: rev });
  try {
    for (;;) {
      const t = (await ctx.store.get<TaskRecord>(keys.task(id)))?.value;
      if (!t || isTerminal(t.status)) return;
      // (A vm.delete is never cancelled itself, so only the claim can cut this wait short.)
      await delay(ctx.cfg.workers.poll_interval_ms, rt, (w) => (wake = w));
      wake = null;
    }
  } finally {
    cancel();
  }
}

/**
 * Finishes the task and projects it onto the VM in one transaction (CAS on the VM, retried).
 * `agentTask`: the agent's terminal task (null when the agent was not involved).
 */
async function finishProjected(
  rt: TaskRuntime,
  error: ErrorInfo | null,
  agentTask: AgentTask | null,
): Promise<void> {
  const type = rt.task.type;
  for (let i = 0; i < 50; i++) {
    const vmKv = await readVm(rt);
    if (!vmKv) {
      if (await rt.finish(error)) return;
      continue;
    }
    const vm = vmKv.value;
    const mine = vm.active_task_id === rt.task.id;
    const now = rt.ctx.now().toISOString();
    const done = { ...rt.task, status: error ? "failed" : "succeeded", error } as TaskRecord;
    let next: VmRecord | null = { ...vm, updated_at: now };
    if (mine) {
      next.active_task_id = null;
      next.last_task = lastTaskOf(done);
      next.error = error;
      if (type === "vm.delete" && !error) {
        next = null;
      } else if (error) {
        if (type === "vm.create" || type === "vm.delete") next.status = "failed";
        else {
          // The verb failed: show what the agent last observed, not the busy status.
          const seen = await observedVm(rt.ctx, vm.node, vm.id);
          const busy = ["starting", "stopping"].includes(vm.status);
          next.status = (seen && statusOfPhase(seen.phase)) ?? (busy ? "unknown" : vm.status);
        }
      } else {
        const phase = agentTask?.result?.phase;
        next.status = (phase && statusOfPhase(phase)) ??
          (type === "vm.create" ? "running" : "unknown");
        if (type === "vm.create") {
          next.image = agentTask?.result?.image ?? vm.image;
          next.image_format = agentTask?.result?.image_format ?? vm.image_format;
        }
      }
    } else if (error?.code === "task_cancelled" || vm.desired_phase === "deleted") {
      // Superseded by a delete: the VM is the delete's now.
      next = null;
    } else {
      next = null;
    }
    const deleting = next === null && mine && type === "vm.delete" && !error;
    // The record goes: so does what it holds in its node's allocation (same transaction).
    const release = deleting
      ? releaseWrite(await readAllocation(rt.ctx, vm.node), vm, now)
      : { compare: [], ops: [] };
    // …and its NICs' addresses and MACs (cp/networks/ipam.ts).
    const nics = deleting ? await releaseNicsWrite(rt.ctx, vm) : { compare: [], ops: [] };
    const ok = await rt.finish(error, {
      compare: [
        { key: vmKv.key, modRevision: vmKv.modRevision },
        ...release.compare,
        ...nics.compare,
      ],
      ops: next === null
        ? (deleting ? [{ type: "delete", key: vmKv.key }, ...release.ops, ...nics.ops] : [])
        : [{ type: "put", key: vmKv.key, value: next }],
    });
    if (ok) return;
  }
  throw new Error("too many concurrent VM updates");
}
