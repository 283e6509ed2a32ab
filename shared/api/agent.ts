/**
 * The agent protocol: what the control plane calls on an agent's mTLS endpoint.
 *
 * - `POST /v1/vms` {@link AgentVmCreateRequestSchema} → 202 {@link AgentTaskSchema}
 * - `DELETE /v1/vms/{id}?task_id=` → 202 {@link AgentTaskSchema}
 * - `GET /v1/tasks/{id}` → {@link AgentTaskSchema} (404 `task_not_found` after an agent restart:
 *   the control plane re-dispatches; both operations are idempotent by VM id)
 * - `GET /v1/vms` → `{items: ObservedVm[]}`
 * - `GET /v1/vms/{id}/console-log?tail_bytes=N` → `text/plain` tail of the serial log
 * - `GET /healthz`
 *
 * Task ids are the control plane's task ids, so a retried dispatch finds the same agent task.
 *
 * @module
 */
import { z } from "zod";
import { ErrorInfoSchema } from "../errors.ts";
import { TaskStatusSchema } from "./tasks.ts";
import { ObservedVmSchema } from "./nodes.ts";
import { VmCreateRequestSchema } from "./vms.ts";

/** `POST /v1/vms` on the agent. */
export const AgentVmCreateRequestSchema = z.object({
  task_id: z.string().uuid(),
  vm: VmCreateRequestSchema.pick({
    name: true,
    image_url: true,
    image_sha256: true,
    architecture: true,
    vcpus: true,
    memory_mb: true,
    disk_gib: true,
    user_data: true,
  }).extend({ id: z.string().uuid() }).strict(),
  pool: z.object({ name: z.string(), path: z.string().startsWith("/") }),
}).strict();
/** Agent VM create body. */
export type AgentVmCreateRequest = z.infer<typeof AgentVmCreateRequestSchema>;

/** `DELETE /v1/vms/{id}` query on the agent. */
export const AgentVmDeleteQuerySchema = z.object({ task_id: z.string().uuid() });

/** An agent-side task. */
export const AgentTaskSchema = z.object({
  id: z.string().uuid(),
  op: z.enum(["vm.create", "vm.delete"]),
  vm_id: z.string().uuid(),
  status: TaskStatusSchema,
  error: ErrorInfoSchema.nullable(),
  /** Human-readable progress, e.g. `downloading image (12.5 MiB)`. */
  progress: z.string().nullable(),
  /** Set on success of `vm.create`. */
  result: z.object({
    phase: z.string(),
    accelerator: z.enum(["kvm", "tcg"]),
    image: z.string(),
    image_cache_hit: z.boolean(),
  }).nullable(),
});
/** An agent task. */
export type AgentTask = z.infer<typeof AgentTaskSchema>;

/** `GET /v1/vms` on the agent. */
export const AgentVmListSchema = z.object({ items: z.array(ObservedVmSchema) });
