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

/** A store member's role: etcd voters take part in quorum; learners replicate only. */
export const MemberRoleSchema = z.enum(["voter", "learner"]);
/** A store member's role. */
export type MemberRole = z.infer<typeof MemberRoleSchema>;

/**
 * One member of the control plane's store (spec 000 "Cluster membership"): on etcd, an etcd
 * member with the replica that runs it; on the embedded store, the one replica.
 */
export const ClusterMemberSchema = z.object({
  /** Member (and replica) name. */
  name: z.string(),
  /** The etcd member id (hex); null on the embedded store. */
  id: z.string().nullable(),
  role: MemberRoleSchema,
  /** True for the store's leader (etcd's raft leader; the one replica when embedded). */
  is_leader: z.boolean(),
  /** The member answered a status request just now. */
  healthy: z.boolean(),
  /** Why it is not healthy (null when healthy). */
  error: z.string().nullable(),
  /** etcd peer and client URLs ([] on the embedded store). */
  peer_urls: z.array(z.string()),
  client_urls: z.array(z.string()),
  /** The replica's API URLs from the replica registry; null when no live replica has the name. */
  api_url: z.string().nullable(),
  agent_url: z.string().nullable(),
  /** A learner: since when it has been waiting to be promoted (null for voters). */
  learner_since: TimestampSchema.nullable(),
});
/** One member of the control plane's store. */
export type ClusterMember = z.infer<typeof ClusterMemberSchema>;

/** `GET /v1/cluster/members` (`node:read`). */
export const ClusterMembersSchema = z.object({
  /** `store.backend`. */
  backend: z.enum(["embedded", "etcd"]),
  /** The replica running the controllers (cp/cluster/leader.ts); null while none leads. */
  controller_leader: z.string().nullable(),
  members: z.array(ClusterMemberSchema),
});
/** The cluster's store members. */
export type ClusterMembers = z.infer<typeof ClusterMembersSchema>;

/** Longest control-plane join token lifetime, seconds (1 day). */
export const MAX_CLUSTER_JOIN_TOKEN_TTL_SECONDS = 24 * 3600;

/** `POST /v1/cluster/join-tokens` body (`cluster:manage`). */
export const ClusterJoinTokenCreateRequestSchema = z.object({
  /** Lifetime, seconds (default 3600). */
  ttl_seconds: z.number().int().min(60).max(MAX_CLUSTER_JOIN_TOKEN_TTL_SECONDS).optional(),
}).strict();
/** Control-plane join token create body. */
export type ClusterJoinTokenCreateRequest = z.infer<typeof ClusterJoinTokenCreateRequestSchema>;

/**
 * A minted control-plane join token: the plaintext is shown once. A replica joins with
 * `otherix-api join --server <agent URL> --token <token> --ca-fingerprint <ca_fingerprint>`.
 */
export const ClusterJoinTokenSchema = z.object({
  id: z.uuid(),
  token: z.string(),
  expires_at: TimestampSchema,
  /** `sha256:<hex>` of the cluster CA certificate's DER, for the joiner to pin. */
  ca_fingerprint: z.string(),
  /** The agent-facing URLs of the live replicas (any of them serves `/v1/cluster/join`). */
  servers: z.array(z.string()),
});
/** A minted control-plane join token. */
export type ClusterJoinToken = z.infer<typeof ClusterJoinTokenSchema>;

/**
 * `POST /v1/cluster/join` (agent port, TLS without a client certificate; the token is the
 * credential): a new replica asks to join. Its certificate's CN is `name`; `peer_url` is
 * where its etcd member listens for peers, `client_url` for clients (https).
 */
export const ClusterJoinRequestSchema = z.object({
  token: z.string().min(1).max(256),
  /** The joining replica's name (`cp_cert.replica_name`, else its hostname). */
  name: z.string().regex(/^[a-z0-9]([a-z0-9.-]{0,62}[a-z0-9])?$/i, "must be a host name"),
  /** PKCS#10 CSR, PEM (its SANs: the joiner's names and addresses). */
  csr_pem: z.string().min(1).max(16 * 1024),
  peer_url: z.url({ protocol: /^https$/ }),
  client_url: z.url({ protocol: /^https$/ }),
}).strict();
/** Join request. */
export type ClusterJoinRequest = z.infer<typeof ClusterJoinRequestSchema>;

/** The answer to a join: what the new replica needs to start its etcd member as a learner. */
export const ClusterJoinResponseSchema = z.object({
  /** The cluster CA certificate, PEM (the joiner checks it against its pin). */
  ca_pem: z.string(),
  /** The joiner's replica certificate (CN = name, O = otherix:control-plane), PEM. */
  cert_pem: z.string(),
  /** The etcd CA certificate (etcd trusts only it: cp/cluster/etcd_runtime.ts), PEM. */
  etcd_ca_pem: z.string(),
  /** The joiner's etcd certificate for the same key (O = otherix:etcd), PEM. */
  etcd_cert_pem: z.string(),
  /** etcd `--initial-cluster` for the joiner (`name=peerURL,…`, itself included). */
  initial_cluster: z.string(),
  /** etcd client URLs of the members (the joiner's store connects to these). */
  endpoints: z.array(z.string()).min(1),
});
/** Join answer. */
export type ClusterJoinResponse = z.infer<typeof ClusterJoinResponseSchema>;
