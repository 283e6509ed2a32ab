/**
 * A one-node cluster of real processes for end-to-end tests: `otherix-api` (sandboxed, on
 * its embedded store), one `otherix-agent` joined with a real join token, a loopback image
 * server (optionally trickling bytes, to hold a download open) and an admin API client.
 * QEMU outlives the agent by design, so {@link Cluster.close} kills every QEMU of the
 * cluster's run directory.
 *
 * @module
 */
import { join } from "node:path";
import {
  type AgentHandle,
  type ApiHandle,
  pgrep,
  startAgent,
  startApi,
  tempRoot,
  TEST_ADMIN,
  waitFor,
} from "../harness.ts";
import { ensureTestImage } from "../test_image.ts";

/** A JSON API answer. */
// deno-lint-ignore no-explicit-any
export type Json = any;

/** Options of {@link startCluster}. */
export interface ClusterOptions {
  /** Extra control-plane config. */
  apiConfig?: Record<string, unknown>;
  /** Extra control-plane env (e.g. `OTHERIX_FAILPOINTS`). */
  apiEnv?: Record<string, string>;
  prefix?: string;
}

/** A running one-node cluster. */
export class Cluster {
  api!: ApiHandle;
  agent!: AgentHandle;
  token = "";
  /** Requests served per image path. */
  hits = new Map<string, number>();
  /** Paths under `/slow/` trickle this many bytes per 100 ms (0: as fast as possible). */
  trickle = 64 * 1024;
  #image!: Uint8Array<ArrayBuffer>;
  #server!: Deno.HttpServer<Deno.NetAddr>;
  #caFingerprint = "";
  #abort = new AbortController();

  constructor(readonly root: string, readonly opts: ClusterOptions) {}

  /** Image URL of the test image (`/slow/…` trickles). */
  imageUrl(slow = false, name = "otherix-test.img"): string {
    return `http://127.0.0.1:${this.#server.addr.port}/${slow ? "slow" : "images"}/${name}`;
  }

  async start(): Promise<void> {
    this.#image = await Deno.readFile((await ensureTestImage()).path);
    this.#server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, (req) => {
      const path = new URL(req.url).pathname;
      this.hits.set(path, (this.hits.get(path) ?? 0) + 1);
      if (path.startsWith("/images/")) return new Response(this.#image);
      if (path.startsWith("/slow/")) {
        const image = this.#image;
        const signal = this.#abort.signal;
        const step = () => this.trickle;
        let off = 0;
        const body = new ReadableStream<Uint8Array>({
          async pull(ctrl) {
            if (signal.aborted || off >= image.length) return ctrl.close();
            await new Promise((r) => setTimeout(r, 100));
            const n = step() || image.length;
            ctrl.enqueue(image.slice(off, off + n));
            off += n;
          },
        });
        return new Response(body, { headers: { "content-length": String(image.length) } });
      }
      return new Response("not found", { status: 404 });
    });
    await this.startApi();
    const join1 = await this.call("POST", "/v1/nodes/join-tokens", { node_name: "node-1" });
    this.#caFingerprint = join1.json.ca_fingerprint;
    this.agent = await startAgent({
      root: join(this.root, "agent"),
      cpUrl: this.api.agentUrl,
      caFingerprint: join1.json.ca_fingerprint,
      nodeName: "node-1",
      token: join1.json.token,
    });
    await this.agent.proc.waitForOutput((o) => o.includes("agent: bootstrap complete"), 60_000);
    await waitFor(
      "default pool ready",
      async () => {
        const pools = (await this.call("GET", "/v1/pools")).json.items ?? [];
        return pools.some((p: Json) => p.status === "ready");
      },
      60_000,
      100,
    );
  }

  /** (Re)starts the control plane on the same data dir; `env` overrides the start env. */
  async startApi(env: Record<string, string> = this.opts.apiEnv ?? {}): Promise<void> {
    this.api = await startApi({
      root: join(this.root, "cp"),
      publicPort: this.api ? Number(new URL(this.api.url).port) : undefined,
      agentPort: this.api ? Number(new URL(this.api.agentUrl).port) : undefined,
      config: {
        storage_pools: { allowed_path_prefixes: [join(this.root, "agent/var/lib/otherix/pools/")] },
        workers: { lease_ttl_seconds: 2, poll_interval_ms: 1000 },
        ...this.opts.apiConfig,
      },
      env,
    });
    const login = await fetch(`${this.api.url}/v1/auth/login`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ email: TEST_ADMIN.email, password: TEST_ADMIN.password }),
    });
    this.token = (await login.json()).access_token;
  }

  /** Restarts the agent on the same root (no new join token). */
  async restartAgent(signal: "SIGTERM" | "SIGKILL"): Promise<void> {
    if (signal === "SIGKILL") {
      this.agent.proc.child.kill("SIGKILL");
      await this.agent.proc.status();
    } else {
      await this.agent.proc.stop();
    }
    const prev = this.agent;
    this.agent = await startAgent({
      root: prev.root,
      cpUrl: this.api.agentUrl,
      caFingerprint: this.#caFingerprint,
      nodeName: "node-1",
      port: prev.port,
    });
    await this.agent.proc.waitForOutput((o) => o.includes("heartbeat: ok"), 60_000);
  }

  /** Calls the public API as the admin. */
  async call(
    method: string,
    path: string,
    body?: unknown,
  ): Promise<{ status: number; json: Json }> {
    const res = await fetch(this.api.url + path, {
      method,
      headers: {
        authorization: `Bearer ${this.token}`,
        ...(body === undefined ? {} : { "content-type": "application/json" }),
      },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.text();
    let json: Json = null;
    try {
      json = JSON.parse(text);
    } catch { /* not JSON */ }
    return { status: res.status, json };
  }

  /** Waits until VM `name` satisfies `pred` (or is absent when `pred` is "absent"). */
  async waitVm(name: string, pred: ((vm: Json) => boolean) | "absent", ms = 90_000): Promise<Json> {
    return await waitFor(
      `vm ${name} condition`,
      async () => {
        const r = await this.call("GET", `/v1/vms/${name}`);
        if (pred === "absent") return r.status === 404 ? {} : null;
        return r.status === 200 && pred(r.json) ? r.json : null;
      },
      ms,
      50,
    );
  }

  /** Waits until task `id` is terminal and returns it. */
  async waitTask(id: string, ms = 90_000): Promise<Json> {
    return await waitFor(
      `task ${id} terminal`,
      async () => {
        const t = (await this.call("GET", `/v1/tasks/${id}`)).json;
        return t?.status === "succeeded" || t?.status === "failed" ? t : null;
      },
      ms,
      50,
    );
  }

  /** PIDs of QEMU processes of VM `name` in this cluster. */
  qemuPids(name: string): number[] {
    return pgrep("qemu-system", `guest=${name}`, this.agent.runDir);
  }

  /** Stops everything, kills QEMUs left in this cluster's run directory, removes the root. */
  async close(): Promise<void> {
    this.#abort.abort();
    await this.agent?.proc.stop().catch(() => {});
    await this.api?.proc.stop().catch(() => {});
    for (const pid of this.agent ? pgrep("qemu-system", this.agent.runDir) : []) {
      try {
        Deno.kill(pid, "SIGKILL");
      } catch { /* gone */ }
    }
    await this.#server?.shutdown();
    if (!Deno.env.get("OTHERIX_KEEP_TEST_ROOT")) {
      await Deno.remove(this.root, { recursive: true }).catch(() => {});
    }
  }
}

/** Starts a one-node cluster; call `close()` when done. */
export async function startCluster(opts: ClusterOptions = {}): Promise<Cluster> {
  const c = new Cluster(await tempRoot(opts.prefix ?? "otx-cl"), opts);
  try {
    await c.start();
  } catch (e) {
    await c.close();
    throw e;
  }
  return c;
}

/** A VM create body for the test image. */
export function vmBody(c: Cluster, name: string, over: Record<string, unknown> = {}): Json {
  return {
    name,
    image_url: c.imageUrl(),
    architecture: "amd64",
    vcpus: 1,
    memory_mb: 256,
    disk_gib: 1,
    ...over,
  };
}

/** A serial console session over the control plane's WebSocket. */
export class ConsoleSession {
  output = "";
  closed: Promise<CloseEvent>;
  #ws: WebSocket;

  private constructor(ws: WebSocket) {
    this.#ws = ws;
    ws.binaryType = "arraybuffer";
    const dec = new TextDecoder();
    ws.onmessage = (e) => {
      this.output += typeof e.data === "string" ? e.data : dec.decode(e.data, { stream: true });
    };
    this.closed = new Promise((r) => ws.addEventListener("close", (e) => r(e)));
  }

  /** Opens a console on VM `name` (ticket + WebSocket). */
  static async open(c: Cluster, name: string): Promise<ConsoleSession> {
    const ticket = await c.call("POST", `/v1/vms/${name}/console`);
    if (ticket.status !== 201) throw new Error(`console ticket: ${JSON.stringify(ticket.json)}`);
    const ws = new WebSocket(c.api.url.replace(/^http/, "ws") + ticket.json.websocket_path);
    await new Promise((resolve, reject) => {
      ws.onopen = resolve;
      ws.onerror = () => reject(new Error("console WebSocket failed"));
    });
    return new ConsoleSession(ws);
  }

  /** Types `text`. */
  send(text: string): void {
    this.#ws.send(new TextEncoder().encode(text));
  }

  /** Waits until the output (after `from`) contains `needle`; returns the index after it. */
  async expect(needle: string, from = 0, ms = 90_000): Promise<number> {
    return await waitFor(
      `console shows ${JSON.stringify(needle)}`,
      () => {
        const i = this.output.indexOf(needle, from);
        return Promise.resolve(i >= 0 ? i + needle.length : null);
      },
      ms,
      50,
    );
  }

  close(): void {
    this.#ws.close();
  }
}
