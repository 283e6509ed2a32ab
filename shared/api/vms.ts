/**
 * VMs on the public API (spec: developer guide "otherix vm subcommands", "VM operations with
 * names", "Step 4 — observe the VM", "Step 5 — console access"):
 * - `POST /v1/vms` {@link VmCreateRequestSchema} → 202 Task (`vm.create`)
 * - `GET /v1/vms`, `GET /v1/vms/{name}` → {@link VmSchema}
 * - `DELETE /v1/vms/{name}?force=` → 202 Task (`vm.delete`)
 * - `POST /v1/vms/{name}/{start|stop|poweroff|reboot|pause|resume|reset}`
 *   ({@link VmActionRequestSchemas}) → 202 Task (`vm.<action>`); 409 `vm_invalid_state` when the
 *   VM's status does not allow it, 409 `vm_busy` while another task runs on it
 * - `GET /v1/vms/{name}/console-log?tail_bytes=` → `text/plain`
 * - `POST /v1/vms/{name}/console` → ConsoleTicket; `GET /v1/vms/{name}/console?token=` →
 *   WebSocket (see `console.ts`)
 *
 * @module
 */
import { z } from "zod";
import {
  DEFAULT_CONSOLE_TAIL_BYTES,
  DEFAULT_STOP_TIMEOUT_SECONDS,
  STOP_TIMEOUT_LIMITS,
  VM_LIMITS,
} from "../constants.ts";
import { ErrorInfoSchema } from "../errors.ts";
import {
  ArchitectureSchema,
  ResourceNameSchema,
  Sha256HexSchema,
  TimestampSchema,
} from "./common.ts";
import { imageUrlProblem } from "./images.ts";
import { VmNetworksSchema, VmNicSchema } from "./networks.ts";
import { TaskSchema, type VmAction } from "./tasks.ts";
import { CloudInitConditionSchema, VmExitSchema, VmPhaseSchema } from "./vm_runtime.ts";
import { cloudConfigProblem, MAX_SSH_KEYS, sshPublicKeyProblem } from "./cloud_config.ts";

/**
 * An image URL: http(s), at most 2048 characters, naming a file the agent's image cache may use
 * (the one rule of `images.ts`, which the agent applies too).
 */
export const ImageUrlSchema = z.string().superRefine((u, ctx) => {
  const problem = imageUrlProblem(u);
  if (problem) ctx.addIssue({ code: "custom", message: problem });
});

/**
 * What happens when a VM's QEMU exits without Otherix asking (the Docker/Compose model):
 * - `always`: restarted after any such exit, a guest shutdown included;
 * - `on-failure` (default): restarted when QEMU dies (crash, OOM kill, killed behind the
 *   agent's back); a guest shutdown stops the VM (`desired_phase: stopped`);
 * - `never`: never restarted; the VM stays stopped (`desired_phase: stopped`).
 *
 * Restarts back off (`vms.restart_backoff_*`). Independently of the policy, a VM whose desired
 * phase is `running` starts again when its agent returns after a host reboot (Proxmox "start
 * at boot").
 */
export const RestartPolicySchema = z.enum(["always", "on-failure", "never"]);
/** A restart policy. */
export type RestartPolicy = z.infer<typeof RestartPolicySchema>;

/**
 * cloud-init user-data: cloud-config (`#cloud-config` first line, then one YAML mapping; the
 * rule of shared/api/cloud_config.ts), at most `VM_LIMITS.userDataBytes` bytes (UTF-8).
 */
export const UserDataSchema = z.string().refine(
  (s) => new TextEncoder().encode(s).length <= VM_LIMITS.userDataBytes,
  `must be at most ${VM_LIMITS.userDataBytes} bytes`,
).superRefine((s, ctx) => {
  const problem = cloudConfigProblem(s);
  if (problem) ctx.addIssue({ code: "custom", message: problem });
});

/**
 * One SSH public key, a line of a `.pub` file (`ssh-ed25519 AAAA… comment`); the rule of
 * shared/api/cloud_config.ts (type known, blob well-formed for it, no options).
 */
export const SshPublicKeySchema = z.string().superRefine((k, ctx) => {
  const problem = sshPublicKeyProblem(k);
  if (problem) ctx.addIssue({ code: "custom", message: `not an SSH public key: ${problem}` });
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
  /**
   * cloud-init user-data ({@link UserDataSchema}: cloud-config), the NoCloud `user-data`; with
   * `ssh_authorized_keys`, the keys are merged into it (cp/vms/cloud_config.ts).
   */
  user_data: UserDataSchema.optional(),
  /**
   * SSH public keys for the guest's default user, appended to the user-data's top-level
   * `ssh_authorized_keys` (at most `MAX_SSH_KEYS`); a malformed one is 400 `validation_failed`
   * naming its index (`ssh_authorized_keys.<i>`).
   */
  ssh_authorized_keys: z.array(SshPublicKeySchema).max(MAX_SSH_KEYS).optional(),
  /** Pool name; omitted means the cluster default pool. */
  pool: ResourceNameSchema.optional(),
  /** Placement hint: exactly this node. */
  node: ResourceNameSchema.optional(),
  restart_policy: RestartPolicySchema.default("on-failure"),
  /**
   * Networks to attach, by name, one NIC each, first NIC first (shared/api/networks.ts);
   * omitted: one QEMU user-mode NAT NIC. 404 `network_not_found`, 409
   * `network_addresses_exhausted`.
   */
  networks: VmNetworksSchema.optional(),
}).strict();
/** VM create body (input form: defaults optional). */
export type VmCreateRequestInput = z.input<typeof VmCreateRequestSchema>;
/** VM create body after defaults. */
export type VmCreateRequest = z.infer<typeof VmCreateRequestSchema>;

/**
 * VM status as projected by the control plane from tasks and what the node's agent reports:
 * `pending` (queued) → `creating` → `running`; `starting` / `stopping` / `deleting` while
 * those tasks run; `paused`; `stopped`; `failed` (the last create/start task failed; see
 * `error`); `unknown`: the VM's node stopped sending heartbeats (node `unreachable`), so its
 * state cannot be confirmed; the next heartbeat replaces it (like a Kubernetes pod on a lost
 * node); `lost`: its node was deleted with `--force` while the VM lived there (only `vm delete`
 * applies).
 */
export const VmStatusSchema = z.enum([
  "pending",
  ...VmPhaseSchema.options,
  "failed",
  "unknown",
  "lost",
]);
/** VM status. */
export type VmStatus = z.infer<typeof VmStatusSchema>;

/**
 * The user's intent, which the VM controller drives the VM toward: set by create (`running`),
 * `start`/`resume` (`running`), `stop`/`poweroff` (`stopped`), `pause` (`paused`), `delete`
 * (`deleted`), and by the restart policy when a VM stops on its own and stays stopped.
 */
export const VmDesiredPhaseSchema = z.enum(["running", "stopped", "paused", "deleted"]);
/** A VM's desired phase. */
export type VmDesiredPhase = z.infer<typeof VmDesiredPhaseSchema>;

/** The last task that acted on a VM, as `vm get` shows it. */
export const VmLastTaskSchema = TaskSchema.pick({
  id: true,
  type: true,
  status: true,
  error: true,
});
/** A VM's last task. */
export type VmLastTask = z.infer<typeof VmLastTaskSchema>;

/** A VM as the public API serves it. */
export const VmSchema = z.object({
  id: z.string().uuid(),
  name: z.string(),
  owner_id: z.string(),
  image_url: z.string(),
  image_sha256: z.string().nullable(),
  /** The cached image's basename (`{poolPath}/images/{basename}`). */
  image: z.string(),
  /** The image's format as the agent found it (`qcow2`, `raw`); null until created. */
  image_format: z.string().nullable(),
  architecture: ArchitectureSchema,
  vcpus: z.number().int(),
  memory_mb: z.number().int(),
  disk_gib: z.number().int(),
  pool: z.string(),
  node: z.string(),
  status: VmStatusSchema,
  desired_phase: VmDesiredPhaseSchema,
  restart_policy: RestartPolicySchema,
  /** Restarts by the restart policy since the VM last ran steadily. */
  restart_count: z.number().int().min(0),
  /** The last time QEMU exited, and why. */
  last_exit: VmExitSchema.nullable(),
  /** The last task that acted on this VM. */
  last_task: VmLastTaskSchema.nullable(),
  /** The last task's error, when it failed. */
  error: ErrorInfoSchema.nullable(),
  /**
   * cloud-init in the guest's current boot, as its node's agent reads it on the serial
   * console (absent: not reported yet, or a control plane that does not project it).
   */
  cloud_init: CloudInitConditionSchema.nullable().optional(),
  /**
   * The NICs on networks, index order, with their MACs and addresses (shared/api/networks.ts);
   * empty for a VM with only the user-mode NAT NIC. Always served; optional in the type for
   * records written before networks existed.
   */
  nics: z.array(VmNicSchema).optional(),
  created_at: TimestampSchema,
  updated_at: TimestampSchema,
});
/** A VM. */
export type Vm = z.infer<typeof VmSchema>;

/** `POST /v1/vms/{name}/stop` and `/reboot` body. */
export const VmStopRequestSchema = z.object({
  /** How long the guest gets to act on the ACPI power button before it is forced, seconds. */
  timeout_seconds: z.number().int().min(STOP_TIMEOUT_LIMITS.min).max(STOP_TIMEOUT_LIMITS.max)
    .default(DEFAULT_STOP_TIMEOUT_SECONDS),
}).strict();

/** Body of the verbs that take no parameters (an empty object, or no body). */
export const VmEmptyRequestSchema = z.object({}).strict();

/** Request body schema of each lifecycle verb. */
export const VmActionRequestSchemas = {
  start: VmEmptyRequestSchema,
  stop: VmStopRequestSchema,
  poweroff: VmEmptyRequestSchema,
  reboot: VmStopRequestSchema,
  pause: VmEmptyRequestSchema,
  resume: VmEmptyRequestSchema,
  reset: VmEmptyRequestSchema,
} as const satisfies Record<VmAction, z.ZodType>;

/** A parsed lifecycle verb body. */
export type VmActionRequest = { timeout_seconds?: number };

/** `GET /v1/vms/{name}/console-log` query: how many trailing bytes of the serial log. */
export const ConsoleLogQuerySchema = z.object({
  tail_bytes: z.coerce.number().int().min(1).max(1024 * 1024).default(
    DEFAULT_CONSOLE_TAIL_BYTES,
  ),
});

/**
 * `POST /v1/vms` query: `dry_run=true` answers 200 with where the VM would go
 * (shared/api/placement.ts `PlacementDecision`) and creates nothing.
 */
export const VmCreateQuerySchema = z.object({
  dry_run: z.enum(["true", "false"]).optional().transform((v) => v === "true"),
});

/**
 * `DELETE /v1/vms/{name}` query. `force=true`: when the VM's node is not `ready`
 * (unreachable, gone, unregistered), remove the VM from the cluster at once instead of
 * waiting for its agent; the agent deletes the leftovers if it ever returns. On a ready node
 * it is an ordinary delete.
 */
export const VmDeleteQuerySchema = z.object({
  force: z.enum(["true", "false"]).optional().transform((v) => v === "true"),
});
