/**
 * The agent protocol: what the control plane calls on an agent's mTLS endpoint, and what the
 * agent sends to the control plane's agent-facing port.
 *
 * Control plane → agent (the agent requires a client certificate with O=`otherix:control-plane`):
 * - `POST /v1/vms` {@link AgentVmCreateRequestSchema} → 202 {@link AgentTaskSchema}
 * - `POST /v1/vms/{id}/actions` {@link AgentVmActionRequestSchema} → 202 {@link AgentTaskSchema}
 *   (404 `vm_not_found` when the agent has no such VM)
 * - `DELETE /v1/vms/{id}?task_id=` → 202 {@link AgentTaskSchema}; aborts any operation in
 *   flight on that VM first (a create's download is cancelled, its files removed)
 * - `GET /v1/tasks/{id}` → {@link AgentTaskSchema} (404 `task_not_found` after an agent
 *   restart: the control plane re-dispatches; every operation is idempotent by VM id)
 * - `GET /v1/vms` → {@link AgentVmListSchema}
 * - `PUT /v1/pools` {@link AgentPoolsRequestSchema} → 204: the desired pools (also carried by
 *   every heartbeat response)
 * - `GET /v1/vms/{id}/console-log?tail_bytes=N` → `text/plain` tail of the serial log
 * - `GET /v1/vms/{id}/console` → WebSocket bridged to the VM's serial port: binary frames both
 *   ways (raw bytes); several viewers may attach, each sees all output and may type. Refusals
 *   come before the upgrade as HTTP error envelopes: 404 `vm_not_found`, 409 `vm_invalid_state`
 *   (QEMU not running). The agent closes the socket with 1000 when QEMU exits, 1001 when the
 *   agent stops.
 * - `GET /healthz`
 *
 * Agent → control plane (agent-facing port, mTLS with the node certificate):
 * - `POST /v1/nodes/heartbeat` {@link HeartbeatRequestSchema} → {@link HeartbeatResponseSchema},
 *   every `heartbeat_interval_seconds`;
 * - `POST /v1/nodes/report` {@link NodeReportSchema} → 204, pushed as soon as a VM changes
 *   phase or a task changes state (coalesced while one is in flight), so the control plane
 *   learns of `running` without polling.
 *
 * Task ids are the control plane's task ids, so a retried dispatch finds the same agent task.
 *
 * @module
 */
import { z } from "zod";
import { ErrorInfoSchema } from "../errors.ts";
import { ArchitectureSchema, ResourceNameSchema, TimestampSchema } from "./common.ts";
import { ObservedVmSchema, VmPhaseSchema } from "./vm_runtime.ts";
import { NodeResourcesSchema, NodeStatusSchema, ObservedPoolSchema } from "./nodes.ts";
import { ProgressBytesSchema, TaskStatusSchema, TaskTypeSchema, VmActionSchema } from "./tasks.ts";
import { VmCreateRequestSchema } from "./vms.ts";
import { STOP_TIMEOUT_LIMITS } from "../constants.ts";

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

/** `POST /v1/vms/{id}/actions` on the agent: run one lifecycle verb. */
export const AgentVmActionRequestSchema = z.object({
  task_id: z.string().uuid(),
  action: VmActionSchema,
  /** `stop` / `reboot`: how long the guest gets to act on ACPI before it is forced, seconds. */
  timeout_seconds: z.number().int().min(STOP_TIMEOUT_LIMITS.min).max(STOP_TIMEOUT_LIMITS.max)
    .optional(),
  /** `start`: leave the vCPUs halted (QEMU `-S`), for a VM whose desired phase is `paused`. */
  paused: z.boolean().optional(),
}).strict();
/** Agent VM action body. */
export type AgentVmActionRequest = z.infer<typeof AgentVmActionRequestSchema>;

/** `DELETE /v1/vms/{id}` query on the agent. */
export const AgentVmDeleteQuerySchema = z.object({ task_id: z.string().uuid() });

/** What a succeeded agent task leaves behind. */
export const AgentTaskResultSchema = z.object({
  /** The VM's phase when the task ended. */
  phase: VmPhaseSchema,
  /** `vm.create` / `vm.start`: the accelerator QEMU runs with. */
  accelerator: z.enum(["kvm", "tcg"]).optional(),
  /** `vm.create`: the cached image's basename. */
  image: z.string().optional(),
  /** `vm.create`: true when no download was needed. */
  image_cache_hit: z.boolean().optional(),
  /** `vm.create`: the image's format as `qemu-img info` reports it (`qcow2`, `raw`, …). */
  image_format: z.string().optional(),
});
/** An agent task result. */
export type AgentTaskResult = z.infer<typeof AgentTaskResultSchema>;

/** An agent-side task. */
export const AgentTaskSchema = z.object({
  id: z.string().uuid(),
  op: TaskTypeSchema,
  vm_id: z.string().uuid(),
  status: TaskStatusSchema,
  error: ErrorInfoSchema.nullable(),
  /** Human-readable progress, e.g. `downloading image (12.5 MiB)`. */
  progress: z.string().nullable(),
  /** Byte progress of the current step (an image download); null or absent: none. */
  progress_bytes: ProgressBytesSchema.nullable().optional(),
  /** Set on success. */
  result: AgentTaskResultSchema.nullable(),
  /**
   * When each step completed, milliseconds after the agent accepted the task (for
   * `deno task bench`). `vm.create`: `image`, `overlay`, `seed`, `spawn` (QEMU process up),
   * `qmp_ready` (QMP reports running). Verbs: `qmp_command` (the QMP command was issued),
   * `done`.
   */
  timings: z.record(z.string(), z.number().min(0)),
  created_at: TimestampSchema,
  updated_at: TimestampSchema,
});
/** An agent task. */
export type AgentTask = z.infer<typeof AgentTaskSchema>;

/** `GET /v1/vms` on the agent. */
export const AgentVmListSchema = z.object({ items: z.array(ObservedVmSchema) });

/** A pool instance the control plane wants the agent to provide. */
export const DesiredPoolSchema = z.object({ name: z.string(), path: z.string() });
/** A desired pool. */
export type DesiredPool = z.infer<typeof DesiredPoolSchema>;

/** `PUT /v1/pools` on the agent: the complete desired set. */
export const AgentPoolsRequestSchema = z.object({ pools: z.array(DesiredPoolSchema).max(1000) })
  .strict();

/** A port range `"<lo>-<hi>"` (1024 ≤ lo ≤ hi ≤ 65535). */
export const MigrationPortRangeSchema = z.string().regex(/^\d{4,5}-\d{4,5}$/, "must be <lo>-<hi>")
  .refine((r) => {
    const [lo, hi] = r.split("-").map(Number);
    return lo >= 1024 && hi <= 65535 && lo <= hi;
  }, "ports must satisfy 1024 <= lo <= hi <= 65535");

/** Most tasks one heartbeat or report may carry. */
export const MAX_REPORTED_TASKS = 1000;

/** `POST /v1/nodes/heartbeat` body (mTLS; the node is the client certificate's CN). */
export const HeartbeatRequestSchema = z.object({
  node_name: ResourceNameSchema,
  /** The agent's advertised mTLS endpoint (`https://host:port`). */
  endpoint: z.string().url().refine(
    (u) => u.startsWith("https://"),
    "must be an https:// URL (the control plane talks to agents over mTLS only)",
  ),
  architecture: ArchitectureSchema,
  accelerator: z.enum(["kvm", "tcg"]),
  agent_version: z.string().max(100),
  /** The directory under which the agent keeps pools (default `/var/lib/otherix/pools`). */
  pools_dir: z.string().startsWith("/"),
  resources: NodeResourcesSchema,
  pools: z.array(ObservedPoolSchema),
  /** Every VM the agent hosts. */
  vms: z.array(ObservedVmSchema),
  /**
   * Where this node accepts live-migration streams (agent config `migration.*`, for the
   * migration work to come): the host other nodes dial and the port range, `"<lo>-<hi>"`.
   */
  migration: z.object({
    host: z.string().min(1).max(253),
    port_range: MigrationPortRangeSchema,
  }).nullable().optional(),
  /** Tasks in flight and those that ended recently (recovers a lost report). */
  tasks: z.array(AgentTaskSchema).max(MAX_REPORTED_TASKS).default([]),
});
/** A heartbeat. */
export type HeartbeatRequest = z.infer<typeof HeartbeatRequestSchema>;

/** Heartbeat response: the desired pools (reconciled by the agent) and the cadence. */
export const HeartbeatResponseSchema = z.object({
  node_status: NodeStatusSchema,
  desired_pools: z.array(DesiredPoolSchema),
  heartbeat_interval_seconds: z.number().int().min(1),
  /**
   * The agent-facing URLs (`https://host:port`) of every live control-plane replica, the
   * answering one first (issue 11: agents fail over between replicas). Older control planes
   * send none. Loosely typed on purpose: the agent keeps the valid https URLs, at most 16
   * (agent/cp_endpoints.ts), so one bad entry never costs a heartbeat.
   */
  control_planes: z.array(z.string().max(2048)).max(64).default([]),
});
/** Heartbeat response. */
export type HeartbeatResponse = z.infer<typeof HeartbeatResponseSchema>;

/** `POST /v1/nodes/report` body: what changed, pushed at once (mTLS like heartbeats). */
export const NodeReportSchema = z.object({
  node_name: ResourceNameSchema,
  /** Every VM the agent hosts (the complete set, so a missed report heals itself). */
  vms: z.array(ObservedVmSchema),
  /** Tasks whose state changed since the last report that reached the control plane. */
  tasks: z.array(AgentTaskSchema).max(MAX_REPORTED_TASKS),
});
/** A node report. */
export type NodeReport = z.infer<typeof NodeReportSchema>;
