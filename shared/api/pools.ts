/**
 * Storage pools (spec 003 "Storage pools"; spec 001 "Storage pools", "VM placement scheduler",
 * "Node-pressure detection"). A pool name is cluster-wide (like a StorageClass); each
 * (name, node) pair is one instance with a directory on that node (like a PersistentVolume).
 *
 * Public API (reads: every role, `storage_pool:read`; writes: admin, `storage_pool:manage`):
 * - `GET /v1/pools?node=<name|uuid>&type=&limit=&cursor=` → `{items: PoolInstanceView[],
 *   next_cursor}`: one item per instance, ordered by pool name then node name;
 * - `GET /v1/pools/{name}` → {@link PoolSchema} (every instance plus `is_cluster_default`);
 *   `GET /v1/pools/{uuid}` → {@link PoolInstanceViewSchema} (one instance); 404
 *   `pool_not_found`;
 * - `POST /v1/pools` {@link PoolCreateRequestSchema} → 201 PoolInstanceView (status
 *   `pending` until the agent reports the directory `ready` or `failed`); 400
 *   `validation_failed` (a UUID as `node`, a bad name), 400 `path_not_allowed`, 404
 *   `node_not_found`, 409 `conflict` (the (name, node) instance exists, or another pool of the
 *   node uses or contains the path);
 * - `DELETE /v1/pools/{name|uuid}?node=` → 200 the deleted PoolInstanceView; 404
 *   `pool_not_found`, 409 `pool_not_on_node` (`node` given, no instance there), 409
 *   `pool_name_ambiguous` (a name on several nodes without `node`; details.instances), 409
 *   `conflict` while VM disks live there (details `{pool, node, vm_disks, vms}`); the image
 *   cache never blocks deletion;
 * - `POST /v1/pools/{name|uuid}/scan?node=` → 202 {@link PoolScansSchema}: one `pool.scan`
 *   task per instance (a name without `node`: every instance), or the one already in flight.
 *
 * Agent protocol (control plane → agent, mTLS): `POST /v1/pools/scan`
 * {@link AgentPoolScanRequestSchema} → {@link AgentPoolScanSchema}; 404 `pool_not_found` (not
 * among the agent's desired pools), 400 `path_not_allowed`, 500 `pool_scan_failed`.
 *
 * @module
 */
import { z } from "zod";
import { CachedImageSchema, PressureConditionSchema } from "./nodes.ts";
import { ListQuerySchema, ResourceNameSchema, TimestampSchema } from "./common.ts";
import { TaskSchema } from "./tasks.ts";

/** Pool types; only `local_dir` (a directory on the node) exists today. */
export const PoolTypeSchema = z.enum(["local_dir"]);
/** A pool type. */
export type PoolType = z.infer<typeof PoolTypeSchema>;

/**
 * The instance's reconciliation status: `pending` until the agent reports the directory,
 * then `ready`, or `failed` with `message` (e.g. `path_not_allowed: …`).
 */
export const PoolStatusSchema = z.enum(["pending", "ready", "failed"]);
/** A pool instance's reconciliation status. */
export type PoolStatus = z.infer<typeof PoolStatusSchema>;

/** A pool instance as `GET /v1/pools` served it before scans (kept as the base shape). */
export const PoolInstanceSchema = z.object({
  id: z.string().uuid(),
  name: z.string(),
  node: z.string(),
  type: PoolTypeSchema,
  path: z.string(),
  status: PoolStatusSchema,
  message: z.string().nullable(),
  /** Size of the filesystem holding the pool, bytes (null until the agent reports it). */
  total_bytes: z.number().int().nullable(),
  /** Free bytes of that filesystem, from the latest heartbeat or scan (null: unknown). */
  available_bytes: z.number().int().nullable(),
  images: z.array(CachedImageSchema),
  /**
   * How many images the pool caches: more than `images.length` when the list is capped at
   * MAX_REPORTED_IMAGES (shared/api/nodes.ts).
   */
  images_total: z.number().int().min(0),
  /** The pool name is the cluster default pool (`GET /v1/cluster/default-pool`). */
  is_default: z.boolean(),
  created_at: TimestampSchema,
  updated_at: TimestampSchema,
});
/** A pool instance (base shape). */
export type PoolInstance = z.infer<typeof PoolInstanceSchema>;

/** What the last scan of an instance found (bytes). */
export const PoolScanSchema = z.object({
  /** When the scan's answer reached the control plane. */
  scanned_at: TimestampSchema,
  total_bytes: z.number().int().min(0),
  available_bytes: z.number().int().min(0),
  /** Bytes allocated on disk by the VM disks of this pool the agent found. */
  vm_disk_bytes: z.number().int().min(0),
  vm_disk_count: z.number().int().min(0),
  /** Bytes of the cached images. */
  image_bytes: z.number().int().min(0),
  image_count: z.number().int().min(0),
});
/** A scan summary. */
export type PoolScan = z.infer<typeof PoolScanSchema>;

/**
 * A pool's pressure conditions: `disk`, set by one scan (default) with less than 15 % of the
 * filesystem free, cleared by the first scan above it (`placement.pressure.disk`).
 */
export const PoolPressureSchema = z.object({ disk: PressureConditionSchema });
/** Pool pressure. */
export type PoolPressure = z.infer<typeof PoolPressureSchema>;

/** A pool instance as every pool endpoint serves it. */
export const PoolInstanceViewSchema = PoolInstanceSchema.extend({
  /**
   * `available_bytes` minus the disks of the VMs placed in this instance that no scan has
   * observed yet (their full size, `disk_gib` GiB each), at least 0; null when
   * `available_bytes` is.
   */
  effective_available_bytes: z.number().int().min(0).nullable(),
  /** Bytes of those pending disks. */
  pending_vm_disk_bytes: z.number().int().min(0),
  /** Null before the first scan. */
  pressure: PoolPressureSchema.nullable(),
  /** Null before the first scan. */
  last_scan: PoolScanSchema.nullable(),
  /** Why the last scan failed (null: it succeeded, or none ran). */
  last_scan_error: z.object({ at: TimestampSchema, code: z.string(), message: z.string() })
    .nullable(),
});
/** A pool instance. */
export type PoolInstanceView = z.infer<typeof PoolInstanceViewSchema>;

/** `GET /v1/pools/{name}`: one pool name with every instance. */
export const PoolSchema = z.object({
  name: z.string(),
  type: PoolTypeSchema,
  /** The name is the cluster default pool. */
  is_cluster_default: z.boolean(),
  /** Ordered by node name. */
  instances: z.array(PoolInstanceViewSchema),
});
/** A pool (aggregated view). */
export type Pool = z.infer<typeof PoolSchema>;

/**
 * A pool path; the allowed-path gate (cp/pools/paths.ts) judges it (absolute, normalized, at
 * most 1024 bytes, under an allowed prefix) and refuses it with `path_not_allowed`.
 */
const PathStringSchema = z.string().min(1, "must not be empty");

/**
 * `POST /v1/pools`: one (name, node) instance. `node` is a node NAME (a UUID is refused with
 * `validation_failed`); `path` must pass the allowed-path gate (`path_not_allowed`).
 */
export const PoolCreateRequestSchema = z.object({
  name: ResourceNameSchema,
  node: ResourceNameSchema,
  path: PathStringSchema,
  type: PoolTypeSchema.default("local_dir"),
}).strict();
/** Pool create body (input form). */
export type PoolCreateRequestInput = z.input<typeof PoolCreateRequestSchema>;
/** Pool create body. */
export type PoolCreateRequest = z.infer<typeof PoolCreateRequestSchema>;

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** True when `s` is a UUID literal (a pool instance or node id). */
export function isUuid(s: string): boolean {
  return UUID_RE.test(s);
}

/** A `what` name (RFC 1123 label) or a UUID (lowercased); other strings are refused. */
function nameOrUuid(what: string) {
  return z.string().transform((s, ctx) => {
    if (isUuid(s)) return s.toLowerCase();
    const r = ResourceNameSchema.safeParse(s);
    if (r.success) return r.data;
    for (const issue of r.error.issues) {
      ctx.addIssue({ code: "custom", message: `must be a ${what} name or UUID: ${issue.message}` });
    }
    return z.NEVER;
  });
}

/** A pool reference in a path: a pool name, or an instance UUID. */
export const PoolRefSchema = nameOrUuid("pool");

/** A node reference in a filter: a node name or a node UUID. */
export const NodeRefSchema = nameOrUuid("node");

/** `GET /v1/pools` query. */
export const PoolListQuerySchema = ListQuerySchema.extend({
  node: NodeRefSchema.optional(),
  type: PoolTypeSchema.optional(),
});

/** `?node=` of `DELETE /v1/pools/{ref}` and `POST /v1/pools/{ref}/scan`: a node name. */
export const PoolNodeQuerySchema = z.object({ node: ResourceNameSchema.optional() });

/** `POST /v1/pools/{ref}/scan` response: the scan task of each instance, with its node. */
export const PoolScansSchema = z.object({
  items: z.array(z.object({
    /** The instance's node. */
    node: z.string(),
    /** The instance's id. */
    id: z.string().uuid(),
    task: TaskSchema,
  })),
});
/** Queued scans. */
export type PoolScans = z.infer<typeof PoolScansSchema>;

/** `POST /v1/pools/scan` on the agent. */
export const AgentPoolScanRequestSchema = z.object({
  name: z.string().min(1).max(63),
  path: z.string().startsWith("/").max(4096),
}).strict();
/** Agent scan request. */
export type AgentPoolScanRequest = z.infer<typeof AgentPoolScanRequestSchema>;

/** One VM disk the agent found for a pool. */
export const ScannedVmDiskSchema = z.object({
  vm_id: z.string().uuid(),
  /** Bytes allocated on disk (not the virtual size). */
  bytes: z.number().int().min(0),
});

/** The agent's answer to a scan. */
export const AgentPoolScanSchema = z.object({
  name: z.string(),
  path: z.string(),
  total_bytes: z.number().int().min(0),
  available_bytes: z.number().int().min(0),
  /** VM disks of this pool (VMs whose manifest names the pool's path). */
  vm_disks: z.array(ScannedVmDiskSchema),
  /** Cached images (complete entries: image plus `.sha256` sidecar) and their bytes. */
  image_count: z.number().int().min(0),
  image_bytes: z.number().int().min(0),
});
/** An agent scan result. */
export type AgentPoolScan = z.infer<typeof AgentPoolScanSchema>;
