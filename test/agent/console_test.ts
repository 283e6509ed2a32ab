/**
 * The agent's serial console bridge (agent/console.ts) on a real `serveTls` with real
 * certificates, `ws` clients presenting the control plane's identity, and:
 * - a real QEMU booting the offline test image (one boot for the whole scenario): two viewers
 *   share the guest's serial port, either may type, the serial connection is released when
 *   the last viewer leaves, and killing QEMU closes the viewers with 1000;
 * - a stand-in serial socket (a unix listener) for the rules that need no guest: refusals
 *   before the upgrade, 1000 on a phase change, 1001 on agent shutdown.
 */
import "reflect-metadata";
import { join } from "node:path";
import { Buffer } from "node:buffer";
import { connect as tlsConnect } from "node:tls";
import { WebSocket, WebSocketServer } from "ws";
// node:assert directly: test/assert.ts does not type-check once `ws` brings @types/node in.
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import {
  type ConsoleVms,
  createConsoleUpgrade,
  MAX_VIEWER_BUFFER_BYTES,
} from "../../agent/console.ts";
import { buildQemuArgs, vmFilePaths } from "../../agent/qemu.ts";
import { buildSeedIso } from "../../agent/cloudinit.ts";
import type { VmPhase } from "../../shared/api/vm_runtime.ts";
import { AGENT_CERT_ORG, CP_CERT_ORG } from "../../shared/constants.ts";
import { ApiError } from "../../shared/errors.ts";
import { createCa, createCsr, issueServerCert, signCsr, splitSans } from "../../shared/pki.ts";
import { serveTls, type TlsServer } from "../../shared/tls.ts";
import { Hono } from "hono";
import { memoryLogger } from "./helpers.ts";
import { ensureTestImage } from "../test_image.ts";

/** Certificates of a cluster: the agent's server cert, a CP client, another agent. */
async function cluster() {
  const ca = await createCa();
  const agent = await issueServerCert(
    ca,
    "node-a",
    AGENT_CERT_ORG,
    splitSans(["127.0.0.1", "localhost"]),
  );
  const cpCsr = await createCsr("cp-1", splitSans([]));
  const cp = {
    certPem: await signCsr(ca, cpCsr.csrPem, "cp-1", CP_CERT_ORG),
    keyPem: cpCsr.keyPem,
  };
  const otherCsr = await createCsr("node-b", splitSans([]));
  const other = {
    certPem: await signCsr(ca, otherCsr.csrPem, "node-b", AGENT_CERT_ORG),
    keyPem: otherCsr.keyPem,
  };
  return { ca, agent, cp, other };
}

/** A VM manager stand-in: VMs by id with a phase and a serial socket path. */
class StandInVms implements ConsoleVms {
  vms = new Map<string, { phase: VmPhase; serialSock: string }>();
  #subs = new Set<(vm: { id: string; phase: VmPhase }) => void>();

  consoleTarget(id: string): { serialSock: string } {
    const vm = this.vms.get(id);
    if (!vm) throw new ApiError("vm_not_found", `vm ${id} not found`);
    if (vm.phase !== "running" && vm.phase !== "paused") {
      throw new ApiError("vm_invalid_state", `vm ${id} is ${vm.phase}`, { status: vm.phase });
    }
    return { serialSock: vm.serialSock };
  }

  subscribe(cb: (vm: { id: string; phase: VmPhase }) => void): () => void {
    this.#subs.add(cb);
    return () => this.#subs.delete(cb);
  }

  get subscribers(): number {
    return this.#subs.size;
  }

  setPhase(id: string, phase: VmPhase): void {
    this.vms.get(id)!.phase = phase;
    for (const cb of this.#subs) cb({ id, phase });
  }
}

/** The bridge on a real mTLS server (the app answers every other request with 418). */
async function startBridge(certs: Awaited<ReturnType<typeof cluster>>, vms: ConsoleVms) {
  const { log, lines } = memoryLogger();
  const bridge = createConsoleUpgrade({ vms, log });
  const app = new Hono().all("*", (c) => c.text("app", 418));
  const server: TlsServer = await serveTls({
    hostname: "127.0.0.1",
    port: 0,
    certPem: certs.agent.certPem,
    keyPem: certs.agent.keyPem,
    caPem: certs.ca.certPem,
    requireClientCert: true,
    fetch: app.fetch,
    onUpgrade: bridge.onUpgrade,
  });
  return {
    bridge,
    server,
    lines,
    url: (id: string) => `wss://127.0.0.1:${server.port}/v1/vms/${id}/console`,
  };
}

/** Outcome of an attach attempt. */
type Attach =
  | { kind: "open"; viewer: Viewer }
  | { kind: "refused"; status: number; body: { error: { code: string; message: string } } };

/** A `ws` client attached to the bridge, collecting the guest's output as text. */
class Viewer {
  text = "";
  readonly closed: Promise<{ code: number; reason: string }>;
  #waiters: (() => void)[] = [];

  constructor(readonly ws: WebSocket) {
    ws.on("message", (data: Buffer) => {
      this.text += new TextDecoder().decode(data);
      for (const w of this.#waiters) w();
    });
    this.closed = new Promise((resolve) => {
      ws.on("close", (code: number, reason: Buffer) => {
        resolve({ code, reason: reason.toString() });
        for (const w of this.#waiters) w();
      });
    });
  }

  /** Resolves once the output (since `from`) includes `part`; rejects after `ms`. */
  until(part: string, ms = 60_000, from = 0): Promise<void> {
    return new Promise((resolve, reject) => {
      const check = () => {
        if (this.text.slice(from).includes(part)) {
          cleanup();
          resolve();
        } else if (this.ws.readyState === WebSocket.CLOSED) {
          cleanup();
          reject(
            new Error(`closed before ${JSON.stringify(part)}; got:\n${this.text.slice(-2000)}`),
          );
        }
      };
      const timer = setTimeout(() => {
        cleanup();
        reject(
          new Error(`no ${JSON.stringify(part)} within ${ms} ms; got:\n${this.text.slice(-2000)}`),
        );
      }, ms);
      const cleanup = () => {
        clearTimeout(timer);
        this.#waiters = this.#waiters.filter((w) => w !== check);
      };
      this.#waiters.push(check);
      check();
    });
  }

  /** Sends `s` as a binary frame (raw bytes), or as a text frame with `text: true`. */
  type(s: string, text = false): void {
    this.ws.send(text ? s : new TextEncoder().encode(s), { binary: !text });
  }
}

/** Opens a WebSocket to `url` with `identity` (CP by default). */
function attach(
  url: string,
  caPem: string,
  identity: { certPem: string; keyPem: string },
): Promise<Attach> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { ca: caPem, cert: identity.certPem, key: identity.keyPem });
    const viewer = new Viewer(ws);
    ws.once("open", () => resolve({ kind: "open", viewer }));
    ws.once("unexpected-response", (_req, res) => {
      let body = "";
      res.on("data", (c: Buffer) => body += c.toString());
      res.on("end", () => {
        ws.terminate();
        resolve({ kind: "refused", status: res.statusCode ?? 0, body: JSON.parse(body) });
      });
    });
    ws.once("error", (e) => reject(e));
  });
}

async function open(url: string, caPem: string, identity: { certPem: string; keyPem: string }) {
  const a = await attach(url, caPem, identity);
  if (a.kind !== "open") throw new Error(`refused: ${a.status} ${JSON.stringify(a.body)}`);
  return a.viewer;
}

async function refused(url: string, caPem: string, identity: { certPem: string; keyPem: string }) {
  const a = await attach(url, caPem, identity);
  if (a.kind !== "refused") {
    a.viewer.ws.terminate();
    throw new Error("expected a refusal before the upgrade");
  }
  return a;
}

/**
 * Talks to QEMU's serial socket directly: sends `input`, reads until `expect` appears (or
 * 30 s pass), disconnects. Returns what was read.
 */
async function direct(path: string, input: string, expect: string): Promise<string> {
  const conn = await Deno.connect({ transport: "unix", path });
  let text = "";
  const timer = setTimeout(() => conn.close(), 30_000);
  try {
    await conn.write(new TextEncoder().encode(input));
    const buf = new Uint8Array(4096);
    while (!text.includes(expect)) {
      const n = await conn.read(buf);
      if (n === null) break;
      text += new TextDecoder().decode(buf.subarray(0, n));
    }
  } catch {
    /* closed by the timer */
  } finally {
    clearTimeout(timer);
    try {
      conn.close();
    } catch { /* closed */ }
  }
  return text;
}

/** The agent's QEMU command line, minus daemonizing: the test's QEMU stays its child. */
function foreground(args: string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < args.length; i++) {
    if (args[i] === "-daemonize") continue;
    if (args[i] === "-pidfile") {
      i++;
      continue;
    }
    out.push(args[i]);
  }
  return out;
}

/** Resolves when `cond()` holds, checked on every event-loop turn for up to `ms`. */
async function eventually(what: string, cond: () => boolean, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

Deno.test({
  name: "agent console: two viewers share a real guest's serial port",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn(t) {
    const image = await ensureTestImage();
    const certs = await cluster();
    const root = await Deno.makeTempDir({ dir: "/tmp", prefix: "otx-con-" });
    const id = crypto.randomUUID();
    const files = vmFilePaths(join(root, "vms"), join(root, "run"), id);
    await Deno.mkdir(files.vmDir, { recursive: true });
    await Deno.mkdir(files.sockDir, { recursive: true });
    const img = await new Deno.Command("qemu-img", {
      args: ["create", "-f", "qcow2", "-F", "raw", "-b", image.path, files.disk],
      stdout: "null",
    }).output();
    assert(img.success, "qemu-img create failed");
    await buildSeedIso({
      isoBuilder: "genisoimage",
      vmId: id,
      hostname: "con-vm",
      output: files.seed,
    });
    const vms = new StandInVms();
    const { bridge, server, lines, url } = await startBridge(certs, vms);
    let qemu: Deno.ChildProcess | null = null;
    try {
      await t.step(
        "another agent's certificate is refused with 403 before the upgrade",
        async () => {
          const r = await refused(url(id), certs.ca.certPem, certs.other);
          assertEquals(r.status, 403);
          assertEquals(r.body.error.code, "permission_denied");
        },
      );
      await t.step("an unknown VM is 404 vm_not_found", async () => {
        const r = await refused(url(id), certs.ca.certPem, certs.cp);
        assertEquals([r.status, r.body.error.code], [404, "vm_not_found"]);
      });

      qemu = new Deno.Command("qemu-system-x86_64", {
        args: foreground(buildQemuArgs({
          name: "con-vm",
          architecture: "amd64",
          accelerator: "tcg",
          vcpus: 1,
          memoryMb: 256,
          files,
        })),
        stdin: "null",
        stdout: "null",
        stderr: "piped",
      }).spawn();
      const serialUp = () => Deno.stat(files.serialSock).then(() => true, () => false);
      const deadline = Date.now() + 30_000;
      while (!(await serialUp())) {
        assert(Date.now() < deadline, "QEMU did not create its serial socket");
        await new Promise((r) => setTimeout(r, 20));
      }
      vms.vms.set(id, { phase: "running", serialSock: files.serialSock });

      let a!: Viewer;
      let b!: Viewer;
      await t.step("both viewers see the boot and the login prompt", async () => {
        a = await open(url(id), certs.ca.certPem, certs.cp);
        b = await open(url(id), certs.ca.certPem, certs.cp);
        assertEquals(bridge.viewers(id), 2);
        assertEquals(bridge.openSerialConnections(), 1);
        await Promise.all([a.until("login:", 180_000), b.until("login:", 180_000)]);
      });
      await t.step(
        "input from one viewer reaches the guest; the other sees the shell",
        async () => {
          const mark = b.text.length;
          a.type("root\n");
          await b.until("#", 60_000, mark);
          a.type("echo console-$((6*7))\n");
          await b.until("console-42", 30_000, mark);
          await a.until("console-42", 30_000, mark);
        },
      );
      await t.step("text frames are UTF-8 input", async () => {
        const mark = a.text.length;
        b.type("echo txt-$((1+1))\n", true);
        await a.until("txt-2", 30_000, mark);
      });
      await t.step("a viewer leaving does not disturb the other", async () => {
        a.ws.close();
        assertEquals((await a.closed).code, 1005);
        await eventually("one viewer", () => bridge.viewers(id) === 1);
        const mark = b.text.length;
        b.type("echo still-$((2+2))\n");
        await b.until("still-4", 30_000, mark);
      });
      await t.step("the last viewer leaving releases QEMU's one serial client slot", async () => {
        b.ws.close();
        await b.closed;
        await eventually("serial connection closed", () => bridge.openSerialConnections() === 0);
        // QEMU serves one client at a time: a direct client gets an answer only because the
        // bridge's connection was really closed.
        const answer = await direct(files.serialSock, "echo direct-$((4+4))\n", "direct-8");
        assert(answer.includes("direct-8"), `a direct client got no answer: ${answer}`);
        const c = await open(url(id), certs.ca.certPem, certs.cp);
        c.type("echo again-$((3+3))\n");
        await c.until("again-6", 30_000);
        a = c;
      });
      await t.step("QEMU exiting closes viewers with 1000; then attaching is 409", async () => {
        const st = await Promise.race([qemu!.status, Promise.resolve(null)]);
        assertEquals(st, null, `QEMU exited early: ${JSON.stringify(st)}`);
        qemu!.kill("SIGKILL");
        await qemu!.status;
        const closed = await a.closed;
        assertEquals(closed.code, 1000);
        vms.setPhase(id, "stopped");
        const r = await refused(url(id), certs.ca.certPem, certs.cp);
        assertEquals([r.status, r.body.error.code], [409, "vm_invalid_state"]);
        assertEquals(bridge.openSerialConnections(), 0);
      });
      await t.step("attach and detach are logged with the viewer count", () => {
        const attached = lines.map((l) => JSON.parse(l)).filter((l) =>
          l.msg === "console: viewer attached"
        );
        assertEquals(attached.map((l) => l.viewers), [1, 2, 1]);
        assertEquals(attached[0].peer, "cp-1");
        assertEquals(attached[0].vm_id, id);
      });
    } finally {
      try {
        qemu?.kill("SIGKILL");
      } catch { /* exited */ }
      await qemu?.stderr.cancel();
      await qemu?.status;
      bridge.closeAll();
      await server.close();
      await Deno.remove(root, { recursive: true });
    }
  },
});

/** A stand-in for QEMU's serial socket: a unix listener recording what it receives. */
class FakeSerial {
  readonly listener: Deno.UnixListener;
  /** Connections still open. */
  conns = new Set<Deno.UnixConn>();
  accepted = 0;
  received = "";
  ended = 0;

  constructor(readonly path: string) {
    this.listener = Deno.listen({ transport: "unix", path });
    void this.#accept();
  }

  async #accept() {
    for await (const conn of this.listener) {
      this.conns.add(conn);
      this.accepted++;
      void (async () => {
        const buf = new Uint8Array(4096);
        try {
          for (;;) {
            const n = await conn.read(buf);
            if (n === null) break;
            this.received += new TextDecoder().decode(buf.subarray(0, n));
          }
        } catch { /* closed */ }
        this.conns.delete(conn);
        this.ended++;
      })();
    }
  }

  async send(text: string) {
    const bytes = new TextEncoder().encode(text);
    for (const c of this.conns) {
      let off = 0;
      while (off < bytes.length) off += await c.write(bytes.subarray(off));
    }
  }

  close() {
    this.listener.close();
    for (const c of this.conns) {
      try {
        c.close();
      } catch { /* closed */ }
    }
  }
}

Deno.test("agent console: refusals, phase changes, shutdown (stand-in serial)", async (t) => {
  const certs = await cluster();
  const root = await Deno.makeTempDir({ dir: "/tmp", prefix: "otx-con-" });
  const vms = new StandInVms();
  const { bridge, server, url, lines } = await startBridge(certs, vms);
  const serial = new FakeSerial(join(root, "serial.sock"));
  const id = crypto.randomUUID();
  vms.vms.set(id, { phase: "running", serialSock: serial.path });
  try {
    await t.step("paths other than /v1/vms/{id}/console are 404 not_found", async () => {
      const r = await refused(
        `wss://127.0.0.1:${server.port}/v1/vms/${id}/other`,
        certs.ca.certPem,
        certs.cp,
      );
      assertEquals([r.status, r.body.error.code], [404, "not_found"]);
    });
    await t.step("plain requests still reach the app", async () => {
      const res = await new Promise<number>((resolve, reject) => {
        import("node:https").then(({ request }) => {
          const req = request(`https://127.0.0.1:${server.port}/v1/vms/${id}/console`, {
            ca: certs.ca.certPem,
            cert: certs.cp.certPem,
            key: certs.cp.keyPem,
            agent: false,
          }, (r) => {
            r.resume();
            resolve(r.statusCode ?? 0);
          });
          req.on("error", reject);
          req.end();
        });
      });
      assertEquals(res, 418);
    });
    let a!: Viewer;
    let b!: Viewer;
    await t.step(
      "a paused VM can be attached; output fans out; input reaches the socket",
      async () => {
        vms.setPhase(id, "paused");
        a = await open(url(id), certs.ca.certPem, certs.cp);
        b = await open(url(id), certs.ca.certPem, certs.cp);
        await eventually("serial accepted", () => serial.conns.size === 1);
        await serial.send("hello viewers\r\n");
        await Promise.all([a.until("hello viewers"), b.until("hello viewers")]);
        a.type("from-a\n");
        b.type("from-b\n", true);
        await eventually(
          "input received",
          () => serial.received.includes("from-a\n") && serial.received.includes("from-b\n"),
        );
      },
    );
    await t.step(
      "the VM stopping closes every viewer with 1000 and the serial connection",
      async () => {
        vms.setPhase(id, "stopped");
        assertEquals((await a.closed).code, 1000);
        assertEquals((await b.closed).code, 1000);
        await eventually("serial connection closed", () => serial.ended === 1);
        assertEquals(bridge.openSerialConnections(), 0);
      },
    );
    await t.step("a stopped VM is 409 vm_invalid_state", async () => {
      const r = await refused(url(id), certs.ca.certPem, certs.cp);
      assertEquals([r.status, r.body.error.code], [409, "vm_invalid_state"]);
    });
    await t.step("a running VM whose serial socket is gone is 409, nothing left open", async () => {
      const gone = crypto.randomUUID();
      vms.vms.set(gone, { phase: "running", serialSock: join(root, "missing.sock") });
      const r = await refused(url(gone), certs.ca.certPem, certs.cp);
      assertEquals([r.status, r.body.error.code], [409, "vm_invalid_state"]);
      assertEquals(bridge.openSerialConnections(), 0);
    });
    await t.step("a viewer that stops reading is dropped (1008); others keep up", async () => {
      vms.setPhase(id, "running");
      const fast = await open(url(id), certs.ca.certPem, certs.cp);
      // A client that completes the handshake and then never reads (`ws` clients in Deno keep
      // reading while paused, so this one speaks WebSocket over a native TLS connection).
      const slow = await Deno.connectTls({
        hostname: "127.0.0.1",
        port: server.port,
        caCerts: [certs.ca.certPem],
        cert: certs.cp.certPem,
        key: certs.cp.keyPem,
      });
      await slow.write(new TextEncoder().encode(
        `GET /v1/vms/${id}/console HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n` +
          "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n" +
          "Sec-WebSocket-Version: 13\r\n\r\n",
      ));
      const head = new Uint8Array(12);
      await slow.read(head);
      assertEquals(new TextDecoder().decode(head), "HTTP/1.1 101");
      await eventually("two viewers", () => bridge.viewers(id) === 2);
      const chunk = "x".repeat(64 * 1024);
      let sent = 0;
      while (bridge.viewers(id) === 2) {
        assert(sent < 256 * 1024 * 1024, "the slow viewer was never dropped");
        await serial.send(chunk);
        sent += chunk.length;
      }
      assert(sent > MAX_VIEWER_BUFFER_BYTES, `dropped after only ${sent} bytes`);
      await eventually("the fast viewer got everything", () => fast.text.length >= sent, 30_000);
      assertEquals(fast.text.length, sent);
      const detached = lines.map((l) => JSON.parse(l)).filter((l) =>
        l.msg === "console: viewer detached"
      );
      assertEquals(detached.at(-1).reason, "viewer too slow");
      assertEquals(serial.conns.size, 1, "the serial connection stays for the other viewer");
      slow.close();
      fast.ws.close();
      await fast.closed;
      await eventually("serial connection closed", () => serial.conns.size === 0);
    });
    await t.step("the agent stopping closes viewers with 1001 and unsubscribes", async () => {
      const a = await open(url(id), certs.ca.certPem, certs.cp);
      assertEquals(vms.subscribers, 1);
      bridge.closeAll();
      assertEquals((await a.closed).code, 1001);
      assertEquals(vms.subscribers, 0);
      await eventually("serial connection closed", () => serial.conns.size === 0);
      const r = await refused(url(id), certs.ca.certPem, certs.cp);
      assertEquals([r.status, r.body.error.code], [502, "agent_unreachable"]);
    });
    await t.step("an agent-org certificate never reaches the VM lookup", async () => {
      const r = await refused(url("not-a-uuid"), certs.ca.certPem, certs.other);
      assertEquals(r.status, 403);
      assert(r.body.error.message.includes("O=otherix:nodes"), r.body.error.message);
    });
  } finally {
    bridge.closeAll();
    serial.close();
    await server.close();
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("serveTls onUpgrade: other upgrades are 400; close() ends WebSockets", async (t) => {
  const certs = await cluster();
  const wss = new WebSocketServer({ noServer: true });
  const server = await serveTls({
    hostname: "127.0.0.1",
    port: 0,
    certPem: certs.agent.certPem,
    keyPem: certs.agent.keyPem,
    caPem: certs.ca.certPem,
    requireClientCert: true,
    fetch: () => new Response("app", { status: 418 }),
    onUpgrade: (req, socket, head) => wss.handleUpgrade(req, socket, head, () => {}),
  });
  try {
    await t.step("an h2c upgrade is refused with 400 validation_failed", async () => {
      const raw = await new Promise<string>((resolve, reject) => {
        const sock = tlsConnect({
          host: "127.0.0.1",
          port: server.port,
          ca: certs.ca.certPem,
          cert: certs.cp.certPem,
          key: certs.cp.keyPem,
        }, () => {
          sock.write("GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n");
        });
        let text = "";
        sock.on("data", (d: Buffer) => text += d.toString());
        sock.on("end", () => resolve(text));
        sock.on("error", reject);
      });
      assert(raw.startsWith("HTTP/1.1 400 "), raw);
      assert(raw.includes('"code":"validation_failed"'), raw);
    });
    await t.step("close() resolves with a WebSocket still open, and ends it", async () => {
      const v = await open(`wss://127.0.0.1:${server.port}/any`, certs.ca.certPem, certs.cp);
      await server.close();
      assertEquals((await v.closed).code, 1006);
    });
  } finally {
    await server.close();
  }
});
