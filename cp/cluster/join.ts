/**
 * Control-plane joins (issue 11; spec 000 "join-node"): an admin mints a single-use join
 * token (`POST /v1/cluster/join-tokens`, `otherix cluster join-token create`), and a new
 * replica redeems it at `POST /v1/cluster/join` on any replica's agent port
 * (`otherix-api join --server URL --token T --ca-fingerprint sha256:…`, cp/cluster/joiner.ts).
 *
 * A join consumes the token first (one transaction: a token joins one replica even when two
 * joiners race), then signs the joiner's CSR as a replica certificate (CN = its name,
 * O = `otherix:control-plane`, its requested SANs) and adds it to etcd as a learner; the promote
 * loop (cp/cluster/promote.ts) makes it a voter once it has caught up. The same CSR is signed
 * by the etcd CA too (its etcd certificate: cp/cluster/etcd_runtime.ts).
 *
 * Only the token's SHA-256 is stored (`/cluster-join-tokens/<sha256 hex>`), like node join
 * tokens (cp/join_tokens.ts).
 *
 * @module
 */
import type {
  ClusterJoinRequest,
  ClusterJoinResponse,
  ClusterJoinToken,
  ClusterJoinTokenCreateRequest,
} from "../../shared/api/cluster.ts";
import { CP_CERT_ORG } from "../../shared/constants.ts";
import { ApiError } from "../../shared/errors.ts";
import { signCsr } from "../../shared/pki.ts";
import { generateJoinToken, hashToken } from "../auth/tokens.ts";
import type { CpContext } from "../context.ts";
import { checkJoinToken } from "../join_tokens.ts";
import { updateKey } from "../store/store.ts";
import { agentUrls, liveReplicas } from "./replicas.ts";
import { ETCD_CERT_ORG, etcdCa } from "./etcd_runtime.ts";

/** Default lifetime of a control-plane join token, seconds. */
export const DEFAULT_CLUSTER_JOIN_TOKEN_TTL_SECONDS = 3600;

/** Validity of a joined replica's certificate, days (as the first replica's, cp/pki.ts). */
const REPLICA_CERT_DAYS = 825;

/** A stored control-plane join token (`/cluster-join-tokens/<sha256 hex>`). */
export interface ClusterJoinTokenRecord {
  id: string;
  token_hash: string;
  max_uses: number;
  uses: number;
  expires_at: string;
  created_at: string;
  /** User id of the creator. */
  created_by: string;
}

/** The store key of the control-plane join token with hash `hash`. */
export function clusterJoinTokenKey(hash: string): string {
  return `/cluster-join-tokens/${hash}`;
}

/** Refuses joins on the embedded store (it has no members to add). */
function requireEtcd(ctx: CpContext) {
  if (!ctx.etcd) {
    throw new ApiError(
      "conflict",
      "this control plane runs on the embedded store (store.backend: embedded): replicas " +
        "cannot join it; run every replica with store.backend: etcd",
    );
  }
  return ctx.etcd;
}

/**
 * Mints a single-use control-plane join token (shown once).
 *
 * @throws ApiError `conflict` on the embedded store; `internal_error` on an id collision
 */
export async function createClusterJoinToken(
  ctx: CpContext,
  req: ClusterJoinTokenCreateRequest,
  createdBy: string,
): Promise<ClusterJoinToken> {
  requireEtcd(ctx);
  const now = ctx.now();
  const token = generateJoinToken();
  const rec: ClusterJoinTokenRecord = {
    id: crypto.randomUUID(),
    token_hash: await hashToken(token),
    max_uses: 1,
    uses: 0,
    expires_at: new Date(
      now.getTime() + (req.ttl_seconds ?? DEFAULT_CLUSTER_JOIN_TOKEN_TTL_SECONDS) * 1000,
    ).toISOString(),
    created_at: now.toISOString(),
    created_by: createdBy,
  };
  const key = clusterJoinTokenKey(rec.token_hash);
  const res = await ctx.store.txn({
    compare: [{ key, absent: true }],
    success: [{ type: "put", key, value: rec }],
  });
  if (!res.succeeded) throw new ApiError("internal_error", "join token hash collision");
  return {
    id: rec.id,
    token,
    expires_at: rec.expires_at,
    ca_fingerprint: ctx.pki.caFingerprint,
    servers: agentUrls(liveReplicas(ctx.cache?.replicas), ctx.pki.replicaName),
  };
}

/**
 * Consumes one use of control-plane join token `token` (see the module doc).
 *
 * @throws ApiError `unauthenticated` (unknown), `token_expired`, `token_exhausted`
 */
async function consumeToken(ctx: CpContext, token: string): Promise<ClusterJoinTokenRecord> {
  const key = clusterJoinTokenKey(await hashToken(token));
  for (let attempt = 0; attempt < 20; attempt++) {
    const cur = await ctx.store.get<ClusterJoinTokenRecord>(key);
    const rec = checkJoinToken(cur?.value ?? null, ctx.now());
    const used = { ...rec, uses: rec.uses + 1 };
    const res = await ctx.store.txn({
      compare: [{ key, modRevision: cur!.modRevision }],
      success: [{ type: "put", key, value: used }],
    });
    if (res.succeeded) return used;
  }
  throw new ApiError("internal_error", "join token redemption: too many concurrent attempts");
}

/** Gives back the use a failed join consumed. */
async function refundToken(ctx: CpContext, token: string): Promise<void> {
  const key = clusterJoinTokenKey(await hashToken(token));
  await updateKey<ClusterJoinTokenRecord>(
    ctx.store,
    key,
    (cur) => cur ? { ...cur, uses: Math.max(0, cur.uses - 1) } : undefined,
  ).catch((e) => ctx.log.warn("cluster: cannot give back a join token use", { err: e }));
}

/**
 * Joins a replica (see the module doc). The name must not be a live replica's.
 *
 * @throws ApiError `conflict` (embedded store; the name is taken), `unauthenticated` /
 *   `token_expired` / `token_exhausted` (the token), `validation_failed` (the CSR), and what
 *   {@link EtcdCluster.addLearner} raises
 */
export async function joinReplica(
  ctx: CpContext,
  req: ClusterJoinRequest,
): Promise<ClusterJoinResponse> {
  const etcd = requireEtcd(ctx);
  await consumeToken(ctx, req.token);
  if (liveReplicas(ctx.cache?.replicas).some((r) => r.name === req.name)) {
    throw new ApiError("conflict", `a live replica is already named "${req.name}"`, {
      name: req.name,
    });
  }
  const certPem = await signCsr(ctx.pki.ca, req.csr_pem, req.name, CP_CERT_ORG, REPLICA_CERT_DAYS);
  const etcdCaPair = await etcdCa(ctx.store);
  const etcdCertPem = await signCsr(
    etcdCaPair,
    req.csr_pem,
    req.name,
    ETCD_CERT_ORG,
    REPLICA_CERT_DAYS,
  );
  const added = await etcd.addLearner(req.name, req.peer_url).catch(async (e) => {
    await refundToken(ctx, req.token); // the join did not happen: the token may be used again
    throw e;
  });
  ctx.log.info("cluster: replica joined as a learner", {
    replica: req.name,
    peer_url: req.peer_url,
  });
  return {
    ca_pem: ctx.pki.ca.certPem,
    cert_pem: certPem,
    etcd_ca_pem: etcdCaPair.certPem,
    etcd_cert_pem: etcdCertPem,
    initial_cluster: added.initialCluster,
    endpoints: added.endpoints,
  };
}
