/**
 * The control plane's end of an agent console: a WebSocket to
 * `wss://<node endpoint>/v1/vms/<vm id>/console` (shared/api/agent.ts) over mTLS with this
 * replica's certificate, accepted only from the node it meant to reach (server certificate
 * CN = node name, O = `AGENT_CERT_ORG`, as cp/agent_client.ts checks for every agent call).
 *
 * @module
 */
import { checkServerIdentity, type PeerCertificate } from "node:tls";
import type { IncomingMessage } from "node:http";
import type { Buffer } from "node:buffer";
import { type ClientOptions, WebSocket } from "ws";
import { AGENT_CERT_ORG } from "../../shared/constants.ts";
import { ApiError, ErrorEnvelopeSchema, isErrorCode } from "../../shared/errors.ts";
import { type ClientTlsMaterial, peerMismatch } from "../../shared/tls.ts";

/** How long opening the agent's console may take (TCP + TLS + upgrade), ms. */
export const AGENT_CONSOLE_CONNECT_TIMEOUT_MS = 10_000;
/** Largest refusal body read from an agent, bytes. */
const MAX_REFUSAL_BYTES = 64 * 1024;

/** Where the VM's console is. */
export interface AgentConsoleTarget {
  /** Node name: the CN the agent's certificate must carry. */
  node: string;
  /** The node's advertised mTLS endpoint, `https://host:port`. */
  endpoint: string;
  vmId: string;
}

/**
 * Opens the agent's console WebSocket (binary frames both ways).
 *
 * @returns the open socket
 * @throws ApiError with the agent's code when it refuses before the upgrade (`vm_not_found`,
 *   `vm_invalid_state`, …; the agent refusing the control plane's own certificate, or an
 *   uncatalogued answer, is `agent_unreachable`), 502 `agent_unreachable` when the endpoint
 *   is not https, cannot be reached, fails TLS or the identity check, or times out
 */
export function openAgentConsole(
  target: AgentConsoleTarget,
  tls: Required<ClientTlsMaterial>,
  timeoutMs = AGENT_CONSOLE_CONNECT_TIMEOUT_MS,
): Promise<WebSocket> {
  const where = `agent of node ${target.node}`;
  let url: URL;
  try {
    url = new URL(
      `v1/vms/${encodeURIComponent(target.vmId)}/console`,
      target.endpoint.endsWith("/") ? target.endpoint : target.endpoint + "/",
    );
  } catch {
    return Promise.reject(
      new ApiError("agent_unreachable", `${where}: invalid endpoint ${target.endpoint}`),
    );
  }
  if (url.protocol !== "https:") {
    return Promise.reject(
      new ApiError("agent_unreachable", `${where}: endpoint ${target.endpoint} is not https`),
    );
  }
  url.protocol = "wss:";
  return new Promise((resolve, reject) => {
    let settled = false;
    const fail = (e: ApiError) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      ws.terminate();
      reject(e);
    };
    const ws = new WebSocket(url, {
      ca: tls.caPem,
      cert: tls.certPem,
      key: tls.keyPem,
      handshakeTimeout: timeoutMs,
      perMessageDeflate: false,
      // ws hands this to `tls.connect` (node's signature; @types/ws declares an older one).
      checkServerIdentity: ((host: string, cert: PeerCertificate) => {
        const hostError = checkServerIdentity(host, cert);
        if (hostError) return hostError;
        const why = peerMismatch(cert, { commonName: target.node, organization: AGENT_CERT_ORG });
        return why === null ? undefined : new Error(why);
      }) as unknown as ClientOptions["checkServerIdentity"],
    });
    const timer = setTimeout(
      () => fail(new ApiError("agent_unreachable", `${where}: no console within ${timeoutMs} ms`)),
      timeoutMs,
    );
    ws.once("open", () => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      resolve(ws);
    });
    ws.once("unexpected-response", (_req: unknown, res: IncomingMessage) => {
      let body = "";
      res.on("data", (c: Buffer) => {
        if (body.length < MAX_REFUSAL_BYTES) body += c.toString("utf8");
      });
      res.on("error", () => fail(refusal(where, res.statusCode ?? 0, body)));
      res.on("end", () => fail(refusal(where, res.statusCode ?? 0, body)));
    });
    ws.once(
      "error",
      (e: Error) => fail(new ApiError("agent_unreachable", `${where}: ${e.message}`)),
    );
  });
}

/** The agent's refusal as the error to pass on. */
function refusal(where: string, status: number, body: string): ApiError {
  let info: { code: string; message: string; details?: Record<string, unknown> } | null = null;
  try {
    const env = ErrorEnvelopeSchema.safeParse(JSON.parse(body));
    if (env.success) info = env.data.error;
  } catch { /* not JSON */ }
  if (info && isErrorCode(info.code) && status !== 401 && status !== 403) {
    return new ApiError(info.code, info.message, info.details);
  }
  const what = info ? `${info.code}: ${info.message}` : `HTTP ${status}`;
  return new ApiError("agent_unreachable", `${where} refused the console: ${what}`);
}
