/**
 * The agent's calls to the control plane's agent-facing port (heartbeats, reports): JSON over
 * mTLS with the node certificate, and the server must present a control-plane certificate
 * (O = `CP_CERT_ORG`), not merely any cluster certificate (shared/tls.ts `requestTls`).
 *
 * @module
 */
import { CP_CERT_ORG } from "../shared/constants.ts";
import { ErrorEnvelopeSchema } from "../shared/errors.ts";
import { type ClientTlsMaterial, requestTls } from "../shared/tls.ts";
import type { Agent as HttpsAgent } from "node:https";
import type { AgentIdentity } from "./bootstrap.ts";

/** True for the errors of reusing a connection the other side has just closed. */
function isStaleConnection(e: unknown): boolean {
  const code = (e as { code?: string })?.code;
  return code === "ECONNRESET" || code === "EPIPE" || /socket hang up/i.test(String(e));
}

/** The agent's mTLS client material from its identity. */
export function cpTls(identity: AgentIdentity): ClientTlsMaterial {
  return { caPem: identity.caPem, certPem: identity.certPem, keyPem: identity.keyPem };
}

/**
 * `POST {cpUrl}{path}` with `body` as JSON; resolves with the parsed JSON answer (null for an
 * empty body, e.g. 204).
 *
 * @param timeoutMs per-request timeout, ms
 * @param agent a keep-alive agent (shared/tls.ts keepAliveAgent) to reuse connections; a
 *   reused connection the server had just closed is retried once on a fresh one
 * @throws Error describing the transport failure, a server that is not a control plane, a
 *   timeout, or the CP's error envelope (`HTTP 404 not_found: …`)
 */
export async function postToCp(
  cpUrl: string,
  path: string,
  body: unknown,
  tls: ClientTlsMaterial,
  timeoutMs: number,
  signal?: AbortSignal,
  agent?: HttpsAgent,
): Promise<unknown> {
  const timeout = AbortSignal.timeout(timeoutMs);
  const send = (pooled?: HttpsAgent) =>
    requestTls(cpUrl.replace(/\/+$/, "") + path, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
      tls,
      expect: { organization: CP_CERT_ORG },
      signal: signal ? AbortSignal.any([signal, timeout]) : timeout,
      agent: pooled,
    });
  let res: Response;
  try {
    res = await send(agent);
  } catch (e) {
    // A kept-alive connection the server closed just as it was reused: once more, fresh.
    if (!agent || !isStaleConnection(e)) throw e;
    res = await send(undefined);
  }
  const text = await res.text();
  let json: unknown = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    // not JSON
  }
  if (!res.ok) {
    const env = ErrorEnvelopeSchema.safeParse(json);
    throw new Error(
      env.success
        ? `HTTP ${res.status} ${env.data.error.code}: ${env.data.error.message}`
        : `HTTP ${res.status}`,
    );
  }
  return json;
}
