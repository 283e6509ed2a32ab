/**
 * Nodes, join tokens, the cluster CA and the agent bootstrap/heartbeat protocol
 * (spec: developer guide "Nodes", "Step 1 — run seed-dev"; troubleshooting "Bootstrap failures").
 *
 * Endpoints on the public API: `GET /v1/nodes`, `GET /v1/nodes/{name}`,
 * `POST /v1/nodes/join-tokens`. On the agent-facing TLS port: `GET /v1/ca` and
 * `POST /v1/nodes/bootstrap` (no client certificate); heartbeats and reports are part of the
 * agent protocol (`agent.ts`).
 *
 * @module
 */
import { z } from "zod";
import { MAX_JOIN_TOKEN_TTL_SECONDS } from "../constants.ts";
import {
  ArchitectureSchema,
  ResourceNameSchema,
  Sha256HexSchema,
  TimestampSchema,
} from "./common.ts";

/**
 * Node lifecycle (spec: troubleshooting "node states"): `pending` after bootstrap → `ready` on
 * a heartbeat → `unreachable` (no heartbeat for `nodes.stale_threshold_seconds`) → `gone`
 * (unreachable past `nodes.gone_grace_seconds`); any heartbeat brings it back to `ready`.
 */
export const NodeStatusSchema = z.enum(["pending", "ready", "unreachable", "gone"]);
/** Node lifecycle state. */
export type NodeStatus = z.infer<typeof NodeStatusSchema>;

/** Capacity figures an agent reports in each heartbeat. */
export const NodeResourcesSchema = z.object({
  cpu_cores_total: z.number().int().min(0),
  /** 1-minute load average (informational). */
  load_average_1m: z.number().min(0),
  memory_total_mib: z.number().int().min(0),
  memory_available_mib: z.number().int().min(0),
  /** Root filesystem of the node, bytes. */
  system_disk_total_bytes: z.number().int().min(0),
  system_disk_available_bytes: z.number().int().min(0),
});
/** Node capacity figures. */
export type NodeResources = z.infer<typeof NodeResourcesSchema>;

/**
 * One node-pressure condition (spec 001 "Node-pressure detection"): set after
 * `consecutive_required` heartbeats in a row with less than `threshold_percent` free, cleared
 * by the first healthy heartbeat.
 */
export const PressureConditionSchema = z.object({
  under_pressure: z.boolean(),
  /** Low readings in a row so far (0 after a healthy one). */
  consecutive: z.number().int().min(0),
  /** When the condition was set (null while clear). */
  since: TimestampSchema.nullable(),
  /** Free share at the last heartbeat, percent (null when unknown). */
  available_percent: z.number().min(0).max(100).nullable(),
});
/** A pressure condition. */
export type PressureCondition = z.infer<typeof PressureConditionSchema>;

/** A node's pressure conditions. */
export const NodePressureSchema = z.object({
  memory: PressureConditionSchema,
  system_disk: PressureConditionSchema,
});
/** A node's pressure conditions. */
export type NodePressure = z.infer<typeof NodePressureSchema>;

/** A node as the public API serves it. */
export const NodeSchema = z.object({
  id: z.string().uuid(),
  name: z.string(),
  status: NodeStatusSchema,
  architecture: ArchitectureSchema.nullable(),
  cordoned: z.boolean(),
  /** The agent's advertised mTLS endpoint, e.g. `https://10.0.0.5:9443`. */
  endpoint: z.string().nullable(),
  /** `kvm` or `tcg`, as detected by the agent. */
  accelerator: z.enum(["kvm", "tcg"]).nullable(),
  agent_version: z.string().nullable(),
  resources: NodeResourcesSchema.nullable(),
  /** Host other nodes dial for live migration (null in the reduced view or unreported). */
  migration_host: z.string().nullable(),
  /** Ports open for incoming migrations, `"<lo>-<hi>"` (null like `migration_host`). */
  migration_port_range: z.string().nullable(),
  vm_count: z.number().int().min(0),
  /** vCPUs of the VMs placed on the node (null in the reduced view). */
  allocated_vcpus: z.number().int().min(0).nullable(),
  /** Memory of the VMs placed on the node, MiB (null in the reduced view). */
  allocated_memory_mib: z.number().int().min(0).nullable(),
  /** Pressure conditions (null in the reduced view or before the first heartbeat). */
  pressure: NodePressureSchema.nullable(),
  last_heartbeat_at: TimestampSchema.nullable(),
  created_at: TimestampSchema,
  updated_at: TimestampSchema,
});
/** A node. */
export type Node = z.infer<typeof NodeSchema>;

/** `POST /v1/nodes/join-tokens` body. */
export const JoinTokenCreateRequestSchema = z.object({
  /** The node name the token may register (the issued certificate's CN). */
  node_name: ResourceNameSchema,
  /** Lifetime, seconds (default 600). */
  ttl_seconds: z.number().int().min(1).max(MAX_JOIN_TOKEN_TTL_SECONDS).optional(),
  /** How many redemptions the token allows (default 1). */
  max_uses: z.number().int().min(1).max(1000).optional(),
});
/** Join token create body. */
export type JoinTokenCreateRequest = z.infer<typeof JoinTokenCreateRequestSchema>;

/** A join token as listed (`GET /v1/nodes/join-tokens`): metadata only, never the secret. */
export const JoinTokenSchema = z.object({
  id: z.string().uuid(),
  node_name: z.string(),
  max_uses: z.number().int(),
  uses: z.number().int(),
  uses_left: z.number().int().min(0),
  expires_at: TimestampSchema,
  /** True once expired or used up (kept listed until it is revoked or purged). */
  expired: z.boolean(),
  created_at: TimestampSchema,
  /** User id of the creator. */
  created_by: z.string(),
});
/** A listed join token. */
export type JoinToken = z.infer<typeof JoinTokenSchema>;

/** `GET /v1/nodes?architecture=&status=` filters (plus the list paging query). */
export const NodeListFilterSchema = z.object({
  architecture: ArchitectureSchema.optional(),
  status: NodeStatusSchema.optional(),
});

/** `DELETE /v1/nodes/{name}?force=`: force removes a node that still hosts VMs (marked lost). */
export const NodeDeleteQuerySchema = z.object({
  force: z.enum(["true", "false"]).optional().transform((v) => v === "true"),
});

/** `POST /v1/nodes/{name}/ping` response: the control plane dialled the agent. */
export const NodePingSchema = z.object({
  node: z.string(),
  endpoint: z.string(),
  /** Round trip of `GET /healthz` over mTLS, milliseconds. */
  rtt_ms: z.number().min(0),
  agent_version: z.string().nullable(),
});
/** A ping result. */
export type NodePing = z.infer<typeof NodePingSchema>;

/**
 * `POST /v1/nodes/renew` on the agent-facing port (mTLS with the node's current certificate):
 * a CSR for the same node name; answered with a fresh certificate. The node record then pins
 * the new certificate's fingerprint and the previous one is refused.
 */
export const RenewRequestSchema = z.object({ csr_pem: z.string().min(1).max(16 * 1024) });
/** Renewal response. */
export const RenewResponseSchema = z.object({
  certificate_pem: z.string(),
  ca_pem: z.string(),
});
/** A renewal response. */
export type RenewResponse = z.infer<typeof RenewResponseSchema>;

/** Join token create response; `token` is shown once and stored only as a hash. */
export const JoinTokenCreateResponseSchema = z.object({
  id: z.string().uuid(),
  token: z.string(),
  node_name: z.string(),
  max_uses: z.number().int(),
  expires_at: TimestampSchema,
  /** `sha256:<hex>` of the cluster CA certificate's DER, for the agent to pin. */
  ca_fingerprint: z.string(),
});
/** Join token create response. */
export type JoinTokenCreateResponse = z.infer<typeof JoinTokenCreateResponseSchema>;

/** `sha256:<64 hex>` fingerprint of a certificate's DER encoding. */
export const FingerprintSchema = z
  .string()
  .regex(/^sha256:[0-9a-f]{64}$/, "must be sha256:<64 lowercase hex>");

/** `GET /v1/ca` response. */
export const CaResponseSchema = z.object({
  ca_pem: z.string(),
  fingerprint: FingerprintSchema,
});
/** The cluster CA as served. */
export type CaResponse = z.infer<typeof CaResponseSchema>;

/** `POST /v1/nodes/bootstrap` body: redeem a join token with a PKCS#10 CSR. */
export const BootstrapRequestSchema = z.object({
  token: z.string().min(1).max(512),
  /** PEM `CERTIFICATE REQUEST`; its subject is ignored (the CA sets CN = node name). */
  csr_pem: z.string().min(1).max(16 * 1024),
});
/** Bootstrap body. */
export type BootstrapRequest = z.infer<typeof BootstrapRequestSchema>;

/** `POST /v1/nodes/bootstrap` response. */
export const BootstrapResponseSchema = z.object({
  node_name: z.string(),
  certificate_pem: z.string(),
  ca_pem: z.string(),
});
/** Bootstrap response. */
export type BootstrapResponse = z.infer<typeof BootstrapResponseSchema>;

/** A cached image in a pool, as the agent reports it. */
export const CachedImageSchema = z.object({
  basename: z.string(),
  sha256: Sha256HexSchema,
  size_bytes: z.number().int().min(0),
});
/** A cached image. */
export type CachedImage = z.infer<typeof CachedImageSchema>;

/**
 * Most cached images of one pool a heartbeat lists (and the control plane stores): a pool
 * caching more is reported with the first this many (by basename) and `images_total`, so a
 * node's heartbeat and its pool records stay far below the store's value limit.
 */
export const MAX_REPORTED_IMAGES = 500;

/** A pool instance as the agent observes it. */
export const ObservedPoolSchema = z.object({
  name: z.string(),
  path: z.string(),
  status: z.enum(["ready", "failed"]),
  /** Why the pool is `failed`, if it is. */
  message: z.string().nullable(),
  total_bytes: z.number().int().min(0),
  available_bytes: z.number().int().min(0),
  images: z.array(CachedImageSchema),
  /** How many images the pool caches when `images` was capped at MAX_REPORTED_IMAGES. */
  images_total: z.number().int().min(0).optional(),
});
/** An observed pool. */
export type ObservedPool = z.infer<typeof ObservedPoolSchema>;
