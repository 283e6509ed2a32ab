/**
 * Task records and the persistent task queue. A task is written together with the change
 * that caused it (one store transaction) and indexed under `/tasks-active/<id>` until it is
 * terminal; workers claim tasks from that index (cp/tasks/worker.ts), on start too, so tasks
 * resume after a restart or after their worker died.
 *
 * @module
 */
import type { Task, TaskResource, TaskType } from "../../shared/api/tasks.ts";
import { ApiError, type ErrorInfo } from "../../shared/errors.ts";
import { keys, type TaskParams, type TaskRecord } from "../repo/records.ts";
import type { Op, Store } from "../store/store.ts";

/** What a new task records besides its type and resource. */
export interface NewTaskOptions {
  /** Why the system created it (`restart_policy: crashed`, …); omitted for user requests. */
  reason?: string | null;
  params?: TaskParams;
}

/** A new `pending` task acting on the VM `vm`. */
export function newTask(
  type: TaskType,
  vm: { name: string; id: string },
  now: Date,
  opts: NewTaskOptions = {},
): TaskRecord {
  const ts = now.toISOString();
  const resource: TaskResource = { kind: "vm", name: vm.name, id: vm.id };
  return {
    id: crypto.randomUUID(),
    type,
    status: "pending",
    resource,
    reason: opts.reason ?? null,
    attempts: 0,
    progress: null,
    progress_bytes: null,
    error: null,
    created_at: ts,
    updated_at: ts,
    started_at: null,
    finished_at: null,
    params: opts.params ?? {},
    cancel_requested: false,
  };
}

/** Ops that persist a new task and enqueue it. */
export function enqueueOps(task: TaskRecord): Op[] {
  return [
    { type: "put", key: keys.task(task.id), value: task },
    { type: "put", key: keys.activeTask(task.id), value: { vm: task.resource.name } },
  ];
}

/** Ops that store a terminal task, dequeue it and drop its claim and agent view. */
export function finishOps(task: TaskRecord): Op[] {
  return [
    { type: "put", key: keys.task(task.id), value: task },
    { type: "delete", key: keys.activeTask(task.id) },
    { type: "delete", key: keys.taskClaim(task.id) },
    { type: "delete", key: keys.agentTask(task.id) },
  ];
}

/** The public view of a task. */
export function taskView(t: TaskRecord): Task {
  return {
    id: t.id,
    type: t.type,
    status: t.status,
    resource: t.resource,
    reason: t.reason,
    attempts: t.attempts,
    progress: t.progress,
    progress_bytes: t.progress_bytes ?? null,
    error: t.error,
    created_at: t.created_at,
    updated_at: t.updated_at,
    started_at: t.started_at,
    finished_at: t.finished_at,
  };
}

/** Reads a task; null when absent. */
export async function findTask(store: Store, id: string): Promise<TaskRecord | null> {
  return (await store.get<TaskRecord>(keys.task(id)))?.value ?? null;
}

/** Reads a task. @throws ApiError `task_not_found` */
export async function getTask(store: Store, id: string): Promise<TaskRecord> {
  const t = await findTask(store, id);
  if (!t) throw new ApiError("task_not_found", `task ${id} not found`);
  return t;
}

/** A terminal copy of `task`: `failed` with `error`, else `succeeded`. */
export function terminal(task: TaskRecord, error: ErrorInfo | null, now: Date): TaskRecord {
  const ts = now.toISOString();
  return {
    ...task,
    status: error ? "failed" : "succeeded",
    error,
    progress: error ? task.progress : null,
    progress_bytes: null,
    updated_at: ts,
    finished_at: ts,
  };
}
