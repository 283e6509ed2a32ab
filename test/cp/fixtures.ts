// deno-lint-ignore-file no-explicit-any -- JSON responses are inspected dynamically
/**
 * In-process fixtures for control-plane tests: a control plane on a temp data dir and a
 * scripted agent — a real mTLS server speaking the agent protocol of `shared/api/agent.ts`
 * with a certificate issued by the control plane's CA through the real bootstrap endpoint.
 */
import { Hono } from "hono";
import { type ControlPlane, startControlPlane } from "../../cp/app.ts";
import { parseApiConfig } from "../../cp/config.ts";
import { createJoinToken } from "../../cp/join_tokens.ts";
import {
  type AgentTask,
  type AgentVmCreateRequest,
  AgentVmCreateRequestSchema,
} from "../../shared/api/agent.ts";
import type { HeartbeatRequest, HeartbeatResponse } from "../../shared/api/agent.ts";
import type { ObservedVm } from "../../shared/api/vm_runtime.ts";
import { AGENT_CERT_ORG } from "../../shared/constants.ts";
import { ApiError, type ErrorInfo } from "../../shared/errors.ts";
import { errorHandler, notFoundHandler } from "../../shared/http.ts";
import { createLogger, type Logger } from "../../shared/log.ts";
import { createCsr, splitSans } from "../../shared/pki.ts";
import {
  createTlsClient,
  peerOf,
  serveTls,
  type TlsEnv,
  type TlsServer,
} from "../../shared/tls.ts";
import { CP_CERT_ORG } from "../../shared/constants.ts";
import { waitFor } from "../harness.ts";

/** Log lines captured from a control plane. */
export class LogCapture {
  lines: Record<string, unknown>[] = [];
  logger(level: "debug" | "info" = "debug"): Logger {
    return createLogger("api", level, (l) => {
      this.lines.push(JSON.parse(l));
      if (Deno.env.get("OTHERIX_TEST_VERBOSE")) console.error(l);
    });
  }
  has(msg: string, fields: Record<string, unknown> = {}): boolean {
    return this.lines.some((l) =>
      l.msg === msg && Object.entries(fields).every(([k, v]) => l[k] === v)
    );
  }
}

/**
 * Starts a control plane on `dataDir` with test-friendly timings (`serverYaml`: extra
 * indented keys of the `server:` section; `staleThresholdSeconds`: `nodes.
 * stale_threshold_seconds`, default 2).
 */
export async function startTestCp(
  dataDir: string,
  capture: LogCapture,
  serverYaml = "",
  staleThresholdSeconds = 2,
): Promise<ControlPlane> {
  const cfg = parseApiConfig(
    `server:\n  listen: 127.0.0.1:0\n  agent_listen: 127.0.0.1:0\n${serverYaml}` +
      `store:\n  data_dir: ${dataDir}\n` +
      `storage_pools:\n  allowed_path_prefixes: [${dataDir}/agent-pools/]\n` +
      `nodes:\n  heartbeat_interval_seconds: 1\n  stale_threshold_seconds: ${staleThresholdSeconds}\n` +
      `workers:\n  poll_interval_ms: 50\n  agent_unreachable_timeout_seconds: 1\n` +
      // Tests serve images from loopback: opt in (refused by default).
      `images:\n  url_policy:\n    allow_loopback: true\n`,
  );
  return await startControlPlane(cfg, capture.logger(), {
    getEnv: (n) =>
      ({
        OTHERIX_BOOTSTRAP_ADMIN_EMAIL: "admin@example.com",
        OTHERIX_BOOTSTRAP_ADMIN_PASSWORD: "admin-password",
      })[n],
    host: { hostname: "localhost", addresses: [] },
  });
}

/** A logged-in admin client of the public API: status, parsed JSON (or null) and text. */
export interface Api {
  (
    method: string,
    path: string,
    body?: unknown,
  ): Promise<{ status: number; json: any; text: string }>;
}

/** Logs in as the bootstrap admin of a {@link startTestCp} control plane. */
export async function apiFor(cp: ControlPlane): Promise<Api> {
  const base = `http://127.0.0.1:${cp.publicPort}`;
  const login = await fetch(`${base}/v1/auth/login`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ email: "admin@example.com", password: "admin-password" }),
  });
  const { access_token } = await login.json();
  return async (method, path, body) => {
    const res = await fetch(base + path, {
      method,
      headers: { authorization: `Bearer ${access_token}`, "content-type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.text();
    let json: any = null;
    try {
      json = JSON.parse(text);
    } catch { /* text */ }
    return { status: res.status, json, text };
  };
}

/** How the scripted agent handles a VM's create. */
export type Script =
  | { kind: "succeed"; polls?: number }
  | { kind: "fail"; error: ErrorInfo; polls?: number }
  | { kind: "hang" }
  | { kind: "lose-once" }
  | { kind: "reject"; status: number; error: ErrorInfo };

interface FakeTask {
  task: AgentTask;
  polls: number;
  script: Script;
}

/** A scripted agent with a real CP-issued certificate. */
export class FakeAgent {
  nodeName: string;
  certPem = "";
  keyPem = "";
  caPem = "";
  server: TlsServer | null = null;
  creates: AgentVmCreateRequest[] = [];
  deletes: { vmId: string; taskId: string }[] = [];
  tasks = new Map<string, FakeTask>();
  vms = new Map<string, ObservedVm>();
  scripts = new Map<string, Script>();
  poolsReady = true;
  #client: Deno.HttpClient | null = null;
  #cp: ControlPlane;

  constructor(cp: ControlPlane, nodeName: string) {
    this.#cp = cp;
    this.nodeName = nodeName;
  }

  get endpoint(): string {
    return `https://127.0.0.1:${this.server!.port}`;
  }

  get cpUrl(): string {
    return `https://127.0.0.1:${this.#cp.agentPort}`;
  }

  /** Mints a join token, redeems it over TLS with a real CSR, starts the mTLS server. */
  async bootstrap(): Promise<void> {
    const cp = this.#cp;
    const tok = await createJoinToken(cp.ctx.store, { node_name: this.nodeName }, {
      defaultTtlSeconds: 60,
      createdBy: "test",
      caFingerprint: cp.caFingerprint,
      now: new Date(),
    });
    const csr = await createCsr(this.nodeName, splitSans(["127.0.0.1", "localhost"]));
    const anon = createTlsClient({ caPem: cp.ctx.pki.ca.certPem });
    try {
      const res = await fetch(`${this.cpUrl}/v1/nodes/bootstrap`, {
        method: "POST",
        client: anon,
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ token: tok.token, csr_pem: csr.csrPem }),
      });
      const body = await res.json();
      if (!res.ok) throw new Error(`bootstrap failed: ${JSON.stringify(body)}`);
      this.certPem = body.certificate_pem;
      this.caPem = body.ca_pem;
      this.keyPem = csr.keyPem;
    } finally {
      anon.close();
    }
    this.#client = createTlsClient({
      caPem: this.caPem,
      certPem: this.certPem,
      keyPem: this.keyPem,
    });
    this.server = await serveTls({
      hostname: "127.0.0.1",
      port: 0,
      certPem: this.certPem,
      keyPem: this.keyPem,
      caPem: this.caPem,
      requireClientCert: true,
      fetch: this.#app().fetch,
    });
  }

  #app(): Hono<TlsEnv> {
    const app = new Hono<TlsEnv>();
    app.onError(errorHandler(createLogger("fake-agent", "error")));
    app.notFound(notFoundHandler);
    app.use("*", async (c, next) => {
      const peer = peerOf(c.env?.incoming);
      if (!peer.authorized || peer.organization !== CP_CERT_ORG) {
        throw new ApiError("permission_denied", "control plane certificate required");
      }
      await next();
    });
    app.post("/v1/vms", async (c) => {
      const req = AgentVmCreateRequestSchema.parse(await c.req.json());
      this.creates.push(req);
      const script = this.scripts.get(req.vm.name) ?? { kind: "succeed" };
      if (script.kind === "reject") {
        return c.json({ error: script.error }, script.status as 400);
      }
      const existing = this.tasks.get(req.task_id);
      if (existing) return c.json(existing.task, 202);
      const task: AgentTask = {
        id: req.task_id,
        op: "vm.create",
        vm_id: req.vm.id,
        status: "running",
        error: null,
        progress: "starting",
        result: null,
        timings: {},
        created_at: new Date().toISOString(),
        updated_at: new Date().toISOString(),
      };
      this.tasks.set(task.id, { task, polls: 0, script });
      this.vms.set(req.vm.id, {
        id: req.vm.id,
        name: req.vm.name,
        phase: "creating",
        pid: null,
        exit: null,
      });
      return c.json(task, 202);
    });
    app.delete("/v1/vms/:id", (c) => {
      const vmId = c.req.param("id");
      const taskId = c.req.query("task_id")!;
      this.deletes.push({ vmId, taskId });
      if (!this.vms.has(vmId) && !this.tasks.has(taskId)) {
        throw new ApiError("vm_not_found", `vm ${vmId} not found`);
      }
      const task: AgentTask = {
        id: taskId,
        op: "vm.delete",
        vm_id: vmId,
        status: "succeeded",
        error: null,
        progress: "deleted",
        result: null,
        timings: {},
        created_at: new Date().toISOString(),
        updated_at: new Date().toISOString(),
      };
      this.tasks.set(taskId, { task, polls: 0, script: { kind: "succeed" } });
      this.vms.delete(vmId);
      return c.json(task, 202);
    });
    app.get("/v1/tasks/:id", (c) => {
      const t = this.tasks.get(c.req.param("id"));
      if (!t) throw new ApiError("task_not_found", "no such task");
      t.polls++;
      const s = t.script;
      if (s.kind === "lose-once") {
        this.scripts.set(this.vms.get(t.task.vm_id)!.name, { kind: "succeed" });
        this.tasks.delete(t.task.id);
        throw new ApiError("task_not_found", "agent restarted");
      }
      if (t.task.status === "running") {
        if (s.kind === "succeed" && t.polls > (s.polls ?? 1)) {
          t.task = {
            ...t.task,
            status: "succeeded",
            progress: "running",
            result: {
              phase: "running",
              accelerator: "tcg",
              image: "img.raw",
              image_cache_hit: false,
            },
          };
          this.vms.set(t.task.vm_id, {
            ...this.vms.get(t.task.vm_id)!,
            phase: "running",
            pid: 1234,
          });
        } else if (s.kind === "fail" && t.polls > (s.polls ?? 1)) {
          t.task = { ...t.task, status: "failed", error: s.error };
          this.vms.set(t.task.vm_id, { ...this.vms.get(t.task.vm_id)!, phase: "stopped" });
        }
      }
      return c.json(t.task);
    });
    app.put("/v1/pools", (c) => c.body(null, 204));
    app.get("/v1/vms/:id/console-log", (c) => {
      const vm = this.vms.get(c.req.param("id"));
      if (!vm) throw new ApiError("vm_not_found", "no such vm");
      const tail = Number(c.req.query("tail_bytes"));
      return c.text(`console of ${vm.name}\nlogin: `.slice(-tail), 200);
    });
    return app;
  }

  /**
   * Sends one heartbeat (fields of `over` replace the defaults). The first heartbeat of a
   * node makes it `ready`; the pool provisioner then creates its default pool, so without
   * `over` this waits for that pool and heartbeats again to report it ready.
   */
  async heartbeat(
    over: Partial<HeartbeatRequest> = {},
  ): Promise<{ status: number; body: HeartbeatResponse & { error?: ErrorInfo } }> {
    const res = await this.#heartbeat(over);
    if (
      res.status === 200 && this.poolsReady && Object.keys(over).length === 0 &&
      !res.body.desired_pools.some((p) => p.name === "default")
    ) {
      await until(
        "default pool provisioned",
        async () => await this.#cp.ctx.store.get(`/pools/default/${this.nodeName}`),
      );
      return await this.#heartbeat(over);
    }
    return res;
  }

  async #heartbeat(
    over: Partial<HeartbeatRequest> = {},
  ): Promise<{ status: number; body: HeartbeatResponse & { error?: ErrorInfo } }> {
    const poolsDir = `${this.#cp.ctx.cfg.store.data_dir}/agent-pools`;
    const hb: HeartbeatRequest = {
      node_name: this.nodeName,
      endpoint: this.endpoint,
      architecture: "amd64",
      accelerator: "tcg",
      agent_version: "fake",
      pools_dir: poolsDir,
      resources: {
        cpu_cores_total: 16,
        load_average_1m: 0.1,
        memory_total_mib: 65536,
        memory_available_mib: 32768,
        system_disk_total_bytes: 1e12,
        system_disk_available_bytes: 5e11,
      },
      pools: this.poolsReady
        ? [{
          name: "default",
          path: `${poolsDir}/default`,
          status: "ready",
          message: null,
          total_bytes: 1e12,
          available_bytes: 5e11,
          images: [],
        }]
        : [],
      vms: [...this.vms.values()],
      tasks: [],
      ...over,
    };
    const res = await fetch(`${this.cpUrl}/v1/nodes/heartbeat`, {
      method: "POST",
      client: this.#client!,
      headers: { "content-type": "application/json" },
      body: JSON.stringify(hb),
    });
    return { status: res.status, body: await res.json() };
  }

  async close(): Promise<void> {
    await this.server?.close();
    this.#client?.close();
  }
}

export { AGENT_CERT_ORG };

/** Polls `fn` every 25 ms until truthy (throws after `ms`); see the harness's `waitFor`. */
export function until<T>(
  what: string,
  fn: () => Promise<T | null | undefined | false> | T | null | undefined | false,
  ms = 10_000,
): Promise<T> {
  return waitFor(what, async () => await fn(), ms, 25);
}
