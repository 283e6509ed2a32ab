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
 *
 * @module
 */
import { Hono } from "hono";
import { AGENT_CERT_ORG } from "../../shared/constants.ts";
import {
  BootstrapRequestSchema,
  type CaResponse,
  HeartbeatRequestSchema,
} from "../../shared/api/nodes.ts";
import { ApiError } from "../../shared/errors.ts";
import { errorHandler, jsonBody, notFoundHandler, requestLogger } from "../../shared/http.ts";
import { peerOf, type TlsEnv } from "../../shared/tls.ts";
import type { CpContext } from "../context.ts";
import { applyHeartbeat, bootstrapNode } from "../nodes.ts";
import { bodyLimit } from "./body_limit.ts";

/** Largest request body accepted on the agent port, bytes. */
export const AGENT_BODY_LIMIT = 1024 * 1024;

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

  app.post("/v1/nodes/bootstrap", async (c) => {
    const body = await jsonBody(c, BootstrapRequestSchema);
    return c.json(await bootstrapNode(ctx, body.token, body.csr_pem));
  });

  app.post("/v1/nodes/heartbeat", async (c) => {
    const peer = peerOf(c.env?.incoming);
    if (!peer.authorized || peer.organization !== AGENT_CERT_ORG || !peer.commonName) {
      throw new ApiError(
        "unauthenticated",
        "heartbeats require a node client certificate issued by the cluster CA",
      );
    }
    const body = await jsonBody(c, HeartbeatRequestSchema);
    return c.json(await applyHeartbeat(ctx, peer.commonName, body));
  });

  return app;
}
