/**
 * The task worker (`workers.enabled`): runs `vm.create` / `vm.delete` tasks by dispatching
 * them to the VM's node agent over mTLS and polling the agent task until it is terminal
 * (spec: "Behind the scenes: handler enqueues vm.create task → worker … → CP polls → CP
 * projects …").
 *
 * Per task:
 * - `pending`: the node must be `ready` with an endpoint, else the task fails with
 *   `node_not_ready`. The task becomes `running` (VM `creating` / `deleting`) and is
 *   dispatched: `POST {endpoint}/v1/vms` or `DELETE {endpoint}/v1/vms/{id}?task_id=`.
 * - `running` (also after a restart): poll `GET {endpoint}/v1/tasks/{id}` every
 *   `workers.poll_interval_ms`; a 404 means the agent lost the task (restart) and the task is
 *   re-dispatched (both operations are idempotent by VM id).
 * - Connection errors are retried until the agent has been unreachable for
 *   `workers.agent_unreachable_timeout_seconds` → `agent_unreachable`. An agent error
 *   response fails the task with the agent's code verbatim. The whole task is bounded by
 *   `workers.task_timeout_seconds` (→ `vm_create_failed` / `vm_delete_failed`).
 * - Projection onto the VM: create succeeded → `running`; create failed → `failed` + error;
 *   delete succeeded → the VM record is removed; delete failed → `failed` + error.
 *
 * @module
 */
import type { AgentTask } from "../../shared/api/agent.ts";
import { isTerminal } from "../../shared/api/tasks.ts";
import type { ErrorInfo } from "../../shared/errors.ts";
import { AgentError, type AgentTarget } from "../agent_client.ts";
import type { CpContext } from "../context.ts";
import { findNode } from "../nodes.ts";
import { keys, type TaskRecord, type VmRecord } from "../repo/records.ts";
import { type Op, rangeAll } from "../store/store.ts";
import { findTask, finishOps, terminal } from "./queue.ts";

/** A running worker. */
export interface Worker {
  /** Stops picking tasks and waits for in-flight runners to pause (they resume on restart). */
  stop(): Promise<void>;
  /** Resolves when no task is being run (for tests). */
  idle(): Promise<void>;
}

class Stopped extends Error {}

/** Longest pause before re-running a task whose runner failed unexpectedly, milliseconds. */
export const RUNNER_RETRY_MAX_MS = 60_000;

/**
 * Starts the worker: runs every queued task and watches the queue for new ones. A runner that
 * fails unexpectedly (not an agent error: those fail the task) is re-run after a backoff of
 * `workers.poll_interval_ms` doubling up to {@link RUNNER_RETRY_MAX_MS}.
 */
export function startWorker(ctx: CpContext): Worker {
  const running = new Map<string, Promise<void>>();
  const retries = new Map<string, ReturnType<typeof setTimeout>>();
  const abort = new AbortController();
  const log = ctx.log.with({ component_part: "worker" });

  const launch = (id: string, failures = 0) => {
    if (abort.signal.aborted || running.has(id)) return;
    const p = runTask(ctx, id, abort.signal)
      .catch((e) => {
        if (e instanceof Stopped || abort.signal.aborted) return;
        // An unexpected failure (e.g. a store error) must not strand the task until the next
        // restart: run it again after a backoff; its deadline still bounds it.
        const delay = Math.min(
          RUNNER_RETRY_MAX_MS,
          ctx.cfg.workers.poll_interval_ms * 2 ** failures,
        );
        log.error("task runner failed; retrying", { task_id: id, err: e, retry_in_ms: delay });
        const timer = setTimeout(() => {
          retries.delete(id);
          launch(id, failures + 1);
        }, delay);
        retries.set(id, timer);
      })
      .finally(() => running.delete(id));
    running.set(id, p);
  };

  const cancelWatch = ctx.store.watch(keys.activeTasks, (ev) => {
    if (ev.type === "put") launch(ev.key.slice(keys.activeTasks.length));
  });
  void (async () => {
    try {
      const queued = await rangeAll(ctx.store, keys.activeTasks);
      if (queued.length) log.info("resuming queued tasks", { count: queued.length });
      for (const kv of queued) launch(kv.key.slice(keys.activeTasks.length));
    } catch (e) {
      log.error("cannot read the task queue", { err: e });
    }
  })();

  return {
    async stop() {
      cancelWatch();
      abort.abort();
      for (const timer of retries.values()) clearTimeout(timer);
      retries.clear();
      await Promise.allSettled([...running.values()]);
    },
    async idle() {
      while (running.size) await Promise.allSettled([...running.values()]);
    },
  };
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal.aborted) return reject(new Stopped());
    const t = setTimeout(() => {
      signal.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(t);
      reject(new Stopped());
    };
    signal.addEventListener("abort", onAbort, { once: true });
  });
}

const catchAll = (
  t: TaskRecord,
) => (t.type === "vm.create" ? "vm_create_failed" : "vm_delete_failed");

/** Runs one task to completion (or until `signal` aborts). */
export async function runTask(ctx: CpContext, taskId: string, signal: AbortSignal): Promise<void> {
  const { store, cfg } = ctx;
  const log = ctx.log.with({ task_id: taskId });
  let task = await findTask(store, taskId);
  if (!task) {
    await store.delete(keys.activeTask(taskId));
    return;
  }
  if (isTerminal(task.status)) {
    await store.delete(keys.activeTask(taskId));
    return;
  }
  const vmKv = await store.get<VmRecord>(keys.vm(task.resource.name));
  if (!vmKv || vmKv.value.id !== task.resource.id) {
    if (task.type === "vm.delete") {
      await finish(ctx, task, null, null);
    } else {
      await finish(ctx, task, {
        code: "vm_create_failed",
        message: "the VM record no longer exists",
      }, null);
    }
    return;
  }
  let vm = vmKv.value;
  let needDispatch = task.status === "pending";
  if (task.status === "pending") {
    const node = await findNode(ctx, vm.node);
    if (!node || node.status !== "ready" || !node.endpoint) {
      const why = !node
        ? "is not registered"
        : !node.endpoint
        ? "has no endpoint"
        : `is ${node.status}`;
      await finish(ctx, task, {
        code: "node_not_ready",
        message: `node ${vm.node} ${why} at dispatch`,
        details: { node: vm.node, status: node?.status ?? null },
      }, vm);
      return;
    }
    const now = ctx.now().toISOString();
    task = { ...task, status: "running", started_at: now, updated_at: now };
    vm = {
      ...vm,
      status: task.type === "vm.create" ? "creating" : "deleting",
      last_task_id: task.id,
      updated_at: now,
    };
    const res = await store.txn({
      compare: [{ key: keys.vm(vm.name), modRevision: vmKv.modRevision }],
      success: [
        { type: "put", key: keys.task(task.id), value: task },
        { type: "put", key: keys.vm(vm.name), value: vm },
      ],
    });
    if (!res.succeeded) {
      // The VM changed under us (e.g. a heartbeat projection); retry from the top.
      return await runTask(ctx, taskId, signal);
    }
    log.info("task running", { type: task.type, vm: vm.name, node: vm.node });
  }

  const started = Date.parse(task.started_at ?? task.created_at);
  const deadline = started + cfg.workers.task_timeout_seconds * 1000;
  const unreachableMs = cfg.workers.agent_unreachable_timeout_seconds * 1000;
  let lastContact = ctx.now().getTime();
  let lastError = "";
  let first = true;
  for (;;) {
    if (!first) await sleep(cfg.workers.poll_interval_ms, signal);
    first = false;
    const nowMs = ctx.now().getTime();
    if (nowMs > deadline) {
      await finish(ctx, task, {
        code: catchAll(task),
        message: `timed out after ${cfg.workers.task_timeout_seconds}s waiting for the agent` +
          (lastError ? ` (last error: ${lastError})` : ""),
      }, vm);
      return;
    }
    const node = await findNode(ctx, vm.node);
    if (!node?.endpoint) {
      await finish(ctx, task, {
        code: "node_not_ready",
        message: `node ${vm.node} is no longer registered or has no endpoint`,
      }, vm);
      return;
    }
    let at: AgentTask | null;
    try {
      if (needDispatch) {
        at = await dispatch(ctx, task, vm, { name: node.name, endpoint: node.endpoint }, signal);
        needDispatch = false;
        lastContact = ctx.now().getTime();
        if (at === null) {
          // delete of a VM the agent does not know: already gone.
          await finish(ctx, task, null, vm, null);
          return;
        }
        log.info("task dispatched", { endpoint: node.endpoint, agent_status: at.status });
      } else {
        at = await ctx.agents.getTask(
          { name: node.name, endpoint: node.endpoint },
          task.id,
          signal,
        );
        lastContact = ctx.now().getTime();
        if (at === null) {
          log.warn("agent lost the task; re-dispatching", { endpoint: node.endpoint });
          needDispatch = true;
          continue;
        }
      }
    } catch (e) {
      if (signal.aborted) throw new Stopped();
      if (!(e instanceof AgentError)) throw e;
      if (e.kind === "unreachable") {
        lastError = e.message;
        if (ctx.now().getTime() - lastContact >= unreachableMs) {
          await finish(ctx, task, {
            code: "agent_unreachable",
            message: `agent of node ${vm.node} at ${node.endpoint} unreachable for ` +
              `${cfg.workers.agent_unreachable_timeout_seconds}s: ${e.message}`,
          }, vm);
          return;
        }
        log.debug("agent unreachable; retrying", { err: e.message });
        continue;
      }
      await finish(ctx, task, e.info ?? { code: catchAll(task), message: e.message }, vm);
      return;
    }
    if (at.status === "succeeded") {
      await finish(ctx, task, null, vm, at);
      return;
    }
    if (at.status === "failed") {
      await finish(
        ctx,
        task,
        at.error ?? { code: catchAll(task), message: "agent task failed" },
        vm,
      );
      return;
    }
  }
}

function dispatch(
  ctx: CpContext,
  task: TaskRecord,
  vm: VmRecord,
  agent: AgentTarget,
  signal: AbortSignal,
): Promise<AgentTask | null> {
  if (task.type === "vm.delete") return ctx.agents.deleteVm(agent, vm.id, task.id, signal);
  return ctx.agents.createVm(agent, {
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
  }, signal);
}

/**
 * Stores the terminal task and projects it onto the VM, atomically (CAS on the VM, retried).
 * `vm` null: there is no VM to project onto.
 */
async function finish(
  ctx: CpContext,
  task: TaskRecord,
  error: ErrorInfo | null,
  vm: VmRecord | null,
  agentTask: AgentTask | null = null,
): Promise<void> {
  const done = terminal(task, error, ctx.now());
  const log = ctx.log.with({ task_id: task.id });
  for (let attempt = 0; attempt < 50; attempt++) {
    const cur = vm ? await ctx.store.get<VmRecord>(keys.vm(vm.name)) : null;
    const ops: Op[] = [...finishOps(done)];
    if (cur && cur.value.id === task.resource.id) {
      const ts = done.updated_at;
      if (task.type === "vm.delete" && !error) {
        ops.push({ type: "delete", key: cur.key });
      } else {
        const next: VmRecord = {
          ...cur.value,
          status: error ? "failed" : "running",
          error,
          last_task_id: task.id,
          image: agentTask?.result?.image ?? cur.value.image,
          updated_at: ts,
        };
        ops.push({ type: "put", key: cur.key, value: next });
      }
    }
    const res = await ctx.store.txn({
      compare: cur ? [{ key: cur.key, modRevision: cur.modRevision }] : [],
      success: ops,
    });
    if (res.succeeded) {
      if (error) {
        log.warn("task failed", {
          type: task.type,
          vm: task.resource.name,
          code: error.code,
          message: error.message,
        });
      } else log.info("task succeeded", { type: task.type, vm: task.resource.name });
      return;
    }
  }
  throw new Error(`task ${task.id}: could not record the result`);
}
