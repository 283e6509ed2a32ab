/**
 * Agent-side tasks (shared/api/agent.ts `AgentTaskSchema`): keyed by the control plane's task
 * id, so a retried dispatch finds the same task. Tasks live in memory only; after an agent
 * restart `GET /v1/tasks/{id}` answers 404 `task_not_found` and the control plane
 * re-dispatches (every operation is idempotent by VM id).
 *
 * Each task records `timings`: milliseconds after the agent accepted it at which each step
 * completed (`vm.create`: `image`, `overlay`, `seed`, `spawn`, `qmp_ready`; verbs:
 * `qmp_command` when the QMP command was issued, `done`; start also `spawn`, `qmp_ready`).
 *
 * Failures carry catalogue codes (spec: troubleshooting): `download_failed`,
 * `checksum_mismatch`, `image_unavailable`, `qemu_spawn_failed`, `path_not_allowed`,
 * `validation_failed`, `vm_invalid_state`, `task_cancelled` (deleted meanwhile), and
 * `vm_create_failed` / `vm_delete_failed` / `vm_action_failed` for anything else.
 *
 * Progress is a text and, during an image download, `progress_bytes` (done/total bytes,
 * throttled by agent/vms.ts); a step without byte figures clears them.
 *
 * Every change of a task (accepted, running, progress, terminal) is announced to
 * {@link TaskManager.subscribe} listeners (the report pusher, agent/report.ts).
 *
 * @module
 */
import { ApiError, type ErrorCode } from "../shared/errors.ts";
import {
  type AgentTask,
  type AgentVmActionRequest,
  type AgentVmCreateRequest,
  MAX_REPORTED_TASKS,
} from "../shared/api/agent.ts";
import { actionTaskType, isTerminal } from "../shared/api/tasks.ts";
import type { Logger } from "../shared/log.ts";
import { sameProgress } from "../shared/progress_throttle.ts";
import type { OpHooks, VmManager } from "./vms.ts";

/** Terminal tasks kept for polling; the oldest are dropped beyond this. */
export const MAX_RETAINED_TASKS = 1000;

/** How long an ended task still rides along with heartbeats, ms (10 minutes). */
export const RECENT_TASK_WINDOW_MS = 10 * 60 * 1000;

/** A task change: the task's snapshot and its change counter (for acknowledgements). */
export type TaskListener = (task: AgentTask, version: number) => void;

interface Entry {
  task: AgentTask;
  /** Monotonic ms when accepted. */
  acceptedAt: number;
  /** Monotonic ms when it became terminal. */
  endedAt: number | null;
  /** Bumped on every change. */
  version: number;
  done: Promise<void>;
}

/** Options of {@link TaskManager}. */
export interface TaskManagerOptions {
  /** Monotonic clock, ms (default `performance.now`); tests inject one. */
  clock?: () => number;
}

/** Runs and remembers agent tasks. */
export class TaskManager {
  #tasks = new Map<string, Entry>();
  #listeners = new Set<TaskListener>();
  #vms: VmManager;
  #log: Logger;
  #clock: () => number;

  constructor(vms: VmManager, log: Logger, opts: TaskManagerOptions = {}) {
    this.#vms = vms;
    this.#log = log;
    this.#clock = opts.clock ?? (() => performance.now());
  }

  /**
   * Starts a `vm.create` task, or returns the existing task with the same id.
   *
   * @throws ApiError `conflict` when the id belongs to a different operation or VM
   */
  submitCreate(req: AgentVmCreateRequest): AgentTask {
    return this.#submit(req.task_id, "vm.create", req.vm.id, async (hooks) => {
      const result = await this.#vms.create(req, hooks);
      hooks.progress("running");
      return result;
    });
  }

  /**
   * Starts a `vm.delete` task, or returns the existing task with the same id. The delete
   * aborts whatever runs on the VM first (agent/vms.ts).
   *
   * @throws ApiError `conflict` when the id belongs to a different operation or VM
   */
  submitDelete(vmId: string, taskId: string): AgentTask {
    return this.#submit(taskId, "vm.delete", vmId, async (hooks) => {
      await this.#vms.delete(vmId, hooks);
      hooks.progress("deleted");
      return null;
    });
  }

  /**
   * Starts a `vm.<action>` task, or returns the existing task with the same id. Refuses at
   * once, creating no task, what the VM's current phase evidently does not allow.
   *
   * @throws ApiError `conflict` (the id belongs to a different operation or VM),
   *   `vm_not_found`, `vm_invalid_state` (`details: {phase, action}`)
   */
  submitAction(vmId: string, req: AgentVmActionRequest): AgentTask {
    const op = actionTaskType(req.action);
    const known = this.#tasks.get(req.task_id);
    if (!known) this.#vms.checkAction(vmId, req.action);
    return this.#submit(req.task_id, op, vmId, async (hooks) => {
      const result = await this.#vms.action(vmId, req, hooks);
      hooks.mark("done");
      return result;
    });
  }

  /** A snapshot of task `id`, if known. */
  get(id: string): AgentTask | undefined {
    const e = this.#tasks.get(id);
    return e ? structuredClone(e.task) : undefined;
  }

  /** The change counter of task `id` (0 when unknown). */
  version(id: string): number {
    return this.#tasks.get(id)?.version ?? 0;
  }

  /** Resolves with the task once it is terminal (for tests and shutdown). */
  async wait(id: string): Promise<AgentTask | undefined> {
    await this.#tasks.get(id)?.done;
    return this.get(id);
  }

  /**
   * What heartbeats carry: tasks in flight and those that ended in the last
   * {@link RECENT_TASK_WINDOW_MS}, oldest first, at most `MAX_REPORTED_TASKS` (the newest).
   */
  recent(): AgentTask[] {
    const now = this.#clock();
    const out: AgentTask[] = [];
    for (const e of this.#tasks.values()) {
      if (e.endedAt === null || now - e.endedAt <= RECENT_TASK_WINDOW_MS) {
        out.push(structuredClone(e.task));
      }
    }
    return out.slice(-MAX_REPORTED_TASKS);
  }

  /**
   * Calls `listener(task, version)` synchronously on every change of any task.
   *
   * @returns a function that unsubscribes
   */
  subscribe(listener: TaskListener): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  #changed(e: Entry, touch = true): void {
    e.version++;
    if (touch) e.task.updated_at = new Date().toISOString();
    const snap = structuredClone(e.task);
    for (const l of [...this.#listeners]) {
      try {
        l(snap, e.version);
      } catch (err) {
        this.#log.warn("task: change listener failed", { err: String(err) });
      }
    }
  }

  #submit(
    id: string,
    op: AgentTask["op"],
    vmId: string,
    work: (hooks: Required<OpHooks>) => Promise<AgentTask["result"]>,
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
    const now = new Date().toISOString();
    const task: AgentTask = {
      id,
      op,
      vm_id: vmId,
      status: "pending",
      error: null,
      progress: null,
      progress_bytes: null,
      result: null,
      timings: {},
      created_at: now,
      updated_at: now,
    };
    const entry: Entry = {
      task,
      acceptedAt: this.#clock(),
      endedAt: null,
      version: 0,
      done: Promise.resolve(),
    };
    const hooks: Required<OpHooks> = {
      progress: (p, bytes = null) => {
        if (isTerminal(task.status)) return;
        if (task.progress === p && sameProgress(task.progress_bytes ?? null, bytes)) return;
        task.progress = p;
        task.progress_bytes = bytes && { ...bytes };
        this.#changed(entry);
      },
      mark: (step) => {
        task.timings[step] = Math.max(0, Math.round(this.#clock() - entry.acceptedAt));
      },
    };
    const log = this.#log.with({ task_id: id, op, vm_id: vmId });
    entry.done = (async () => {
      await Promise.resolve();
      task.status = "running";
      this.#changed(entry);
      log.info("task: started");
      try {
        const result = await work(hooks);
        task.result = result;
        task.status = "succeeded";
        log.info("task: succeeded", { timings: task.timings });
      } catch (e) {
        task.error = e instanceof ApiError
          ? e.toInfo()
          : { code: fallbackCode(op), message: e instanceof Error ? e.message : String(e) };
        task.status = "failed";
        log.warn("task: failed", { code: task.error.code, err: task.error.message });
      }
      task.progress_bytes = null; // byte figures describe a step in progress
      entry.endedAt = this.#clock();
      this.#changed(entry);
    })();
    this.#tasks.set(id, entry);
    this.#changed(entry, false); // accepted: updated_at = created_at
    this.#prune();
    return structuredClone(task);
  }

  #prune(): void {
    if (this.#tasks.size <= MAX_RETAINED_TASKS) return;
    for (const [id, e] of this.#tasks) {
      if (this.#tasks.size <= MAX_RETAINED_TASKS) break;
      if (isTerminal(e.task.status)) this.#tasks.delete(id);
    }
  }
}

function fallbackCode(op: AgentTask["op"]): ErrorCode {
  if (op === "vm.create") return "vm_create_failed";
  if (op === "vm.delete") return "vm_delete_failed";
  return "vm_action_failed";
}
