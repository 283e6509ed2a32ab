/**
 * The control plane's client of the agent protocol (`shared/api/agent.ts`) over mTLS: it
 * trusts only the cluster CA, presents this replica's certificate (O = `CP_CERT_ORG`,
 * clientAuth), which agents require, and accepts only the node it meant to call: the
 * server certificate must say CN = the node name, O = `AGENT_CERT_ORG` (so a joined node
 * holding a SAN for another node's address cannot pose as it).
 *
 * Failures are {@link AgentError}s: `unreachable` for transport problems (connection
 * refused, TLS failure, timeout, an endpoint that is not `https:`) and `api` for an error
 * envelope or an invalid response; the agent's error code is kept verbatim.
 *
 * @module
 */
import {
  type AgentTask,
  AgentTaskSchema,
  type AgentVmActionRequest,
  type AgentVmCreateRequest,
  type DesiredPool,
} from "../shared/api/agent.ts";
import {
  type AgentPoolScan,
  type AgentPoolScanRequest,
  AgentPoolScanSchema,
} from "../shared/api/pools.ts";
import { z } from "zod";
import { ErrorEnvelopeSchema, type ErrorInfo } from "../shared/errors.ts";
import { AGENT_CERT_ORG } from "../shared/constants.ts";
import { type ClientTlsMaterial, requestTls } from "../shared/tls.ts";
import type { CertAndKey } from "../shared/pki.ts";

/** A failed agent call. */
export class AgentError extends Error {
  /** `unreachable`: no HTTP response; `api`: an error response or an invalid body. */
  readonly kind: "unreachable" | "api";
  /** HTTP status, for `api`. */
  readonly status: number | null;
  /** The agent's error (code verbatim), for `api`. */
  readonly info: ErrorInfo | null;

  constructor(
    kind: "unreachable" | "api",
    message: string,
    status: number | null = null,
    info: ErrorInfo | null = null,
  ) {
    super(message);
    this.name = "AgentError";
    this.kind = kind;
    this.status = status;
    this.info = info;
  }
}

/** The agent to call: its node name (the certificate CN it must present) and endpoint. */
export interface AgentTarget {
  /** Node name. */
  name: string;
  /** Advertised mTLS endpoint, `https://host:port`. */
  endpoint: string;
}

/** Calls the control plane makes on a node's agent. */
export interface AgentClient {
  /** `POST /v1/vms` → the agent task (202). @throws AgentError */
  createVm(agent: AgentTarget, req: AgentVmCreateRequest, signal?: AbortSignal): Promise<AgentTask>;
  /**
   * `DELETE /v1/vms/{id}?task_id=` → the agent task, or null when the agent does not know
   * the VM (404 `vm_not_found`: already gone). @throws AgentError
   */
  deleteVm(
    agent: AgentTarget,
    vmId: string,
    taskId: string,
    signal?: AbortSignal,
  ): Promise<AgentTask | null>;
  /**
   * `POST /v1/vms/{id}/actions` → the agent task (202). @throws AgentError (404
   * `vm_not_found`, 409 `vm_invalid_state` verbatim)
   */
  vmAction(
    agent: AgentTarget,
    vmId: string,
    req: AgentVmActionRequest,
    signal?: AbortSignal,
  ): Promise<AgentTask>;
  /** `PUT /v1/pools`: the node's complete desired pool set. @throws AgentError */
  putPools(agent: AgentTarget, pools: DesiredPool[], signal?: AbortSignal): Promise<void>;
  /**
   * `POST /v1/pools/scan` → what the agent finds in the pool (shared/api/pools.ts).
   * @throws AgentError (`pool_not_found`, `path_not_allowed`, `pool_scan_failed` verbatim)
   */
  scanPool(
    agent: AgentTarget,
    req: AgentPoolScanRequest,
    signal?: AbortSignal,
  ): Promise<AgentPoolScan>;
  /** `GET /v1/tasks/{id}` → the task, or null on 404 (agent restarted). @throws AgentError */
  getTask(agent: AgentTarget, taskId: string, signal?: AbortSignal): Promise<AgentTask | null>;
  /** `GET /v1/vms/{id}/console-log?tail_bytes=` → text. @throws AgentError */
  consoleLog(agent: AgentTarget, vmId: string, tailBytes: number): Promise<string>;
  /**
   * `GET /healthz` → `{status: "ok", version}` (`version` null from agents that do not send
   * one). @throws AgentError (`api` for a non-2xx or malformed answer)
   */
  health(agent: AgentTarget, signal?: AbortSignal): Promise<AgentHealth>;
  close(): void;
}

/** An agent's `GET /healthz` answer. */
export interface AgentHealth {
  status: "ok";
  /** The agent's version (agent/version.ts), null when it sends none. */
  version: string | null;
}

const AgentHealthSchema = z.object({
  status: z.literal("ok"),
  version: z.string().max(128).optional(),
});

/** Per-request timeout of agent calls, milliseconds. */
export const AGENT_REQUEST_TIMEOUT_MS = 15_000;

/** Creates the mTLS agent client from the cluster CA and this replica's cert/key. */
export function createAgentClient(caPem: string, replica: CertAndKey): AgentClient {
  return new HttpAgentClient(caPem, replica);
}

class HttpAgentClient implements AgentClient {
  #tls: ClientTlsMaterial;

  constructor(caPem: string, replica: CertAndKey) {
    this.#tls = { caPem, certPem: replica.certPem, keyPem: replica.keyPem };
  }

  async #call(
    method: string,
    agent: AgentTarget,
    path: string,
    body?: unknown,
    signal?: AbortSignal,
  ): Promise<Response> {
    const { endpoint } = agent;
    let url: URL;
    try {
      url = new URL(path, endpoint.endsWith("/") ? endpoint : endpoint + "/");
    } catch {
      throw new AgentError("unreachable", `invalid agent endpoint ${JSON.stringify(endpoint)}`);
    }
    if (url.protocol !== "https:") {
      // Never send VM specs (user-data) in clear text to an unauthenticated peer.
      throw new AgentError(
        "unreachable",
        `agent endpoint ${JSON.stringify(endpoint)} is not https (mTLS is required)`,
      );
    }
    const timeout = AbortSignal.timeout(AGENT_REQUEST_TIMEOUT_MS);
    try {
      return await requestTls(url, {
        method,
        tls: this.#tls,
        expect: { commonName: agent.name, organization: AGENT_CERT_ORG },
        headers: body === undefined ? {} : { "content-type": "application/json" },
        body: body === undefined ? undefined : JSON.stringify(body),
        signal: signal ? AbortSignal.any([signal, timeout]) : timeout,
      });
    } catch (e) {
      const msg = timeout.aborted ? `timed out after ${AGENT_REQUEST_TIMEOUT_MS} ms` : String(
        (e as Error)?.message ?? e,
      );
      throw new AgentError("unreachable", `${method} ${url.href}: ${msg}`);
    }
  }

  async #errorOf(res: Response, what: string): Promise<AgentError> {
    const text = await res.text().catch(() => "");
    let info: ErrorInfo | null = null;
    try {
      const env = ErrorEnvelopeSchema.safeParse(JSON.parse(text));
      if (env.success) info = env.data.error;
    } catch { /* not JSON */ }
    return new AgentError(
      "api",
      `${what}: HTTP ${res.status}${info ? ` ${info.code}: ${info.message}` : ""}`,
      res.status,
      info,
    );
  }

  async #task(res: Response, what: string): Promise<AgentTask> {
    let raw: unknown;
    try {
      raw = await res.json();
    } catch {
      throw new AgentError("api", `${what}: response is not JSON`, res.status);
    }
    const parsed = AgentTaskSchema.safeParse(raw);
    if (!parsed.success) {
      throw new AgentError(
        "api",
        `${what}: invalid agent task: ${parsed.error.message}`,
        res.status,
      );
    }
    return parsed.data;
  }

  async createVm(agent: AgentTarget, req: AgentVmCreateRequest, signal?: AbortSignal) {
    const res = await this.#call("POST", agent, "v1/vms", req, signal);
    if (!res.ok) throw await this.#errorOf(res, "agent POST /v1/vms");
    return await this.#task(res, "agent POST /v1/vms");
  }

  async deleteVm(agent: AgentTarget, vmId: string, taskId: string, signal?: AbortSignal) {
    const path = `v1/vms/${encodeURIComponent(vmId)}?task_id=${encodeURIComponent(taskId)}`;
    const res = await this.#call("DELETE", agent, path, undefined, signal);
    if (res.status === 404) {
      const err = await this.#errorOf(res, "agent DELETE /v1/vms");
      if (err.info?.code === "vm_not_found") return null;
      throw err;
    }
    if (!res.ok) throw await this.#errorOf(res, "agent DELETE /v1/vms");
    return await this.#task(res, "agent DELETE /v1/vms");
  }

  async vmAction(
    agent: AgentTarget,
    vmId: string,
    req: AgentVmActionRequest,
    signal?: AbortSignal,
  ) {
    const path = `v1/vms/${encodeURIComponent(vmId)}/actions`;
    const res = await this.#call("POST", agent, path, req, signal);
    if (!res.ok) throw await this.#errorOf(res, "agent POST /v1/vms/{id}/actions");
    return await this.#task(res, "agent POST /v1/vms/{id}/actions");
  }

  async putPools(agent: AgentTarget, pools: DesiredPool[], signal?: AbortSignal) {
    const res = await this.#call("PUT", agent, "v1/pools", { pools }, signal);
    if (!res.ok) throw await this.#errorOf(res, "agent PUT /v1/pools");
    await res.body?.cancel();
  }

  async scanPool(agent: AgentTarget, req: AgentPoolScanRequest, signal?: AbortSignal) {
    const res = await this.#call("POST", agent, "v1/pools/scan", req, signal);
    if (!res.ok) throw await this.#errorOf(res, "agent POST /v1/pools/scan");
    let raw: unknown;
    try {
      raw = await res.json();
    } catch {
      throw new AgentError("api", "agent POST /v1/pools/scan: response is not JSON", res.status);
    }
    const parsed = AgentPoolScanSchema.safeParse(raw);
    if (!parsed.success) {
      throw new AgentError(
        "api",
        `agent POST /v1/pools/scan: invalid scan: ${parsed.error.message}`,
        res.status,
      );
    }
    return parsed.data;
  }

  async getTask(agent: AgentTarget, taskId: string, signal?: AbortSignal) {
    const res = await this.#call(
      "GET",
      agent,
      `v1/tasks/${encodeURIComponent(taskId)}`,
      undefined,
      signal,
    );
    if (res.status === 404) {
      const err = await this.#errorOf(res, "agent GET /v1/tasks");
      if (err.info?.code === "task_not_found" || err.info === null) return null;
      throw err;
    }
    if (!res.ok) throw await this.#errorOf(res, "agent GET /v1/tasks");
    return await this.#task(res, "agent GET /v1/tasks");
  }

  async consoleLog(agent: AgentTarget, vmId: string, tailBytes: number) {
    const path = `v1/vms/${encodeURIComponent(vmId)}/console-log?tail_bytes=${tailBytes}`;
    const res = await this.#call("GET", agent, path);
    if (!res.ok) throw await this.#errorOf(res, "agent GET console-log");
    return await res.text();
  }

  async health(agent: AgentTarget, signal?: AbortSignal): Promise<AgentHealth> {
    const res = await this.#call("GET", agent, "healthz", undefined, signal);
    if (!res.ok) throw await this.#errorOf(res, "agent GET /healthz");
    let raw: unknown;
    try {
      raw = await res.json();
    } catch {
      throw new AgentError("api", "agent GET /healthz: response is not JSON", res.status);
    }
    const parsed = AgentHealthSchema.safeParse(raw);
    if (!parsed.success) {
      throw new AgentError("api", 'agent GET /healthz: not {status: "ok"}', res.status);
    }
    return { status: "ok", version: parsed.data.version ?? null };
  }

  close() {
    // No pooled connections to release.
  }
}
