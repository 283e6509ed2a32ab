/**
 * The agent's mTLS API, called by the control plane (shared/api/agent.ts):
 *
 * - `POST /v1/vms` → 202 agent task (idempotent by `task_id`)
 * - `POST /v1/vms/{id}/actions` → 202 agent task `vm.<action>` (idempotent by `task_id`);
 *   404 `vm_not_found`, 409 `vm_invalid_state` (`details: {phase, action}`) before any task
 *   exists when the VM's phase evidently does not allow the verb (agent/actions.ts)
 * - `DELETE /v1/vms/{id}?task_id=` → 202 agent task (aborts the VM's operation in flight)
 * - `GET /v1/tasks/{id}` → task, or 404 `task_not_found`
 * - `GET /v1/vms` → `{items: ObservedVm[]}`
 * - `PUT /v1/pools` → 204: applies the desired pools at once (as a heartbeat answer would)
 * - `POST /v1/pools/scan` → 200 AgentPoolScan (shared/api/pools.ts): one desired pool's
 *   figures, cached images and VM disks (agent/pools.ts `scan`)
 * - `PUT /v1/networks` → 204: the node's desired networks, applied at once (agent/net/);
 *   `GET /v1/networks` → what is applied (shared/api/network_agent.ts)
 * - `GET /v1/vms/{id}/console-log?tail_bytes=N` → `text/plain`
 * - `GET /v1/vms/{id}/console` → WebSocket (agent/console.ts, through the server's
 *   `onUpgrade`)
 * - `GET /healthz` → `{status: "ok", version}` (agent/version.ts; any cluster certificate:
 *   `otherix node ping` times it, cp/nodes/ping.ts)
 *
 * The TLS handshake requires a client certificate from the cluster CA; `/v1/` additionally
 * requires the control plane's organization (`CP_CERT_ORG`), so another agent's certificate
 * gets 403 `permission_denied`. Every input is validated (400 `validation_failed`); a request
 * body must be JSON sent as `Content-Type: application/json` (415 `unsupported_media_type`,
 * shared/http.ts) and at most {@link AGENT_SERVER_BODY_LIMIT} bytes.
 *
 * @module
 */
import { Hono } from "hono";
import { z } from "zod";
import type { IncomingMessage } from "node:http";
import type { Duplex } from "node:stream";
import type { Buffer } from "node:buffer";
import {
  AgentPoolsRequestSchema,
  AgentVmActionRequestSchema,
  AgentVmDeleteQuerySchema,
} from "../shared/api/agent.ts";
import {
  AgentNetworksRequestSchema,
  AgentVmCreateWithNicsRequestSchema,
} from "../shared/api/network_agent.ts";
import { ConsoleLogQuerySchema } from "../shared/api/vms.ts";
import { AgentPoolScanRequestSchema } from "../shared/api/pools.ts";
import { CP_CERT_ORG } from "../shared/constants.ts";
import { ApiError, parseOrThrow } from "../shared/errors.ts";
import { bodyLimit } from "../shared/body_limit.ts";
import {
  errorHandler,
  jsonBody,
  notFoundHandler,
  queryOf,
  requestLogger,
  requireJsonContentType,
} from "../shared/http.ts";
import type { Logger } from "../shared/log.ts";
import { peerOf, serveTls, type TlsEnv, type TlsServer } from "../shared/tls.ts";
import type { AgentIdentity } from "./bootstrap.ts";
import { imageBasename } from "./images.ts";
import type { PoolManager } from "./pools.ts";
import type { TaskManager } from "./tasks.ts";
import type { VmManager } from "./vms.ts";
import type { AgentMetrics } from "./metrics.ts";
import { AGENT_VERSION } from "./version.ts";

/** What the routes need. */
export interface AgentAppDeps {
  tasks: TaskManager;
  vms: VmManager;
  pools: PoolManager;
  /** Per-VM metrics served at `GET /metrics` (absent: no such route). */
  metrics?: AgentMetrics;
  /** Called after `PUT /v1/pools` changed the desired set (main.ts: send a heartbeat). */
  onPoolsChanged?: () => void;
  log: Logger;
}

const IdSchema = z.string().uuid();

/**
 * Largest request body the agent accepts, bytes (4 MiB: a VM create carries at most 64 KiB of
 * user-data; pool and network lists are far smaller). Larger: 400 `validation_failed`, judged
 * on `content-length` before the body is read.
 */
export const AGENT_SERVER_BODY_LIMIT = 4 * 1024 * 1024;

/** The agent's Hono app (served by {@link startAgentServer}). */
export function createAgentApp(deps: AgentAppDeps): Hono<TlsEnv> {
  const app = new Hono<TlsEnv>();
  app.onError(errorHandler(deps.log));
  app.notFound(notFoundHandler);
  app.use("*", requestLogger(deps.log));
  app.use("*", async (c, next) => {
    const peer = peerOf(c.env?.incoming);
    if (!peer.authorized) {
      throw new ApiError("unauthenticated", "a client certificate from the cluster CA is required");
    }
    if (c.req.path !== "/healthz" && peer.organization !== CP_CERT_ORG) {
      throw new ApiError(
        "permission_denied",
        `client certificate CN=${peer.commonName} O=${peer.organization} is not a control plane`,
      );
    }
    await next();
  });
  app.use("*", bodyLimit<TlsEnv>(AGENT_SERVER_BODY_LIMIT));
  app.use("*", requireJsonContentType<TlsEnv>());

  app.get("/healthz", (c) => c.json({ status: "ok", version: AGENT_VERSION }));

  app.post("/v1/vms", async (c) => {
    // The create request plus its NICs (shared/api/network_agent.ts).
    const req = await jsonBody(c, AgentVmCreateWithNicsRequestSchema);
    const known = deps.tasks.get(req.task_id);
    if (!known) imageBasename(req.vm.image_url); // 400 before a task exists
    return c.json(deps.tasks.submitCreate(req), 202);
  });

  app.post("/v1/vms/:id/actions", async (c) => {
    const id = parseOrThrow(IdSchema, c.req.param("id"), "vm id");
    const req = await jsonBody(c, AgentVmActionRequestSchema);
    return c.json(deps.tasks.submitAction(id, req), 202);
  });

  app.put("/v1/pools", async (c) => {
    const req = await jsonBody(c, AgentPoolsRequestSchema);
    if (await deps.pools.setDesired(req.pools)) {
      await deps.pools.observe(); // creates the new pools' directories now
      deps.onPoolsChanged?.();
    }
    return c.body(null, 204);
  });

  app.put("/v1/networks", async (c) => {
    const req = await jsonBody(c, AgentNetworksRequestSchema);
    await deps.vms.net.setDesired(req.networks);
    return c.body(null, 204);
  });

  app.get("/v1/networks", (c) => c.json({ items: deps.vms.net.list() }));

  app.post("/v1/pools/scan", async (c) => {
    const req = await jsonBody(c, AgentPoolScanRequestSchema);
    const vms = deps.vms.list().map((v) => {
      const f = deps.vms.files(v.id);
      return { id: v.id, vmJson: f.vmJson, disk: f.disk };
    });
    return c.json(await deps.pools.scan(req, vms));
  });

  app.delete("/v1/vms/:id", (c) => {
    const id = parseOrThrow(IdSchema, c.req.param("id"), "vm id");
    const q = queryOf(c, AgentVmDeleteQuerySchema);
    return c.json(deps.tasks.submitDelete(id, q.task_id), 202);
  });

  app.get("/v1/tasks/:id", (c) => {
    const id = parseOrThrow(IdSchema, c.req.param("id"), "task id");
    const task = deps.tasks.get(id);
    if (!task) throw new ApiError("task_not_found", `task ${id} not found on this agent`);
    return c.json(task);
  });

  app.get("/v1/vms", (c) => c.json({ items: deps.vms.list() }));

  // Prometheus text format (agent/metrics.ts); control-plane certificate like every route.
  const metrics = deps.metrics;
  if (metrics) {
    app.get(
      "/metrics",
      async (c) => c.body(await metrics.render(), 200, { "content-type": metrics.contentType }),
    );
  }

  app.get("/v1/vms/:id/console-log", async (c) => {
    const id = parseOrThrow(IdSchema, c.req.param("id"), "vm id");
    const q = queryOf(c, ConsoleLogQuerySchema);
    const text = await deps.vms.consoleLog(id, q.tail_bytes);
    return c.text(text, 200, { "content-type": "text/plain; charset=utf-8" });
  });

  return app;
}

/** Options of {@link startAgentServer}. */
export interface AgentServerOptions {
  hostname: string;
  /** 0 picks a free port (tests). */
  port: number;
  identity: AgentIdentity;
  app: Hono<TlsEnv>;
  /** WebSocket upgrades (agent/console.ts `createConsoleUpgrade(...).onUpgrade`). */
  onUpgrade?: (req: IncomingMessage, socket: Duplex, head: Buffer) => void;
}

/**
 * Serves the app over mTLS with the agent's certificate; clients must present a certificate
 * signed by the cluster CA.
 *
 * @throws when the address cannot be bound
 */
export function startAgentServer(o: AgentServerOptions): Promise<TlsServer> {
  return serveTls({
    hostname: o.hostname,
    port: o.port,
    certPem: o.identity.certPem,
    keyPem: o.identity.keyPem,
    caPem: o.identity.caPem,
    requireClientCert: true,
    fetch: (req, env) => o.app.fetch(req, env),
    onUpgrade: o.onUpgrade,
  });
}
