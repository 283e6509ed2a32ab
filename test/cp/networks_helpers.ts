// deno-lint-ignore-file no-explicit-any -- JSON responses are inspected dynamically
/**
 * A scripted agent that speaks the network part of the agent protocol
 * (shared/api/network_agent.ts): a {@link FakeAgent} (real CP-issued certificate, real
 * heartbeats) whose mTLS server is replaced by one that accepts VM creates with `nics`
 * (succeeding at once), deletes, task reads, `PUT /v1/pools` and records every
 * `PUT /v1/networks`.
 */
import { Hono } from "hono";
import type { ControlPlane } from "../../cp/app.ts";
import type { AgentTask } from "../../shared/api/agent.ts";
import {
  type AgentNetworksRequest,
  AgentNetworksRequestSchema,
  type AgentVmCreateWithNicsRequest,
  AgentVmCreateWithNicsRequestSchema,
} from "../../shared/api/network_agent.ts";
import { CP_CERT_ORG } from "../../shared/constants.ts";
import { ApiError } from "../../shared/errors.ts";
import { errorHandler, jsonBody, notFoundHandler } from "../../shared/http.ts";
import { createLogger } from "../../shared/log.ts";
import { peerOf, serveTls, type TlsEnv } from "../../shared/tls.ts";
import { FakeAgent } from "./fixtures.ts";

/** A fake agent with NICs and desired networks. */
export class NetFakeAgent {
  readonly fake: FakeAgent;
  creates: AgentVmCreateWithNicsRequest[] = [];
  /** Every `PUT /v1/networks` body, in order. */
  networkPuts: AgentNetworksRequest[] = [];
  #tasks = new Map<string, AgentTask>();

  constructor(cp: ControlPlane, nodeName: string) {
    this.fake = new FakeAgent(cp, nodeName);
  }

  /** The last desired set received (null: none yet). */
  get desired(): AgentNetworksRequest | null {
    return this.networkPuts.at(-1) ?? null;
  }

  /** Bootstraps with a real token and CSR, then serves the network-aware protocol. */
  async start(): Promise<void> {
    await this.fake.bootstrap();
    await this.fake.server!.close();
    this.fake.server = await serveTls({
      hostname: "127.0.0.1",
      port: 0,
      certPem: this.fake.certPem,
      keyPem: this.fake.keyPem,
      caPem: this.fake.caPem,
      requireClientCert: true,
      fetch: this.#app().fetch,
    });
  }

  #task(id: string, op: AgentTask["op"], vmId: string): AgentTask {
    const now = new Date().toISOString();
    const t: AgentTask = {
      id,
      op,
      vm_id: vmId,
      status: "succeeded",
      error: null,
      progress: null,
      result: op === "vm.create" ? { phase: "running", image: "img.raw" } : null,
      timings: {},
      created_at: now,
      updated_at: now,
    };
    this.#tasks.set(id, t);
    return t;
  }

  #app(): Hono<TlsEnv> {
    const app = new Hono<TlsEnv>();
    app.onError(errorHandler(createLogger("net-fake-agent", "error")));
    app.notFound(notFoundHandler);
    app.use("*", async (c, next) => {
      const peer = peerOf(c.env?.incoming);
      if (!peer.authorized || peer.organization !== CP_CERT_ORG) {
        throw new ApiError("permission_denied", "control plane certificate required");
      }
      await next();
    });
    app.post("/v1/vms", async (c) => {
      const req = await jsonBody(c, AgentVmCreateWithNicsRequestSchema);
      this.creates.push(req);
      this.fake.vms.set(req.vm.id, {
        id: req.vm.id,
        name: req.vm.name,
        phase: "running",
        pid: 4242,
        exit: null,
      });
      return c.json(
        this.#tasks.get(req.task_id) ?? this.#task(req.task_id, "vm.create", req.vm.id),
        202,
      );
    });
    app.delete("/v1/vms/:id", (c) => {
      const id = c.req.param("id");
      if (!this.fake.vms.delete(id)) throw new ApiError("vm_not_found", `vm ${id} not found`);
      return c.json(this.#task(c.req.query("task_id")!, "vm.delete", id), 202);
    });
    app.get("/v1/tasks/:id", (c) => {
      const t = this.#tasks.get(c.req.param("id"));
      if (!t) throw new ApiError("task_not_found", "no such task");
      return c.json(t);
    });
    app.put("/v1/pools", (c) => c.body(null, 204));
    app.put("/v1/networks", async (c) => {
      this.networkPuts.push(await jsonBody(c, AgentNetworksRequestSchema));
      return c.body(null, 204);
    });
    return app;
  }

  async close(): Promise<void> {
    await this.fake.close();
  }
}

/** A VM create body for a fake agent. */
export function vmBody(name: string, over: Record<string, unknown> = {}): any {
  return {
    name,
    image_url: "http://127.0.0.1:1/images/img.raw",
    architecture: "amd64",
    vcpus: 1,
    memory_mb: 64,
    disk_gib: 1,
    ...over,
  };
}
