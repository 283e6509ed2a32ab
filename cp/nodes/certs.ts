/**
 * Node certificates: issuing (bootstrap and renewal), fingerprint pinning and the check every
 * agent call on the agent-facing port goes through.
 *
 * Pinning: the node record's `cert_fingerprint` is `sha256:<hex>` of the DER of the newest
 * certificate issued to the node. Only that certificate is accepted for heartbeats, reports and
 * renewals; a re-bootstrapped node's previous certificate and a renewed node's previous
 * certificate are refused with 401 `unauthenticated`, although both are still CA-signed and
 * unexpired. A record without a pin (written before pinning existed) accepts any CA-signed
 * certificate for its name until its next renewal pins one. A deleted node (no record) is
 * refused with 404 `node_not_found`.
 *
 * Renewal (`POST /v1/nodes/renew`, shared/api/nodes.ts RenewRequest/RenewResponse): the agent
 * authenticates with its current pinned certificate and sends a CSR for the same CN; the
 * control plane signs it with the agent-certificate lifetime and pins the new fingerprint with
 * a compare-and-swap, so of two concurrent renewals (or a renewal racing a re-bootstrap) only
 * one wins; the loser's certificate is never handed out.
 *
 * Lifetime: `nodes.agent_cert_validity_seconds` (default {@link
 * DEFAULT_AGENT_CERT_VALIDITY_SECONDS}, 365 days), read through
 * {@link agentCertValiditySeconds}.
 *
 * @module
 */
import type { RenewResponse } from "../../shared/api/nodes.ts";
import { AGENT_CERT_ORG } from "../../shared/constants.ts";
import { ApiError } from "../../shared/errors.ts";
import { certFingerprint, certInfo, csrCommonName, signCsr } from "../../shared/pki.ts";
import type { ApiConfig } from "../config.ts";
import type { CpContext } from "../context.ts";
import { keys, type NodeRecord } from "../repo/records.ts";
import { updateKey } from "../store/store.ts";

/** Default lifetime of an agent certificate, seconds (365 days). */
export const DEFAULT_AGENT_CERT_VALIDITY_SECONDS = 365 * 24 * 3600;

const DAY_S = 24 * 3600;

/**
 * The agent-certificate lifetime, seconds: `nodes.agent_cert_validity_seconds`, else
 * {@link DEFAULT_AGENT_CERT_VALIDITY_SECONDS}.
 */
export function agentCertValiditySeconds(cfg: ApiConfig): number {
  return cfg.nodes.agent_cert_validity_seconds ?? DEFAULT_AGENT_CERT_VALIDITY_SECONDS;
}

/**
 * The pin of a certificate: `sha256:<hex>` of its DER (what `NodeRecord.cert_fingerprint`
 * stores). @throws when `certPem` is not a certificate
 */
export async function certPin(certPem: string): Promise<string> {
  return await certFingerprint(certPem);
}

/** A certificate issued to a node, with its pin. */
export interface IssuedAgentCert {
  certPem: string;
  /** `sha256:<hex>` of the DER (store it as the node's `cert_fingerprint`). */
  fingerprint: string;
  notAfter: Date;
}

/**
 * Signs `csrPem` for node `nodeName` (CN = `nodeName`, O = AGENT_CERT_ORG) with the configured
 * agent-certificate lifetime (bootstrap and renewal use this).
 *
 * @throws ApiError `validation_failed` for a bad CSR (shared/pki.ts signCsr)
 */
export async function issueAgentCert(
  ctx: CpContext,
  csrPem: string,
  nodeName: string,
): Promise<IssuedAgentCert> {
  const days = agentCertValiditySeconds(ctx.cfg) / DAY_S;
  const certPem = await signCsr(ctx.pki.ca, csrPem, nodeName, AGENT_CERT_ORG, days);
  return { certPem, fingerprint: await certPin(certPem), notAfter: certInfo(certPem).notAfter };
}

/**
 * Refuses a certificate that is not `node`'s pinned one (records without a pin accept any).
 *
 * @param presented `sha256:<hex>` of the presented certificate's DER, null when unknown
 * @throws ApiError `node_not_found` when the node has no record (deleted),
 *   `unauthenticated` when the node pins another certificate
 */
export function checkPin(node: NodeRecord | null, name: string, presented: string | null): void {
  if (!node) throw new ApiError("node_not_found", `node "${name}" is not registered`);
  const pinned = node.cert_fingerprint ?? null;
  if (pinned !== null && presented !== pinned) {
    throw new ApiError(
      "unauthenticated",
      `the client certificate of node "${name}" has been superseded (re-bootstrapped or ` +
        `renewed); only the node's newest certificate is accepted`,
    );
  }
}

/**
 * Checks the verified client certificate of node `name` (fingerprint `presented`) against its
 * record. @throws ApiError as {@link checkPin}
 */
export async function authenticateNodeCert(
  ctx: CpContext,
  name: string,
  presented: string | null,
): Promise<void> {
  // The informer cache answers the common case (the pinned certificate of an existing node);
  // anything else is decided on the store's current record (a just-renewed certificate the
  // cache has not seen yet is accepted, a refusal is never based on a stale cache).
  const cached = ctx.cache?.nodes.get(keys.node(name));
  if (cached && cached.cert_fingerprint && cached.cert_fingerprint === presented) return;
  const rec = (await ctx.store.get<NodeRecord>(keys.node(name)))?.value ?? null;
  checkPin(rec, name, presented);
}

/**
 * Renews node `name`'s certificate: signs `csrPem` (which must ask for CN = `name`) and pins
 * the new certificate in the node record, provided the record still pins `presented` (the
 * certificate the request came with) or pins nothing. Logs `node certificate renewed`.
 *
 * @param presented `sha256:<hex>` of the client certificate of the request
 * @returns the new certificate and the CA (RenewResponse)
 * @throws ApiError `validation_failed` (not a CSR, bad key or signature),
 *   `permission_denied` (the CSR names another node), `node_not_found` (deleted node),
 *   `unauthenticated` (the presented certificate is no longer the pinned one, e.g. a
 *   concurrent renewal or re-bootstrap won)
 */
export async function renewNodeCert(
  ctx: CpContext,
  name: string,
  presented: string,
  csrPem: string,
): Promise<RenewResponse> {
  const cn = csrCommonName(csrPem);
  if (cn !== name) {
    throw new ApiError(
      "permission_denied",
      `the CSR asks for CN=${cn ?? "(none)"} but the client certificate is node "${name}"'s`,
    );
  }
  const issued = await issueAgentCert(ctx, csrPem, name);
  await updateKey<NodeRecord>(ctx.store, keys.node(name), (cur) => {
    checkPin(cur, name, presented);
    return {
      ...cur!,
      cert_fingerprint: issued.fingerprint,
      updated_at: ctx.now().toISOString(),
    };
  });
  ctx.log.info("node certificate renewed", {
    node: name,
    fingerprint: issued.fingerprint,
    previous: presented,
    not_after: issued.notAfter.toISOString(),
  });
  return { certificate_pem: issued.certPem, ca_pem: ctx.pki.ca.certPem };
}
