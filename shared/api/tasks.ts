/**
 * Async tasks (DESIGN.md wire conventions): `{id, status, error, …}` returned by every async
 * operation, served at `GET /v1/tasks/{id}` and streamed as `task` events by `GET /v1/events`.
 *
 * A task is durable: it is stored with the change that caused it, claimed by one control-plane
 * worker at a time under a store lease, and picked up by another worker when its worker dies
 * (`attempts` counts the claims).
 *
 * @module
 */
import { z } from "zod";
import { ErrorInfoSchema } from "../errors.ts";
import { TimestampSchema } from "./common.ts";

/** Task lifecycle: pending → running → succeeded | failed. */
export const TaskStatusSchema = z.enum(["pending", "running", "succeeded", "failed"]);
/** Task lifecycle state. */
export type TaskStatus = z.infer<typeof TaskStatusSchema>;

/** True for `succeeded` and `failed`. */
export function isTerminal(status: TaskStatus): boolean {
  return status === "succeeded" || status === "failed";
}

/**
 * The VM lifecycle verbs (`POST /v1/vms/{name}/{action}`), with QMP semantics:
 * - `start`: launch QEMU on the VM's existing disk;
 * - `stop`: ACPI power button (`system_powerdown`), forced after a timeout (default 60 s);
 * - `poweroff`: immediate (`quit`, like pulling the plug);
 * - `reboot`: guest-visible reboot: ACPI power button, and when the guest has shut down the
 *   machine is reset instead of exiting (`system_reset`); reset at once after the timeout;
 * - `pause` / `resume`: QMP `stop` / `cont` (vCPUs halted, memory kept);
 * - `reset`: hard reset (`system_reset`).
 */
export const VmActionSchema = z.enum([
  "start",
  "stop",
  "poweroff",
  "reboot",
  "pause",
  "resume",
  "reset",
]);
/** A VM lifecycle verb. */
export type VmAction = z.infer<typeof VmActionSchema>;

/**
 * Kinds of task: VM create, delete and one per lifecycle verb (`vm.<action>`); `pool.scan`
 * (a pool instance's scan, cp/pools/scan.ts).
 */
export const TaskTypeSchema = z.enum([
  "vm.create",
  "vm.delete",
  "vm.start",
  "vm.stop",
  "vm.poweroff",
  "vm.reboot",
  "vm.pause",
  "vm.resume",
  "vm.reset",
  "pool.scan",
]);
/** A task kind. */
export type TaskType = z.infer<typeof TaskTypeSchema>;

/** The task type of a lifecycle verb. */
export function actionTaskType(action: VmAction): TaskType {
  return `vm.${action}` as TaskType;
}

/** Kinds of resource a task acts on. */
export const ResourceKindSchema = z.enum(["vm", "pool"]);

/**
 * The resource a task acts on: its kind, name and id (a VM's name and id; a pool instance's
 * pool name and instance id).
 */
export const TaskResourceSchema = z.object({
  kind: ResourceKindSchema,
  name: z.string(),
  id: z.string(),
});
/** A task's resource. */
export type TaskResource = z.infer<typeof TaskResourceSchema>;

/** Byte progress of a step: bytes done and the total (null when the size is unknown). */
export const ProgressBytesSchema = z.object({
  done_bytes: z.number().int().min(0),
  total_bytes: z.number().int().min(0).nullable(),
});
/** Byte progress. */
export type ProgressBytes = z.infer<typeof ProgressBytesSchema>;

/** A control-plane task as served by `GET /v1/tasks/{id}`. */
export const TaskSchema = z.object({
  id: z.string().uuid(),
  type: TaskTypeSchema,
  status: TaskStatusSchema,
  resource: TaskResourceSchema,
  /**
   * Why the task exists when the user did not ask for it, e.g. `restart_policy: crashed`,
   * `start at boot`, `orphan cleanup`; null for user requests.
   */
  reason: z.string().nullable(),
  /** How many times a worker claimed it (> 1 after a worker died or retried it). */
  attempts: z.number().int().min(0),
  /** Human-readable progress, e.g. `downloading image (12.5 MiB of 300.0 MiB)`. */
  progress: z.string().nullable(),
  /** Byte progress of the current step (an image download), for progress bars; null: none. */
  progress_bytes: ProgressBytesSchema.nullable().default(null),
  /** Set when `status` is `failed`. */
  error: ErrorInfoSchema.nullable(),
  created_at: TimestampSchema,
  updated_at: TimestampSchema,
  /** When a worker first started it. */
  started_at: TimestampSchema.nullable(),
  /** When it became terminal. */
  finished_at: TimestampSchema.nullable(),
});
/** A control-plane task. */
export type Task = z.infer<typeof TaskSchema>;
