/**
 * Agent-side tasks (shared/api/agent.ts): keyed by the control plane's task id, so a retried
 * dispatch finds the same task. Tasks live in memory only; after an agent restart
 * `GET /v1/tasks/{id}` answers 404 `task_not_found` and the control plane re-dispatches
 * (both operations are idempotent by VM id).
 *
 * Failures carry catalogue codes (spec: troubleshooting): `download_failed`,
 * `checksum_mismatch`, `image_unavailable`, `qemu_spawn_failed`, `path_not_allowed`,
 * `validation_failed`, and `vm_create_failed` / `vm_delete_failed` for anything else.
 *
 * @module
 */
import { ApiError } from "../shared/errors.ts";
import type { AgentTask, AgentVmCreateRequest } from "../shared/api/agent.ts";
import type { Logger } from "../shared/log.ts";
import type { VmManager } from "./vms.ts";

/** Terminal tasks kept for polling; the oldest are dropped beyond this. */
export const MAX_RETAINED_TASKS = 1000;

interface Entry {
  task: AgentTask;
  done: Promise<void>;
}

/** Runs and remembers agent tasks. */
export class TaskManager {
  #tasks = new Map<string, Entry>();
  #vms: VmManager;
  #log: Logger;

  constructor(vms: VmManager, log: Logger) {
    this.#vms = vms;
    this.#log = log;
  }

  /**
   * Starts a `vm.create` task, or returns the existing task with the same id.
   *
   * @throws ApiError `conflict` when the id belongs to a different operation or VM
   */
  submitCreate(req: AgentVmCreateRequest): AgentTask {
    return this.#submit(req.task_id, "vm.create", req.vm.id, async (task) => {
      task.result = await this.#vms.create(req, (p) => (task.progress = p));
      task.progress = "running";
    });
  }

  /**
   * Starts a `vm.delete` task, or returns the existing task with the same id.
   *
   * @throws ApiError `conflict` when the id belongs to a different operation or VM
   */
  submitDelete(vmId: string, taskId: string): AgentTask {
    return this.#submit(taskId, "vm.delete", vmId, async (task) => {
      await this.#vms.delete(vmId, (p) => (task.progress = p));
      task.progress = "deleted";
    });
  }

  /** A snapshot of task `id`, if known. */
  get(id: string): AgentTask | undefined {
    const e = this.#tasks.get(id);
    return e ? structuredClone(e.task) : undefined;
  }

  /** Resolves with the task once it is terminal (for tests and shutdown). */
  async wait(id: string): Promise<AgentTask | undefined> {
    await this.#tasks.get(id)?.done;
    return this.get(id);
  }

  #submit(
    id: string,
    op: AgentTask["op"],
    vmId: string,
    work: (task: AgentTask) => Promise<void>,
  ): AgentTask {
    const existing = this.#tasks.get(id);
    if (existing) {
      if (existing.task.op !== op || existing.task.vm_id !== vmId) {
        throw new ApiError(
          "conflict",
          `task ${id} already exists for ${existing.task.op} of vm ${existing.task.vm_id}`,
        );
      }
      return structuredClone(existing.task);
    }
    const task: AgentTask = {
      id,
      op,
      vm_id: vmId,
      status: "pending",
      error: null,
      progress: null,
      result: null,
    };
    const log = this.#log.with({ task_id: id, op, vm_id: vmId });
    const done = (async () => {
      await Promise.resolve();
      task.status = "running";
      log.info("task: started");
      try {
        await work(task);
        task.status = "succeeded";
        log.info("task: succeeded");
      } catch (e) {
        const fallback = op === "vm.create" ? "vm_create_failed" : "vm_delete_failed";
        task.error = e instanceof ApiError
          ? e.toInfo()
          : { code: fallback, message: e instanceof Error ? e.message : String(e) };
        task.status = "failed";
        log.warn("task: failed", { code: task.error.code, err: task.error.message });
      }
    })();
    this.#tasks.set(id, { task, done });
    this.#prune();
    return structuredClone(task);
  }

  #prune(): void {
    if (this.#tasks.size <= MAX_RETAINED_TASKS) return;
    for (const [id, e] of this.#tasks) {
      if (this.#tasks.size <= MAX_RETAINED_TASKS) break;
      if (e.task.status === "succeeded" || e.task.status === "failed") this.#tasks.delete(id);
    }
  }
}
