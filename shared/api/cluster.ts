/**
 * Cluster configuration (spec 001 "Cluster configuration", "Cluster default-pool
 * configuration"): the cluster default pool, the pool NAME `vm create` falls back to when the
 * request names none.
 *
 * - `GET /v1/cluster/default-pool` (any role) → {@link ClusterDefaultPoolSchema};
 * - `PUT /v1/cluster/default-pool` {@link SetDefaultPoolRequestSchema} (admin,
 *   `cluster:manage`) → ClusterDefaultPool; the name is matched case-insensitively against the
 *   existing pools (404 `pool_not_found` when no instance has it; 400 `validation_failed` for
 *   a UUID or a malformed name);
 * - `DELETE /v1/cluster/default-pool` (admin, `cluster:manage`) → ClusterDefaultPool with
 *   `default_pool_name: null`; `vm create` without a pool then fails with 400
 *   `default_pool_not_set`.
 *
 * @module
 */
import { z } from "zod";
import { ResourceNameSchema, TimestampSchema } from "./common.ts";

/** The cluster default pool setting. */
export const ClusterDefaultPoolSchema = z.object({
  /** The default pool's name; null: none configured. */
  default_pool_name: z.string().nullable(),
  /** Last change (null: never set). */
  updated_at: TimestampSchema.nullable(),
});
/** The cluster default pool setting. */
export type ClusterDefaultPool = z.infer<typeof ClusterDefaultPoolSchema>;

/** `PUT /v1/cluster/default-pool` body: a pool name, any case (`Fast-SSD` → `fast-ssd`). */
export const SetDefaultPoolRequestSchema = z.object({
  name: z.string().max(63, "must be at most 63 characters (RFC 1123 DNS label)")
    .transform((s) => s.toLowerCase())
    .pipe(ResourceNameSchema),
}).strict();
/** Set-default-pool body. */
export type SetDefaultPoolRequest = z.infer<typeof SetDefaultPoolRequestSchema>;

/**
 * A live control-plane replica as it registers itself (`/replicas/<name>`, attached to a
 * store lease of `workers.lease_ttl_seconds`: it disappears within that long after the
 * replica dies). Agents receive every replica's `agent_url` in heartbeat responses and fail
 * over between them; `GET /v1/cluster/members` shows them.
 */
export const ReplicaSchema = z.object({
  /** The replica name (its certificate CN: `cp_cert.replica_name`, else the hostname). */
  name: z.string().min(1).max(64),
  /** Where clients reach its public API (`http(s)://host:port`). */
  api_url: z.url({ protocol: /^https?$/ }),
  /** Where agents reach its agent API (`https://host:port`). */
  agent_url: z.url({ protocol: /^https$/ }),
  /** Its `otherix-api` version. */
  version: z.string(),
  /** When it started (ISO 8601). */
  started_at: TimestampSchema,
});
/** A live control-plane replica. */
export type Replica = z.infer<typeof ReplicaSchema>;
