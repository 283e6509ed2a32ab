/**
 * Stored record shapes and the store key layout of the control plane. Every key the control
 * plane writes is built here:
 *
 * | key | value |
 * | --- | --- |
 * | `/cluster/ca` | {@link CaRecord} (cluster CA cert + key) |
 * | `/cluster/jwt-secret` | `{secret}` base64url of 32 random bytes (HS256 key) |
 * | `/cluster/settings` | {@link ClusterSettings} (absent = never set) |
 * | `/users/<id>` | {@link UserRecord} |
 * | `/users-by-email/<lowercased email>` | `{id}` (uniqueness index) |
 * | `/api-tokens/<sha256 hex of token>` | {@link ApiTokenRecord} (lookup by hash) |
 * | `/user-api-tokens/<user id>/<token id>` | `{token_hash}` (per-user listing) |
 * | `/join-tokens/<sha256 hex of token>` | {@link JoinTokenRecord} |
 * | `/join-tokens-by-id/<id>` | `{token_hash}` (id index: listing and revoking) |
 * | `/nodes/<name>` | {@link NodeRecord} |
 * | `/observed-vms/<node>/<vm id>` | ObservedVm: what the node's agent reports of the VM |
 * | `/node-allocations/<node>` | NodeAllocation: what the VMs placed there hold (cp/vms/allocations.ts) |
 * | `/pools/<pool name>/<node name>` | {@link PoolRecord} (one per instance) |
 * | `/pool-provisioned/<node name>` | {@link PoolProvisionedRecord} (default pool created once) |
 * | `/vms/<name>` | {@link VmRecord} |
 * | `/tasks/<id>` | {@link TaskRecord} |
 * | `/tasks-active/<id>` | `{vm}`: index of non-terminal tasks (worker queue) |
 * | `/task-claims/<id>` | {@link TaskClaim}, attached to the claiming worker's lease |
 * | `/agent-tasks/<id>` | the agent's view of task `<id>` (AgentTask), from reports |
 * | `/console-tokens/<sha256 hex>` | a console ticket, on a lease (cp/console/tickets.ts) |
 * | `/networks/<name>` | {@link NetworkRecord} |
 * | `/network-allocations/<name>` | its VMs, addresses, MACs (cp/networks/ipam.ts) |
 * | `/network-registry` | subnets, bridges, VNIs of all networks (cp/networks/service.ts) |
 *
 * @module
 */
import type { Role } from "../../shared/rbac.ts";
import type { Architecture } from "../../shared/api/common.ts";
import type {
  CachedImage,
  NodePressure,
  NodeResources,
  NodeStatus,
  PressureCondition,
} from "../../shared/api/nodes.ts";
import type { PoolScan } from "../../shared/api/pools.ts";
import type { Vm } from "../../shared/api/vms.ts";
import type { Task } from "../../shared/api/tasks.ts";

/** Store keys (see the module table). */
export const keys = {
  ca: "/cluster/ca",
  jwtSecret: "/cluster/jwt-secret",
  settings: "/cluster/settings",
  users: "/users/",
  user: (id: string) => `/users/${id}`,
  userByEmail: (email: string) => `/users-by-email/${email.toLowerCase()}`,
  apiToken: (hash: string) => `/api-tokens/${hash}`,
  userApiTokens: (userId: string) => `/user-api-tokens/${userId}/`,
  userApiToken: (userId: string, tokenId: string) => `/user-api-tokens/${userId}/${tokenId}`,
  joinToken: (hash: string) => `/join-tokens/${hash}`,
  nodes: "/nodes/",
  node: (name: string) => `/nodes/${name}`,
  observedVms: "/observed-vms/",
  observedVmsOf: (node: string) => `/observed-vms/${node}/`,
  observedVm: (node: string, id: string) => `/observed-vms/${node}/${id}`,
  nodeAllocations: "/node-allocations/",
  nodeAllocation: (node: string) => `/node-allocations/${node}`,
  pools: "/pools/",
  poolsNamed: (name: string) => `/pools/${name}/`,
  pool: (name: string, node: string) => `/pools/${name}/${node}`,
  poolProvisioned: (node: string) => `/pool-provisioned/${node}`,
  vms: "/vms/",
  vm: (name: string) => `/vms/${name}`,
  tasks: "/tasks/",
  task: (id: string) => `/tasks/${id}`,
  activeTasks: "/tasks-active/",
  activeTask: (id: string) => `/tasks-active/${id}`,
  taskClaims: "/task-claims/",
  taskClaim: (id: string) => `/task-claims/${id}`,
  agentTasks: "/agent-tasks/",
  agentTask: (id: string) => `/agent-tasks/${id}`,
  networks: "/networks/",
  network: (name: string) => `/networks/${name}`,
  networkAllocations: "/network-allocations/",
  networkAllocation: (name: string) => `/network-allocations/${name}`,
  networkRegistry: "/network-registry",
} as const;

/** The cluster CA as stored (`/cluster/ca`). */
export interface CaRecord {
  cert_pem: string;
  key_pem: string;
  /** `sha256:<hex>` of the certificate DER. */
  fingerprint: string;
  created_at: string;
}

/** Cluster-wide settings (`/cluster/settings`). */
export interface ClusterSettings {
  /** The cluster default pool name; null = explicitly unset. */
  default_pool_name: string | null;
  updated_at: string;
}

/** A user (`/users/<id>`). */
export interface UserRecord {
  id: string;
  email: string;
  role: Role;
  /** `scrypt$N$r$p$salt$hash` (see `cp/auth/passwords.ts`). */
  password_hash: string;
  created_at: string;
}

/** A long-lived API token (`/api-tokens/<sha256>`); the secret itself is never stored. */
export interface ApiTokenRecord {
  id: string;
  user_id: string;
  name: string;
  description: string | null;
  token_hash: string;
  created_at: string;
  expires_at: string | null;
}

/** A node join token (`/join-tokens/<sha256>`). */
export interface JoinTokenRecord {
  id: string;
  node_name: string;
  token_hash: string;
  max_uses: number;
  uses: number;
  expires_at: string;
  created_at: string;
  created_by: string;
}

/** A node (`/nodes/<name>`). */
export interface NodeRecord {
  id: string;
  name: string;
  status: NodeStatus;
  architecture: Architecture | null;
  cordoned: boolean;
  endpoint: string | null;
  accelerator: "kvm" | "tcg" | null;
  agent_version: string | null;
  resources: NodeResources | null;
  /** Where the agent keeps pools (from heartbeats). */
  pools_dir: string | null;
  /** Live-migration endpoint the agent advertises (absent/null: not reported). */
  migration?: { host: string; port_range: string } | null;
  /** Pressure conditions from heartbeats (cp/nodes/pressure.ts); absent before the first. */
  pressure?: NodePressure;
  last_heartbeat_at: string | null;
  /**
   * `sha256:<hex>` of the DER of the newest certificate issued to the node (bootstrap or
   * renewal, cp/nodes/certs.ts): the only one its agent may use on the agent-facing port.
   * Absent or null (records written before pinning): any CA-signed certificate for the node's
   * name is accepted until the next renewal pins one.
   */
  cert_fingerprint?: string | null;
  created_at: string;
  updated_at: string;
}

/** A pool instance (`/pools/<name>/<node>`). */
export interface PoolRecord {
  id: string;
  name: string;
  node: string;
  type: "local_dir";
  path: string;
  status: "pending" | "ready" | "failed";
  message: string | null;
  total_bytes: number | null;
  available_bytes: number | null;
  images: CachedImage[];
  /** The last scan (cp/pools/scan.ts); absent or null before the first. */
  last_scan?: PoolScanRecord | null;
  /** Disk pressure, from scans (cp/pools/pressure.ts); absent or null before the first. */
  pressure?: { disk: PressureCondition } | null;
  /** The `pool.scan` task queued or running for this instance (absent/null: none). */
  scan_task_id?: string | null;
  /** The last scan's failure, cleared by a scan that succeeds (absent/null: none). */
  last_scan_error?: { at: string; code: string; message: string } | null;
  /** Images cached in all, when `images` is capped (MAX_REPORTED_IMAGES); absent: not capped. */
  images_total?: number;
  created_at: string;
  updated_at: string;
}

/** A pool instance's last scan (the public summary plus what effective capacity needs). */
export interface PoolScanRecord extends PoolScan {
  /** Control-plane time the scan was sent: VMs created later are not observed by it. */
  started_at: string;
  /** VMs placed in the instance before `started_at` whose disk the scan did not find. */
  unobserved_vm_ids: string[];
}

/**
 * Marks that the pool provisioner created the default pool on a node
 * (`/pool-provisioned/<node>`), so an operator's `pool delete` of it sticks. `node_id`: a node
 * deleted and joined again under the same name gets a new id and is provisioned again.
 */
export interface PoolProvisionedRecord {
  node_id: string;
  pool: string;
  at: string;
}

/**
 * A VM (`/vms/<name>`): the public view (`Vm`, shared/api/vms.ts) plus what dispatch and the
 * VM controller need. `last_task` is kept denormalized so views need no task read.
 */
export type VmRecord = Vm & {
  /** cloud-init user-data (not served back). */
  user_data: string | null;
  /** The pool instance's path on `node` at placement time. */
  pool_path: string;
  /** The task acting on the VM now (null: none); guards one task at a time per VM. */
  active_task_id: string | null;
  /** When the restart policy last queued a start (backoff), ISO time. */
  last_restart_at: string | null;
};

/** Parameters a task carries from its request. */
export interface TaskParams {
  /** `vm.stop` / `vm.reboot`: ACPI grace, seconds. */
  timeout_seconds?: number;
  /** `vm.start`: leave the vCPUs halted (desired phase `paused`). */
  paused?: boolean;
  /** `vm.delete`: the task it cancelled and must outlive (null: none). */
  after_task_id?: string | null;
  /** `vm.delete`: the VM's node, for orphan cleanup without a VM record. */
  node?: string;
}

/** A control-plane task (`/tasks/<id>`): the public view plus worker bookkeeping. */
export type TaskRecord = Task & {
  params: TaskParams;
  /**
   * When each step happened, ms after `created_at` (for `deno task bench`): `claimed`,
   * `dispatched`, `agent_done` (the agent's result reached the worker), `finished`, and the
   * agent's own step timings as `agent.<step>` (ms after the agent accepted the task).
   */
  timings?: Record<string, number>;
  /** Set by a `vm delete` that supersedes this task: the worker stops it (`task_cancelled`). */
  cancel_requested: boolean;
};

/** A worker's claim on a task (`/task-claims/<id>`, on the worker's lease). */
export interface TaskClaim {
  worker: string;
  claimed_at: string;
}

/**
 * A network (`/networks/<name>`): the public view's configuration (shared/api/networks.ts
 * `Network`) without the figures computed from its allocation.
 */
export interface NetworkRecord {
  id: string;
  name: string;
  type: "bridge" | "overlay";
  managed: boolean;
  bridge_name: string;
  mtu: number | null;
  subnet: string | null;
  gateway: string | null;
  vni: number | null;
  created_at: string;
  updated_at: string;
}
