/**
 * `otherix node ping NAME` (`POST /v1/nodes/{name}/ping`, `node:manage`; shared/api/nodes.ts
 * NodePing): the control plane dials the node's advertised endpoint over mTLS (the agent must
 * present CN = the node name, O = AGENT_CERT_ORG; cp/agent_client.ts) and times `GET /healthz`.
 * It fails with the stable error an operation on the node would get.
 *
 * @module
 */
import type { NodePing } from "../../shared/api/nodes.ts";
import { ApiError } from "../../shared/errors.ts";
import { AgentError } from "../agent_client.ts";
import type { CpContext } from "../context.ts";
import { keys, type NodeRecord } from "../repo/records.ts";

/** How long a ping waits for the agent's answer, milliseconds. */
export const PING_TIMEOUT_MS = 5_000;

/** Test seams of {@link pingNode}. */
export interface PingOptions {
  /** Monotonic clock, ms (default `performance.now`). */
  clock?: () => number;
  /** Answer timeout, ms (default {@link PING_TIMEOUT_MS}). */
  timeoutMs?: number;
}

/**
 * Dials node `name`'s agent and times one `GET /healthz` round trip (TLS handshake included:
 * connections are not pooled).
 *
 * @returns `{node, endpoint, rtt_ms, agent_version}` (`rtt_ms` in milliseconds, rounded to
 *   0.1 ms; `agent_version` from the agent's answer, null when it sends none)
 * @throws ApiError 404 `node_not_found` (no such node), 409 `node_not_ready` (the node never
 *   advertised an endpoint: no heartbeat since bootstrap), 502 `agent_unreachable` (connection
 *   refused, TLS or identity failure, no answer within the timeout, or an answer that is not
 *   a healthy `/healthz`; `details.endpoint`)
 */
export async function pingNode(
  ctx: CpContext,
  name: string,
  opts: PingOptions = {},
): Promise<NodePing> {
  const node = (await ctx.store.get<NodeRecord>(keys.node(name)))?.value;
  if (!node) throw new ApiError("node_not_found", `node "${name}" not found`);
  const endpoint = node.endpoint;
  if (!endpoint) {
    throw new ApiError(
      "node_not_ready",
      `node "${name}" has no agent endpoint yet (status ${node.status}: no heartbeat since ` +
        `bootstrap)`,
      { status: node.status },
    );
  }
  const clock = opts.clock ?? (() => performance.now());
  const timeoutMs = opts.timeoutMs ?? PING_TIMEOUT_MS;
  const timeout = AbortSignal.timeout(timeoutMs);
  const started = clock();
  try {
    const health = await ctx.agents.health({ name, endpoint }, timeout);
    const rtt = Math.max(0, clock() - started);
    return {
      node: name,
      endpoint,
      rtt_ms: Math.round(rtt * 10) / 10,
      agent_version: health.version,
    };
  } catch (e) {
    if (!(e instanceof AgentError)) throw e;
    const why = timeout.aborted ? `no answer within ${timeoutMs} ms` : e.message;
    throw new ApiError(
      "agent_unreachable",
      `node "${name}" agent at ${endpoint} is unreachable: ${why}`,
      { endpoint },
    );
  }
}
