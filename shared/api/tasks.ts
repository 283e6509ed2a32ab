/**
 * Async tasks (DESIGN.md wire conventions): `{id, status, error}` returned by every async
 * operation and polled at `GET /v1/tasks/{id}`.
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

/** Kinds of task the control plane runs. */
export const TaskTypeSchema = z.enum(["vm.create", "vm.delete"]);
/** A task kind. */
export type TaskType = z.infer<typeof TaskTypeSchema>;

/** A control-plane task as served by `GET /v1/tasks/{id}`. */
export const TaskSchema = z.object({
  id: z.string().uuid(),
  type: TaskTypeSchema,
  status: TaskStatusSchema,
  /** The resource the task acts on. */
  resource: z.object({ kind: z.literal("vm"), name: z.string(), id: z.string() }),
  /** Set when `status` is `failed`. */
  error: ErrorInfoSchema.nullable(),
  created_at: TimestampSchema,
  updated_at: TimestampSchema,
});
/** A control-plane task. */
export type Task = z.infer<typeof TaskSchema>;
