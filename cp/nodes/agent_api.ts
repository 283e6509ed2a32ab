/**
 * The agent-facing API (TLS on `server.agent_listen`, default `:8443`, served with the
 * replica certificate; client certificates are requested and verified against the cluster
 * CA but only required where noted):
 * - `GET /healthz`
 * - `GET /v1/ca` → CaResponse (no client certificate)
 * - `POST /v1/cluster/join` ClusterJoinRequest → ClusterJoinResponse (no client certificate;
 *   a control-plane join token: cp/cluster/join.ts)
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
import { ClusterJoinRequestSchema } from "../../shared/api/cluster.ts";
import { joinReplica } from "../cluster/join.ts";
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
import { derFingerprintSync } from "../../shared/pki.ts";
import type { TlsEnv } from "../../shared/tls.ts";
import type { CpContext } from "../context.ts";
import { authenticateNodeCert, renewNodeCert } from "./certs.ts";
import { applyHeartbeat, applyReport, bootstrapNode } from "./service.ts";
import { bodyLimit, requireJsonContentType } from "../routes/body_limit.ts";

/**
 * Largest request body accepted on the agent port, bytes (8 MiB: a heartbeat of a node hosting
 * 10,000 VMs is about 1 MB; pool image lists are capped at MAX_REPORTED_IMAGES).
 */
export const AGENT_BODY_LIMIT = 8 * 1024 * 1024;

type Incoming = TlsEnv["Bindings"]["incoming"] | undefined;

/** A verified agent client certificate: its node (CN) and `sha256:<hex>` of its DER. */
interface AgentCert {
  node: string;
  fingerprint: string;
}

/** Hono env of the agent port: the verified agent certificate of requests that need one. */
type AgentEnv = TlsEnv & { Variables: { agent: AgentCert } };

/**
 * The request's verified agent certificate (one `getPeerCertificate` call: it decodes the
 * certificate every time).
 *
 * @throws ApiError unauthenticated (no certificate, not from the cluster CA, not a node's)
 */
function agentCert(incoming: Incoming, what: string): AgentCert {
  const socket = incoming?.socket as TLSSocket | undefined;
  const cert = socket?.authorized ? socket.getPeerCertificate?.() : undefined;
  const subject = (cert?.subject ?? {}) as unknown as Record<string, string | string[]>;
  const first = (v: string | string[] | undefined) => (Array.isArray(v) ? v[0] : v) ?? null;
  const raw = cert?.raw as Uint8Array | undefined;
  const cn = first(subject.CN);
  if (!cert || first(subject.O) !== AGENT_CERT_ORG || !cn || !raw || raw.length === 0) {
    throw new ApiError(
      "unauthenticated",
      `${what} require a node client certificate issued by the cluster CA`,
    );
  }
  return { node: cn, fingerprint: derFingerprintSync(raw) };
}

/** Builds the agent-facing app. */
export function agentApiApp(ctx: CpContext): Hono<AgentEnv> {
  const app = new Hono<AgentEnv>();
  app.onError(errorHandler(ctx.log));
  app.notFound(notFoundHandler);
  app.use("*", requestLogger(ctx.log));
  app.use("*", bodyLimit(AGENT_BODY_LIMIT));
  app.use("*", requireJsonContentType());

  app.get("/healthz", (c) => c.json({ status: "ok" }));

  app.get("/v1/ca", (c) => {
    const res: CaResponse = { ca_pem: ctx.pki.ca.certPem, fingerprint: ctx.pki.caFingerprint };
    return c.json(res);
  });

  app.post("/v1/nodes/bootstrap", validate("json", BootstrapRequestSchema), async (c) => {
    const body = c.req.valid("json");
    return c.json(await bootstrapNode(ctx, body.token, body.csr_pem));
  });

  // A new control-plane replica joins with a cluster join token (cp/cluster/join.ts).
  app.post("/v1/cluster/join", validate("json", ClusterJoinRequestSchema), async (c) => {
    return c.json(await joinReplica(ctx, c.req.valid("json")));
  });

  // The certificate (and its pin) is checked before the body is read or validated; handlers
  // read it from `c.get("agent")`.
  const requireAgent = (what: string): MiddlewareHandler<AgentEnv> => async (c, next) => {
    const cert = agentCert(c.env?.incoming, what);
    await authenticateNodeCert(ctx, cert.node, cert.fingerprint);
    c.set("agent", cert);
    await next();
  };

  app.post(
    "/v1/nodes/heartbeat",
    requireAgent("heartbeats"),
    validate("json", HeartbeatRequestSchema),
    async (c) => {
      const { node } = c.get("agent");
      const body = c.req.valid("json");
      return c.json(await applyHeartbeat(ctx, node, body));
    },
  );

  app.post(
    "/v1/nodes/report",
    requireAgent("reports"),
    validate("json", NodeReportSchema),
    async (c) => {
      const { node } = c.get("agent");
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
      const { node, fingerprint } = c.get("agent");
      const body = c.req.valid("json");
      return c.json(await renewNodeCert(ctx, node, fingerprint, body.csr_pem));
    },
  );

  return app;
}
