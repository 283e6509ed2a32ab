/**
 * Task records and the persistent task queue. A task is written together with the change
 * that caused it (one store transaction), and indexed under `/tasks-active/<id>` until it is
 * terminal; workers pick tasks from that index (on start too, so tasks resume after a
 * restart).
 *
 * @module
 */
import type { Task, TaskType } from "../../shared/api/tasks.ts";
import { ApiError, type ErrorInfo } from "../../shared/errors.ts";
import { keys, type TaskRecord } from "../repo/records.ts";
import type { Op, Store } from "../store/store.ts";

/** A new `pending` task acting on the VM `vm`. */
export function newTask(type: TaskType, vm: { name: string; id: string }, now: Date): TaskRecord {
  const ts = now.toISOString();
  return {
    id: crypto.randomUUID(),
    type,
    status: "pending",
    resource: { kind: "vm", name: vm.name, id: vm.id },
    error: null,
    started_at: null,
    created_at: ts,
    updated_at: ts,
  };
}

/** Ops that persist a new task and enqueue it. */
export function enqueueOps(task: TaskRecord): Op[] {
  return [
    { type: "put", key: keys.task(task.id), value: task },
    { type: "put", key: keys.activeTask(task.id), value: { vm: task.resource.name } },
  ];
}

/** Ops that store a terminal task and dequeue it. */
export function finishOps(task: TaskRecord): Op[] {
  return [
    { type: "put", key: keys.task(task.id), value: task },
    { type: "delete", key: keys.activeTask(task.id) },
  ];
}

/** The public view of a task. */
export function taskView(t: TaskRecord): Task {
  return {
    id: t.id,
    type: t.type,
    status: t.status,
    resource: t.resource,
    error: t.error,
    created_at: t.created_at,
    updated_at: t.updated_at,
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

/** A terminal copy of `task`. */
export function terminal(task: TaskRecord, error: ErrorInfo | null, now: Date): TaskRecord {
  return {
    ...task,
    status: error ? "failed" : "succeeded",
    error,
    updated_at: now.toISOString(),
  };
}
