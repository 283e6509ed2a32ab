/**
 * The control plane's client of the agents' network endpoint (`PUT /v1/networks`,
 * shared/api/network_agent.ts) over mTLS: the same trust and identity checks as
 * cp/agent_client.ts (cluster CA, this replica's certificate, the agent must present CN = the
 * node name, O = `AGENT_CERT_ORG`).
 *
 * @module
 */
import type { AgentNetworksRequest } from "../../shared/api/network_agent.ts";
import { AGENT_CERT_ORG } from "../../shared/constants.ts";
import { ErrorEnvelopeSchema, type ErrorInfo } from "../../shared/errors.ts";
import { type ClientTlsMaterial, requestTls } from "../../shared/tls.ts";
import { AGENT_REQUEST_TIMEOUT_MS, AgentError, type AgentTarget } from "../agent_client.ts";
import type { CpContext } from "../context.ts";

/** Network calls on agents. */
export interface NetAgentClient {
  /**
   * `PUT /v1/networks`: the node's complete desired network set.
   *
   * @throws AgentError (`unreachable`, or `api` with the agent's error, e.g. 404 from an agent
   *   without network support)
   */
  putNetworks(agent: AgentTarget, req: AgentNetworksRequest, signal?: AbortSignal): Promise<void>;
}

/** The mTLS client of this control-plane replica. */
export function createNetAgentClient(ctx: CpContext): NetAgentClient {
  const tls: ClientTlsMaterial = {
    caPem: ctx.pki.ca.certPem,
    certPem: ctx.pki.replica.certPem,
    keyPem: ctx.pki.replica.keyPem,
  };
  return {
    async putNetworks(agent, req, signal) {
      let url: URL;
      try {
        url = new URL("v1/networks", agent.endpoint.replace(/\/?$/, "/"));
      } catch {
        throw new AgentError("unreachable", `invalid agent endpoint ${agent.endpoint}`);
      }
      if (url.protocol !== "https:") {
        throw new AgentError("unreachable", `agent endpoint ${agent.endpoint} is not https`);
      }
      const timeout = AbortSignal.timeout(AGENT_REQUEST_TIMEOUT_MS);
      let res: Response;
      try {
        res = await requestTls(url, {
          method: "PUT",
          tls,
          expect: { commonName: agent.name, organization: AGENT_CERT_ORG },
          headers: { "content-type": "application/json" },
          body: JSON.stringify(req),
          signal: signal ? AbortSignal.any([signal, timeout]) : timeout,
        });
      } catch (e) {
        const msg = timeout.aborted ? `timed out after ${AGENT_REQUEST_TIMEOUT_MS} ms` : String(
          (e as Error)?.message ?? e,
        );
        throw new AgentError("unreachable", `PUT ${url.href}: ${msg}`);
      }
      if (res.ok) {
        await res.body?.cancel();
        return;
      }
      const text = await res.text().catch(() => "");
      let info: ErrorInfo | null = null;
      try {
        const env = ErrorEnvelopeSchema.safeParse(JSON.parse(text));
        if (env.success) info = env.data.error;
      } catch { /* not JSON */ }
      throw new AgentError(
        "api",
        `agent PUT /v1/networks: HTTP ${res.status}${info ? ` ${info.code}: ${info.message}` : ""}`,
        res.status,
        info,
      );
    },
  };
}
