/**
 * The control plane's console (cp/console/): ticket rules, the WebSocket proxy and the
 * browser page, with real control-plane parts (embedded store, cluster PKI, users, JWTs, the
 * login route) composed like the public app, an injected clock, and a real agent bridge
 * (agent/console.ts on mTLS with a certificate from the cluster CA) in front of a stand-in
 * serial socket. The browser page runs in headless Chromium.
 */
import "reflect-metadata";
import { join } from "node:path";
import type { Buffer } from "node:buffer";
import { createHash } from "node:crypto";
// node:assert directly: test/assert.ts does not type-check once `ws` brings @types/node in.
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { Hono } from "hono";
import { WebSocket } from "ws";
import { chromium } from "playwright-core";
import { type ConsoleVms, createConsoleUpgrade } from "../../agent/console.ts";
import { createAgentClient } from "../../cp/agent_client.ts";
import { issueAccessToken, loadOrCreateJwtSecret } from "../../cp/auth/jwt.ts";
import type { AppEnv } from "../../cp/auth/middleware.ts";
import { parseApiConfig } from "../../cp/config.ts";
import { consolePageRoutes, consoleRoutes } from "../../cp/console/mod.ts";
import { MAX_CLIENT_BUFFER_BYTES } from "../../cp/console/routes.ts";
import { CONSOLE_PAGE_CSP } from "../../cp/console/page.ts";
import type { CpContext } from "../../cp/context.ts";
import { ensureClusterPki } from "../../cp/pki.ts";
import { keys, type UserRecord } from "../../cp/repo/records.ts";
import { authRoutes } from "../../cp/routes/auth.ts";
import { openKvStore } from "../../cp/store/kv.ts";
import { createUser } from "../../cp/users/service.ts";
import type { VmPhase } from "../../shared/api/vm_runtime.ts";
import { ConsoleTicketSchema } from "../../shared/api/console.ts";
import { AGENT_CERT_ORG } from "../../shared/constants.ts";
import { ApiError } from "../../shared/errors.ts";
import { errorHandler, notFoundHandler, requestLogger } from "../../shared/http.ts";
import { createLogger } from "../../shared/log.ts";
import { createCsr, signCsr, splitSans } from "../../shared/pki.ts";
import type { Role } from "../../shared/rbac.ts";
import { serveTls, type TlsServer } from "../../shared/tls.ts";

const TTL_SECONDS = 30;

/** The agent side: VM phases as the agent sees them. */
class AgentVms implements ConsoleVms {
  vms = new Map<string, { phase: VmPhase; serialSock: string }>();
  #subs = new Set<(vm: { id: string; phase: VmPhase }) => void>();
  consoleTarget(id: string) {
    const vm = this.vms.get(id);
    if (!vm) throw new ApiError("vm_not_found", `vm ${id} not found on this agent`);
    if (vm.phase !== "running") {
      throw new ApiError("vm_invalid_state", `vm ${id} is ${vm.phase}`, { status: vm.phase });
    }
    return { serialSock: vm.serialSock };
  }
  subscribe(cb: (vm: { id: string; phase: VmPhase }) => void) {
    this.#subs.add(cb);
    return () => this.#subs.delete(cb);
  }
  setPhase(id: string, phase: VmPhase) {
    this.vms.get(id)!.phase = phase;
    for (const cb of this.#subs) cb({ id, phase });
  }
}

/** A stand-in for QEMU's serial socket: one client at a time, recording its input. */
class FakeSerial {
  readonly listener: Deno.UnixListener;
  conn: Deno.UnixConn | null = null;
  received = "";
  accepted = 0;
  ended = 0;

  constructor(readonly path: string) {
    this.listener = Deno.listen({ transport: "unix", path });
    void this.#accept();
  }

  async #accept() {
    for await (const conn of this.listener) {
      this.conn = conn;
      this.accepted++;
      const buf = new Uint8Array(4096);
      try {
        for (;;) {
          const n = await conn.read(buf);
          if (n === null) break;
          this.received += new TextDecoder().decode(buf.subarray(0, n));
        }
      } catch { /* closed */ }
      this.ended++;
      this.conn = null;
    }
  }

  async send(text: string) {
    await this.conn!.write(new TextEncoder().encode(text));
  }

  close() {
    this.listener.close();
    try {
      this.conn?.close();
    } catch { /* closed */ }
  }
}

/** The whole stack of this file. */
async function consoleStack() {
  const dir = await Deno.makeTempDir({ dir: "/tmp", prefix: "otx-cpcon-" });
  const logLines: string[] = [];
  const log = createLogger("api", "debug", (l) => logLines.push(l));
  const cfg = parseApiConfig(`store:\n  data_dir: ${dir}/data\n`);
  await Deno.mkdir(cfg.store.data_dir, { recursive: true });
  const store = await openKvStore(join(cfg.store.data_dir, "store.kv"));
  const pki = await ensureClusterPki(store, cfg, log, { hostname: "localhost", addresses: [] });
  let nowMs = Date.now();
  const clock = {
    now: () => new Date(nowMs),
    advance: (seconds: number) => nowMs += seconds * 1000,
  };
  const ctx: CpContext = {
    cfg,
    log,
    store,
    pki,
    jwtSecret: await loadOrCreateJwtSecret(store),
    agents: createAgentClient(pki.ca.certPem, pki.replica),
    now: clock.now,
  };
  const app = new Hono<AppEnv>();
  app.onError(errorHandler(log));
  app.notFound(notFoundHandler);
  app.use("*", requestLogger(log));
  app.route("/", consolePageRoutes(ctx));
  app.route("/v1/auth", authRoutes(ctx));
  app.route("/v1/vms", consoleRoutes(ctx, { ttlSeconds: TTL_SECONDS, now: clock.now }));
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, app.fetch);
  const base = `http://127.0.0.1:${server.addr.port}`;

  // The node's agent: a certificate from the cluster CA (CN = node name), the real bridge.
  const agentCert = async (cn: string) => {
    const csr = await createCsr(cn, splitSans(["127.0.0.1"]));
    return { certPem: await signCsr(pki.ca, csr.csrPem, cn, AGENT_CERT_ORG), keyPem: csr.keyPem };
  };
  const agentVms = new AgentVms();
  const { log: agentLog } = { log: createLogger("agent", "error", () => {}) };
  const startAgent = async (cn: string) => {
    const cert = await agentCert(cn);
    const bridge = createConsoleUpgrade({ vms: agentVms, log: agentLog });
    const tls: TlsServer = await serveTls({
      hostname: "127.0.0.1",
      port: 0,
      certPem: cert.certPem,
      keyPem: cert.keyPem,
      caPem: pki.ca.certPem,
      requireClientCert: true,
      fetch: () => new Response("no", { status: 404 }),
      onUpgrade: bridge.onUpgrade,
    });
    return { bridge, tls, endpoint: `https://127.0.0.1:${tls.port}` };
  };
  const agent = await startAgent("node-c");
  const impostor = await startAgent("node-x");
  const serial = new FakeSerial(join(dir, "serial.sock"));

  const putNode = (endpoint: string | null) =>
    store.put(keys.node("node-c"), { id: crypto.randomUUID(), name: "node-c", endpoint });
  const user = async (role: Role) => {
    const u = await createUser(store, {
      email: `${role}-${crypto.randomUUID().slice(0, 8)}@example.com`,
      password: `${role}-password`,
      role,
    });
    const jwt = await issueAccessToken(ctx.jwtSecret, { sub: u.id, role }, 3600, clock.now());
    return { ...u, password: `${role}-password`, jwt: jwt.token };
  };
  // The developer the VMs belong to: developers attach only to their own VMs' consoles.
  const dev = await user("developer");
  const putVm = (name: string, id: string, status: string) =>
    store.put(keys.vm(name), { id, name, node: "node-c", status, owner_id: dev.id });

  return {
    ctx,
    clock,
    base,
    logLines,
    agent,
    impostor,
    agentVms,
    serial,
    putNode,
    putVm,
    user,
    dev,
    async close() {
      agent.bridge.closeAll();
      impostor.bridge.closeAll();
      serial.close();
      await agent.tls.close();
      await impostor.tls.close();
      await server.shutdown();
      ctx.agents.close();
      await store.close();
      await Deno.remove(dir, { recursive: true });
    },
  };
}

/** `POST /v1/vms/{name}/console` with `jwt`. */
async function ticket(base: string, name: string, jwt?: string) {
  const res = await fetch(`${base}/v1/vms/${name}/console`, {
    method: "POST",
    headers: jwt ? { authorization: `Bearer ${jwt}` } : {},
  });
  return { status: res.status, body: await res.json() };
}

/** A client attached to the console, collecting output. */
class Client {
  text = "";
  readonly closed: Promise<{ code: number; reason: string }>;
  constructor(readonly ws: WebSocket) {
    ws.on("message", (d: Buffer) => this.text += d.toString("utf8"));
    this.closed = new Promise((resolve) =>
      ws.on("close", (code: number, r: Buffer) => resolve({ code, reason: r.toString() }))
    );
  }
}

type Attach =
  | { kind: "open"; client: Client }
  | { kind: "refused"; status: number; code: string; message: string };

/** Opens the WebSocket at `path` (relative to `base`). */
function attach(base: string, path: string): Promise<Attach> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(base.replace(/^http/, "ws") + path);
    const client = new Client(ws);
    ws.once("open", () => resolve({ kind: "open", client }));
    ws.once("unexpected-response", (_req, res) => {
      let body = "";
      res.on("data", (c: Buffer) => body += c.toString());
      res.on("end", () => {
        ws.terminate();
        const e = JSON.parse(body).error;
        resolve({ kind: "refused", status: res.statusCode ?? 0, code: e.code, message: e.message });
      });
    });
    ws.once("error", reject);
  });
}

async function opened(base: string, path: string): Promise<Client> {
  const a = await attach(base, path);
  if (a.kind !== "open") throw new Error(`refused: ${a.status} ${a.code}: ${a.message}`);
  return a.client;
}

async function refusal(base: string, path: string): Promise<[number, string]> {
  const a = await attach(base, path);
  if (a.kind === "open") {
    a.client.ws.terminate();
    throw new Error(`expected a refusal for ${path}`);
  }
  return [a.status, a.code];
}

/** Resolves when `cond()` holds (checked every 10 ms for up to `ms`). */
async function eventually(what: string, cond: () => boolean, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

Deno.test("cp console: tickets, redemption and the WebSocket proxy", async (t) => {
  const s = await consoleStack();
  const vmId = crypto.randomUUID();
  s.agentVms.vms.set(vmId, { phase: "running", serialSock: s.serial.path });
  await s.putNode(s.agent.endpoint);
  await s.putVm("web", vmId, "running");
  const issued: string[] = [];
  const newTicket = async (jwt: string, name = "web") => {
    const r = await ticket(s.base, name, jwt);
    assertEquals(r.status, 201, JSON.stringify(r.body));
    const tk = ConsoleTicketSchema.parse(r.body);
    issued.push(tk.token);
    return tk;
  };
  try {
    const dev = s.dev;
    const viewer = await s.user("viewer");

    await t.step("a viewer may not type into a guest: 403 at ticket creation", async () => {
      const r = await ticket(s.base, "web", viewer.jwt);
      assertEquals([r.status, r.body.error.code], [403, "permission_denied"]);
    });
    await t.step("no credential is 401; an unknown VM 404; a stopped VM 409", async () => {
      assertEquals((await ticket(s.base, "web")).status, 401);
      const unknown = await ticket(s.base, "nope", dev.jwt);
      assertEquals([unknown.status, unknown.body.error.code], [404, "vm_not_found"]);
      await s.putVm("halted", crypto.randomUUID(), "stopped");
      const stopped = await ticket(s.base, "halted", dev.jwt);
      assertEquals([stopped.status, stopped.body.error.code], [409, "vm_invalid_state"]);
      assertEquals(stopped.body.error.details, { status: "stopped" });
    });
    await t.step("a ticket: single-use token, TTL from now, only its hash stored", async () => {
      const tk = await newTicket(dev.jwt);
      assert(/^otxcon_[A-Za-z0-9_-]{43}$/.test(tk.token), tk.token);
      assertEquals(tk.websocket_path, `/v1/vms/web/console?token=${tk.token}`);
      assertEquals(Date.parse(tk.expires_at), s.clock.now().getTime() + TTL_SECONDS * 1000);
      const hash = createHash("sha256").update(tk.token).digest("hex");
      const kv = await s.ctx.store.get<Record<string, unknown>>(`/console-tokens/${hash}`);
      assert(kv && kv.lease, "the token's record is attached to a lease");
      assertEquals(kv.value.user_id, dev.id);
      assertEquals(kv.value.vm_id, vmId);
      assert(!JSON.stringify(kv.value).includes(tk.token), "the token itself is not stored");
    });
    await t.step("a plain GET (no upgrade) is 400 and does not consume the token", async () => {
      const tk = await newTicket(dev.jwt);
      const res = await fetch(s.base + tk.websocket_path);
      assertEquals([res.status, (await res.json()).error.code], [400, "validation_failed"]);
      const c = await opened(s.base, tk.websocket_path);
      c.ws.close();
      await c.closed;
    });

    let client!: Client;
    let used = "";
    await t.step("the token attaches: bytes flow both ways through the agent", async () => {
      const tk = await newTicket(dev.jwt);
      used = tk.websocket_path;
      client = await opened(s.base, used);
      await eventually("serial connected", () => s.serial.conn !== null);
      await s.serial.send("login: ");
      await eventually("output", () => client.text.includes("login: "));
      client.ws.send(new TextEncoder().encode("root\r"));
      client.ws.send("echo text-frame\r");
      await eventually("input", () => s.serial.received.includes("root\recho text-frame\r"));
    });
    await t.step("a used token is 401 unauthenticated", async () => {
      assertEquals(await refusal(s.base, used), [401, "unauthenticated"]);
    });
    await t.step("the client leaving closes the agent's serial connection", async () => {
      const ended = s.serial.ended;
      client.ws.close();
      await client.closed;
      await eventually("serial released", () => s.serial.ended === ended + 1);
      assertEquals(s.agent.bridge.openSerialConnections(), 0);
    });
    await t.step("an expired token is 401 token_expired (injected clock)", async () => {
      const tk = await newTicket(dev.jwt);
      s.clock.advance(TTL_SECONDS);
      assertEquals(await refusal(s.base, tk.websocket_path), [401, "token_expired"]);
      const fresh = await newTicket(dev.jwt);
      s.clock.advance(TTL_SECONDS - 1);
      const c = await opened(s.base, fresh.websocket_path);
      c.ws.close();
      await c.closed;
    });
    await t.step("a token for another VM is 401, and burnt", async () => {
      const tk = await newTicket(dev.jwt);
      await s.putVm("other", crypto.randomUUID(), "running");
      const token = tk.websocket_path.split("token=")[1];
      assertEquals(
        await refusal(s.base, `/v1/vms/other/console?token=${token}`),
        [401, "unauthenticated"],
      );
      assertEquals(await refusal(s.base, tk.websocket_path), [401, "unauthenticated"]);
      assertEquals(
        await refusal(s.base, `/v1/vms/web/console?token=otxcon_forged`),
        [401, "unauthenticated"],
      );
    });
    await t.step("a user who lost vm:console (or is gone) is 403 on redemption", async () => {
      const op = await s.user("operator");
      const tk = await newTicket(op.jwt);
      const rec = (await s.ctx.store.get<UserRecord>(keys.user(op.id)))!.value;
      await s.ctx.store.put(keys.user(op.id), { ...rec, role: "viewer" });
      assertEquals(await refusal(s.base, tk.websocket_path), [403, "permission_denied"]);
      const tk2 = await newTicket(dev.jwt);
      const other = await s.user("operator");
      const tk3 = await newTicket(other.jwt);
      await s.ctx.store.delete(keys.user(other.id));
      assertEquals(await refusal(s.base, tk3.websocket_path), [403, "permission_denied"]);
      // The first user's ticket is unaffected.
      const c = await opened(s.base, tk2.websocket_path);
      c.ws.close();
      await c.closed;
    });
    await t.step("a VM deleted or re-created since the ticket is 404", async () => {
      const tk = await newTicket(dev.jwt);
      await s.putVm("web", crypto.randomUUID(), "running");
      assertEquals(await refusal(s.base, tk.websocket_path), [404, "vm_not_found"]);
      await s.putVm("web", vmId, "running");
      const tk2 = await newTicket(dev.jwt);
      await s.ctx.store.delete(keys.vm("web"));
      assertEquals(await refusal(s.base, tk2.websocket_path), [404, "vm_not_found"]);
      await s.putVm("web", vmId, "running");
    });
    await t.step("the agent's refusal is passed on before the upgrade", async () => {
      s.agentVms.setPhase(vmId, "stopped");
      const tk = await newTicket(dev.jwt);
      assertEquals(await refusal(s.base, tk.websocket_path), [409, "vm_invalid_state"]);
      s.agentVms.setPhase(vmId, "running");
    });
    await t.step(
      "an unreachable agent, or one with another node's certificate, is 502",
      async () => {
        await s.putNode("https://127.0.0.1:1");
        const tk = await newTicket(dev.jwt);
        assertEquals(await refusal(s.base, tk.websocket_path), [502, "agent_unreachable"]);
        await s.putNode(s.impostor.endpoint);
        const tk2 = await newTicket(dev.jwt);
        const accepted = s.serial.accepted;
        assertEquals(await refusal(s.base, tk2.websocket_path), [502, "agent_unreachable"]);
        assertEquals(s.serial.accepted, accepted, "the impostor was never asked for the console");
        await s.putNode(null);
        const tk3 = await newTicket(dev.jwt);
        assertEquals(await refusal(s.base, tk3.websocket_path), [502, "agent_unreachable"]);
        await s.putNode(s.agent.endpoint);
      },
    );
    await t.step("a client that stops reading is dropped; the agent side is released", async () => {
      const tk = await newTicket(dev.jwt);
      // A client that completes the handshake and never reads again.
      const slow = await Deno.connect({
        hostname: "127.0.0.1",
        port: Number(new URL(s.base).port),
      });
      await slow.write(new TextEncoder().encode(
        `GET ${tk.websocket_path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n` +
          "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n" +
          "Sec-WebSocket-Version: 13\r\n\r\n",
      ));
      const head = new Uint8Array(12);
      await slow.read(head);
      assertEquals(new TextDecoder().decode(head), "HTTP/1.1 101");
      await eventually("serial connected", () => s.serial.conn !== null);
      const chunk = "y".repeat(64 * 1024);
      let sent = 0;
      while (s.agent.bridge.viewers(vmId) === 1) {
        assert(sent < 256 * 1024 * 1024, "the slow client was never dropped");
        await s.serial.send(chunk).catch(() => {});
        sent += chunk.length;
      }
      assert(sent > MAX_CLIENT_BUFFER_BYTES, `dropped after only ${sent} bytes`);
      await eventually("serial released", () => s.serial.conn === null);
      slow.close();
      const count = (msg: string) => s.logLines.filter((l) => JSON.parse(l).msg === msg).length;
      await eventually(
        "detach logged",
        () => count("console detached") === count("console attached"),
      );
    });
    await t.step("the VM stopping closes the client with 1000", async () => {
      const c = await opened(s.base, (await newTicket(dev.jwt)).websocket_path);
      await eventually("serial connected", () => s.serial.conn !== null);
      s.agentVms.setPhase(vmId, "stopped");
      assertEquals((await c.closed).code, 1000);
      s.agentVms.setPhase(vmId, "running");
    });
    await t.step("the agent going away closes the client with 1011", async () => {
      const c = await opened(s.base, (await newTicket(dev.jwt)).websocket_path);
      s.agent.bridge.closeAll();
      assertEquals((await c.closed).code, 1011);
    });
    await t.step("attach/detach are logged with vm, user and viewers; tokens never", () => {
      const lines = s.logLines.map((l) => JSON.parse(l));
      const attached = lines.filter((l) => l.msg === "console attached");
      const detached = lines.filter((l) => l.msg === "console detached");
      assert(attached.length >= 5 && detached.length === attached.length);
      assertEquals(
        { vm: attached[0].vm, vm_id: attached[0].vm_id, user: attached[0].user_id },
        { vm: "web", vm_id: vmId, user: dev.id },
      );
      assertEquals(attached[0].viewers, 1);
      assertEquals(detached[0].viewers, 0);
      assert(issued.length >= 10);
      for (const token of issued) {
        const secret = token.slice("otxcon_".length);
        assert(!s.logLines.some((l) => l.includes(secret)), "a console token reached a log line");
      }
    });
  } finally {
    await s.close();
  }
});

Deno.test({
  name: "cp console: the browser page logs in, attaches and types (headless Chromium)",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn(t) {
    const s = await consoleStack();
    const vmId = crypto.randomUUID();
    s.agentVms.vms.set(vmId, { phase: "running", serialSock: s.serial.path });
    await s.putNode(s.agent.endpoint);
    await s.putVm("web", vmId, "running");
    const browser = await chromium.launch({
      executablePath: "/usr/bin/chromium",
      args: [
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
      ],
    });
    try {
      const dev = s.dev;
      const viewer = await s.user("viewer");
      const problems: string[] = [];
      const page = await browser.newPage();
      page.on("pageerror", (e) => problems.push(`pageerror: ${e.message}`));
      page.on("console", (m) => {
        // Failed requests (the viewer's 403) are logged too; anything else (a CSP violation,
        // a script error) is a problem.
        if (m.type() === "error" && !m.text().startsWith("Failed to load resource")) {
          problems.push(`console: ${m.text()}`);
        }
      });
      const login = async (u: { email: string; password: string }) => {
        const res = await page.goto(`${s.base}/console/web`);
        assertEquals(res?.headers()["content-security-policy"], CONSOLE_PAGE_CSP);
        await page.fill("#email", u.email);
        await page.fill("#password", u.password);
        await page.click("button[type=submit]");
      };

      await t.step("a viewer is told permission is denied", async () => {
        await login(viewer);
        await page.locator("#status", { hasText: "Permission denied" }).waitFor();
      });
      await t.step(
        "a developer attaches; output shows in the terminal; keys reach the guest",
        async () => {
          await login(dev);
          await page.locator('body[data-state="attached"]').waitFor();
          await eventually("serial connected", () => s.serial.conn !== null);
          await s.serial.send("\r\nwelcome-to-web login: ");
          await page.locator(".xterm-rows", { hasText: "welcome-to-web login:" }).waitFor();
          await page.keyboard.type("root");
          await page.keyboard.press("Enter");
          await eventually("keys", () => s.serial.received.includes("root\r"));
        },
      );
      await t.step("the VM stopping is shown", async () => {
        s.agentVms.setPhase(vmId, "stopped");
        await page.locator("#status", { hasText: "the VM stopped" }).waitFor();
      });
      await t.step("assets are bundled, cached for a year, and the CSP held", async () => {
        const res = await fetch(`${s.base}/console/assets/xterm.js`);
        assertEquals(res.headers.get("cache-control"), "public, max-age=31536000, immutable");
        assert((await res.text()).includes("Terminal"));
        assertEquals(problems, []);
      });
    } finally {
      await browser.close();
      await s.close();
    }
  },
});
