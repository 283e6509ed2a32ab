/**
 * The agent-facing API (TLS on `server.agent_listen`, default `:8443`, served with the
 * replica certificate; client certificates are requested and verified against the cluster
 * CA but only required where noted):
 * - `GET /healthz`
 * - `GET /v1/ca` → CaResponse (no client certificate)
 * - `POST /v1/nodes/bootstrap` BootstrapRequest → BootstrapResponse (no client certificate;
 *   401 `unauthenticated` / `token_expired` / `token_exhausted`)
 * - `POST /v1/nodes/heartbeat` HeartbeatRequest → HeartbeatResponse (client certificate from
 *   the cluster CA with O = AGENT_CERT_ORG, else 401 `unauthenticated`; `node_name` must be
 *   the certificate CN, else 403 `permission_denied`)
 * - `POST /v1/nodes/report` NodeReport → 204 (the same client-certificate rules): VM and task
 *   transitions pushed by the agent as they happen
 * - `POST /v1/nodes/renew` RenewRequest → RenewResponse (the same client-certificate rules; a
 *   CSR for the certificate's CN, else 403 `permission_denied`): a fresh certificate, pinned
 *   (cp/nodes/certs.ts)
 *
 * Heartbeats, reports and renewals are also refused with 401 `unauthenticated` when the client
 * certificate is not the one the node record pins (a re-bootstrapped or renewed node's
 * previous certificate), and with 404 `node_not_found` when the node has no record (deleted);
 * both before the body is read.
 *
 * @module
 */
import type { TLSSocket } from "node:tls";
import { Hono, type MiddlewareHandler } from "hono";
import { AGENT_CERT_ORG } from "../../shared/constants.ts";
import {
  BootstrapRequestSchema,
  type CaResponse,
  RenewRequestSchema,
} from "../../shared/api/nodes.ts";
import { HeartbeatRequestSchema, NodeReportSchema } from "../../shared/api/agent.ts";
import { ApiError } from "../../shared/errors.ts";
import { errorHandler, notFoundHandler, requestLogger } from "../../shared/http.ts";
import { validate } from "../routes/validate.ts";
import { derFingerprint } from "../../shared/pki.ts";
import { peerOf, type TlsEnv } from "../../shared/tls.ts";
import type { CpContext } from "../context.ts";
import { authenticateNodeCert, renewNodeCert } from "./certs.ts";
import { applyHeartbeat, applyReport, bootstrapNode } from "./service.ts";
import { bodyLimit } from "../routes/body_limit.ts";

/**
 * Largest request body accepted on the agent port, bytes (8 MiB: a heartbeat of a node hosting
 * 10,000 VMs is about 1 MB; pool image lists are capped at MAX_REPORTED_IMAGES).
 */
export const AGENT_BODY_LIMIT = 8 * 1024 * 1024;

type Incoming = Parameters<typeof peerOf>[0];

/** A verified agent client certificate: its node (CN) and `sha256:<hex>` of its DER. */
interface AgentCert {
  node: string;
  fingerprint: string;
}

/** The DER of the request's TLS client certificate (null when none). */
function peerDer(incoming: Incoming): Uint8Array | null {
  const socket = incoming?.socket as TLSSocket | undefined;
  const raw = socket?.getPeerCertificate?.()?.raw as Uint8Array | undefined;
  return raw && raw.length > 0 ? raw : null;
}

/** Builds the agent-facing app. */
export function agentApiApp(ctx: CpContext): Hono<TlsEnv> {
  const app = new Hono<TlsEnv>();
  app.onError(errorHandler(ctx.log));
  app.notFound(notFoundHandler);
  app.use("*", requestLogger(ctx.log));
  app.use("*", bodyLimit(AGENT_BODY_LIMIT));

  app.get("/healthz", (c) => c.json({ status: "ok" }));

  app.get("/v1/ca", (c) => {
    const res: CaResponse = { ca_pem: ctx.pki.ca.certPem, fingerprint: ctx.pki.caFingerprint };
    return c.json(res);
  });

  app.post("/v1/nodes/bootstrap", validate("json", BootstrapRequestSchema), async (c) => {
    const body = c.req.valid("json");
    return c.json(await bootstrapNode(ctx, body.token, body.csr_pem));
  });

  /**
   * The node of a request's verified agent certificate, and that certificate's fingerprint.
   * @throws ApiError unauthenticated
   */
  const agentCert = async (incoming: Incoming, what: string): Promise<AgentCert> => {
    const peer = peerOf(incoming);
    const raw = peer.authorized ? peerDer(incoming) : null;
    if (
      !peer.authorized || peer.organization !== AGENT_CERT_ORG || !peer.commonName || !raw
    ) {
      throw new ApiError(
        "unauthenticated",
        `${what} require a node client certificate issued by the cluster CA`,
      );
    }
    return { node: peer.commonName, fingerprint: await derFingerprint(raw) };
  };

  /**
   * The node of a request whose certificate is the node's pinned one.
   * @throws ApiError unauthenticated, node_not_found
   */
  const agentNode = async (incoming: Incoming, what: string): Promise<AgentCert> => {
    const cert = await agentCert(incoming, what);
    await authenticateNodeCert(ctx, cert.node, cert.fingerprint);
    return cert;
  };

  // The certificate (and its pin) is checked before the body is read or validated.
  const requireAgent = (what: string): MiddlewareHandler<TlsEnv> => async (c, next) => {
    await agentNode(c.env?.incoming, what);
    await next();
  };

  app.post(
    "/v1/nodes/heartbeat",
    requireAgent("heartbeats"),
    validate("json", HeartbeatRequestSchema),
    async (c) => {
      const { node } = await agentCert(c.env?.incoming, "heartbeats");
      const body = c.req.valid("json");
      return c.json(await applyHeartbeat(ctx, node, body));
    },
  );

  app.post(
    "/v1/nodes/report",
    requireAgent("reports"),
    validate("json", NodeReportSchema),
    async (c) => {
      const { node } = await agentCert(c.env?.incoming, "reports");
      const body = c.req.valid("json");
      await applyReport(ctx, node, body);
      return c.body(null, 204);
    },
  );

  app.post(
    "/v1/nodes/renew",
    requireAgent("certificate renewals"),
    validate("json", RenewRequestSchema),
    async (c) => {
      const { node, fingerprint } = await agentCert(c.env?.incoming, "certificate renewals");
      const body = c.req.valid("json");
      return c.json(await renewNodeCert(ctx, node, fingerprint, body.csr_pem));
    },
  );

  return app;
}
