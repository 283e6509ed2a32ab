/**
 * VMs on the public API: `POST /v1/vms`, `GET /v1/vms`, `GET /v1/vms/{name}`,
 * `DELETE /v1/vms/{name}`, `GET /v1/vms/{name}/console-log` (spec: developer guide
 * "otherix vm subcommands", "VM operations with names").
 *
 * @module
 */
import { z } from "zod";
import { DEFAULT_CONSOLE_TAIL_BYTES, VM_LIMITS } from "../constants.ts";
import { ErrorInfoSchema } from "../errors.ts";
import {
  ArchitectureSchema,
  ResourceNameSchema,
  Sha256HexSchema,
  TimestampSchema,
} from "./common.ts";
import { imageUrlProblem } from "./images.ts";

/**
 * An image URL: http(s), at most 2048 characters, naming a file the agent's image cache may use
 * (the one rule of `images.ts`, which the agent applies too, so the control plane refuses first
 * what the agent would refuse).
 */
export const ImageUrlSchema = z.string().superRefine((u, ctx) => {
  const problem = imageUrlProblem(u);
  if (problem) ctx.addIssue({ code: "custom", message: problem });
});

/** `POST /v1/vms` body. */
export const VmCreateRequestSchema = z.object({
  name: ResourceNameSchema,
  image_url: ImageUrlSchema,
  /** Expected SHA-256 of the image; a mismatch fails the task with `checksum_mismatch`. */
  image_sha256: Sha256HexSchema.optional(),
  architecture: ArchitectureSchema,
  vcpus: z.number().int().min(VM_LIMITS.vcpus.min).max(VM_LIMITS.vcpus.max)
    .default(VM_LIMITS.vcpus.default),
  /** Guest memory, MiB. */
  memory_mb: z.number().int().min(VM_LIMITS.memoryMb.min).max(VM_LIMITS.memoryMb.max)
    .default(VM_LIMITS.memoryMb.default),
  /** Root disk size, GiB (the overlay is grown to this; never shrunk below the image). */
  disk_gib: z.number().int().min(VM_LIMITS.diskGib.min).max(VM_LIMITS.diskGib.max)
    .default(VM_LIMITS.diskGib.default),
  /** cloud-init user-data, verbatim (NoCloud `user-data`). */
  user_data: z.string().refine(
    (s) => new TextEncoder().encode(s).length <= VM_LIMITS.userDataBytes,
    `must be at most ${VM_LIMITS.userDataBytes} bytes`,
  ).optional(),
  /** Pool name; omitted means the cluster default pool. */
  pool: ResourceNameSchema.optional(),
  /** Placement hint: exactly this node. */
  node: ResourceNameSchema.optional(),
}).strict();
/** VM create body (input form: defaults optional). */
export type VmCreateRequestInput = z.input<typeof VmCreateRequestSchema>;
/** VM create body after defaults. */
export type VmCreateRequest = z.infer<typeof VmCreateRequestSchema>;

/**
 * VM status as projected by the control plane. `unknown`: the VM's node stopped sending
 * heartbeats (node `unreachable`), so its last state cannot be confirmed; the next heartbeat
 * replaces it with what the agent observes (like a Kubernetes pod on a lost node).
 */
export const VmStatusSchema = z.enum([
  "pending",
  "creating",
  "running",
  "stopped",
  "deleting",
  "failed",
  "unknown",
]);
/** VM status. */
export type VmStatus = z.infer<typeof VmStatusSchema>;

/** A VM as the public API serves it. */
export const VmSchema = z.object({
  id: z.string().uuid(),
  name: z.string(),
  owner_id: z.string(),
  image_url: z.string(),
  image_sha256: z.string().nullable(),
  /** The cached image's basename (`{poolPath}/images/{basename}`). */
  image: z.string(),
  architecture: ArchitectureSchema,
  vcpus: z.number().int(),
  memory_mb: z.number().int(),
  disk_gib: z.number().int(),
  pool: z.string(),
  node: z.string(),
  status: VmStatusSchema,
  desired_phase: z.enum(["running", "deleted"]),
  /** The last task that acted on this VM. */
  last_task_id: z.string().nullable(),
  /** The last failure, when `status` is `failed`. */
  error: ErrorInfoSchema.nullable(),
  created_at: TimestampSchema,
  updated_at: TimestampSchema,
});
/** A VM. */
export type Vm = z.infer<typeof VmSchema>;

/** `GET /v1/vms/{name}/console-log` query: how many trailing bytes of the serial log. */
export const ConsoleLogQuerySchema = z.object({
  tail_bytes: z.coerce.number().int().min(1).max(1024 * 1024).default(
    DEFAULT_CONSOLE_TAIL_BYTES,
  ),
});

/** `DELETE /v1/vms/{name}` query. */
export const VmDeleteQuerySchema = z.object({});
