/**
 * `runConsole` (cli/console.ts) in a child process (test/cli/console_child.ts) against a
 * local stand-in of the control plane's console endpoints (a ticket route and a WebSocket
 * that echoes what it receives, and closes on request):
 * - under a real pseudo-terminal (`script -qfec … /dev/null`): raw mode while attached (the
 *   terminal's `stty -g` changes, there is no local echo, Ctrl+C is a byte for the guest),
 *   Ctrl+] detaches, and the terminal mode is restored after a detach, a remote close and
 *   a SIGTERM;
 * - with piped stdin: bytes stream both ways unchanged and EOF ends the session;
 * - refusals before the upgrade are reported as `api_error: <code>: <message>`.
 */
// node:assert directly: test/assert.ts does not type-check once `ws` brings @types/node in.
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { REPO_ROOT } from "../../scripts/permissions.ts";
import { CONSOLE_TOKEN_PREFIX } from "../../shared/api/console.ts";
import { runConsole } from "../../cli/console.ts";
import { ApiCallError } from "../../cli/errors.ts";
import { ApiClient } from "../../cli/client.ts";

/** The stand-in: `POST /v1/vms/:name/console` → ticket; `GET …?token=` → echo socket. */
function standIn() {
  const received: string[] = [];
  const tokens = new Set<string>();
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, async (req) => {
    const url = new URL(req.url);
    const m = /^\/v1\/vms\/([^/]+)\/console$/.exec(url.pathname);
    const refuse = (status: number, code: string, message: string) =>
      Response.json({ error: { code, message } }, { status });
    if (!m) return refuse(404, "not_found", "no route");
    const name = decodeURIComponent(m[1]);
    if (req.method === "POST") {
      if (req.headers.get("authorization") !== "Bearer test-token") {
        return refuse(401, "unauthenticated", "bad credential");
      }
      if (name === "ghost") return refuse(404, "vm_not_found", `vm "${name}" not found`);
      const token = CONSOLE_TOKEN_PREFIX + crypto.randomUUID();
      tokens.add(token);
      return Response.json({
        token,
        expires_at: new Date(Date.now() + 30_000).toISOString(),
        websocket_path: `/v1/vms/${m[1]}/console?token=${token}`,
      }, { status: 201 });
    }
    const token = url.searchParams.get("token") ?? "";
    if (!tokens.delete(token)) return refuse(401, "unauthenticated", "unknown console token");
    if (name === "stopped-vm") return refuse(409, "vm_invalid_state", "vm is stopped");
    await req.body?.cancel();
    const { socket, response } = Deno.upgradeWebSocket(req);
    socket.binaryType = "arraybuffer";
    socket.onmessage = (e) => {
      const bytes = typeof e.data === "string"
        ? new TextEncoder().encode(e.data)
        : new Uint8Array(e.data);
      const text = new TextDecoder().decode(bytes);
      received.push(text);
      if (text.includes("CLOSE1000")) return socket.close(1000, "vm stopped");
      if (text.includes("CLOSE1011")) return socket.close(1011, "agent connection lost");
      socket.send(new Uint8Array([...new TextEncoder().encode("echo:"), ...bytes]));
    };
    return response;
  });
  return { server, received, endpoint: `http://127.0.0.1:${server.addr.port}` };
}

/** A console child (optionally under a pty), its output and helpers. */
class Child {
  out = "";
  readonly proc: Deno.ChildProcess;
  readonly #writer: WritableStreamDefaultWriter<Uint8Array>;
  readonly done: Promise<void>;

  constructor(endpoint: string, name: string, pty: boolean) {
    const deno = [Deno.execPath(), "run", "-A", `${REPO_ROOT}/test/cli/console_child.ts`];
    const argv = [...deno, endpoint, name];
    this.proc = new Deno.Command(pty ? "script" : argv[0], {
      args: pty ? ["-qfec", argv.map(shellQuote).join(" "), "/dev/null"] : argv.slice(1),
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
      env: { NO_COLOR: "1" },
    }).spawn();
    this.#writer = this.proc.stdin.getWriter();
    const pump = async (s: ReadableStream<Uint8Array>) => {
      const dec = new TextDecoder();
      for await (const c of s) this.out += dec.decode(c, { stream: true });
    };
    this.done = Promise.all([pump(this.proc.stdout), pump(this.proc.stderr)]).then(() => {});
  }

  /** Writes raw bytes to the child's stdin (through the pty when there is one). */
  async type(data: string | number[]) {
    await this.#writer.write(
      typeof data === "string" ? new TextEncoder().encode(data) : new Uint8Array(data),
    );
  }

  async closeStdin() {
    await this.#writer.close();
  }

  /** Resolves once the output matches `re` (returns the match); fails after `ms`. */
  async until(re: RegExp, ms = 20_000): Promise<RegExpMatchArray> {
    const deadline = Date.now() + ms;
    for (;;) {
      const m = this.out.match(re);
      if (m) return m;
      if (Date.now() > deadline) throw new Error(`no ${re} within ${ms} ms; output:\n${this.out}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  /** The child's own report: pid, pty and `stty -g` before the session. */
  async started(): Promise<{ pid: number; pty: string; before: string }> {
    const m = await this.until(/CHILD pid=(\d+) pty=(\S+) before=(\S+)/);
    return { pid: Number(m[1]), pty: m[2], before: m[3] };
  }

  async exit(): Promise<{ code: number; after: string }> {
    const st = await this.proc.status;
    await this.done;
    const after = this.out.match(/CHILD after=(\S+)/)?.[1] ?? "(none)";
    return { code: st.code, after };
  }
}

function shellQuote(s: string): string {
  return `'${s.replaceAll("'", `'\\''`)}'`;
}

/** `stty -g` of `pty` as seen from outside the child. */
async function sttyOf(pty: string): Promise<string> {
  const out = await new Deno.Command("stty", { args: ["-g", "-F", pty], stdout: "piped" }).output();
  return new TextDecoder().decode(out.stdout).trim();
}

/** Waits until the child's terminal is in a mode other than `before` (raw mode on). */
async function rawModeOn(pty: string, before: string): Promise<string> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    const now = await sttyOf(pty);
    if (now !== before) return now;
    if (Date.now() > deadline) throw new Error("the terminal never left its initial mode");
    await new Promise((r) => setTimeout(r, 20));
  }
}

Deno.test({
  name: "cli console: under a terminal: raw mode, Ctrl+] detaches, the mode is restored",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn(t) {
    const s = standIn();
    try {
      await t.step("raw while attached; keys go out unechoed; Ctrl+] detaches", async () => {
        const c = new Child(s.endpoint, "web", true);
        const { pty, before } = await c.started();
        await c.until(/Connected to web \(escape character is \^\]\)/);
        const raw = await rawModeOn(pty, before);
        assert(raw.split(":")[3] !== before.split(":")[3], "local flags (icanon, echo) changed");
        await c.type("hello\r");
        await c.until(/echo:hello/);
        assert(!/(^|[^:])hello/.test(c.out), "the terminal echoed locally");
        await c.type([0x03]); // Ctrl+C: a byte for the guest, not SIGINT
        await c.until(new RegExp("echo:" + String.fromCharCode(3)));
        await c.type([0x1d]);
        await c.until(/Detached\./);
        const { code, after } = await c.exit();
        assertEquals(code, 0, c.out);
        assertEquals(after, before);
        assert(c.out.includes("CHILD outcome=detached"));
      });
      await t.step("bytes typed before ^] in the same read are still sent", async () => {
        const c = new Child(s.endpoint, "web", true);
        const { pty, before } = await c.started();
        await rawModeOn(pty, before);
        await c.type([
          ...new TextEncoder().encode("last-words"),
          0x1d,
          ...new TextEncoder().encode("dropped"),
        ]);
        const { code } = await c.exit();
        assertEquals(code, 0, c.out);
        assert(s.received.join("").includes("last-words"), JSON.stringify(s.received));
        assert(!s.received.some((r) => r.includes("dropped")));
      });
      await t.step("the VM stopping (close 1000): exit 0, terminal restored", async () => {
        const c = new Child(s.endpoint, "web", true);
        const { pty, before } = await c.started();
        await rawModeOn(pty, before);
        await c.type("CLOSE1000");
        await c.until(/closed: the VM stopped/);
        const { code, after } = await c.exit();
        assertEquals([code, after], [0, before], c.out);
      });
      await t.step("the agent going away (close 1011): exit 1, terminal restored", async () => {
        const c = new Child(s.endpoint, "web", true);
        const { pty, before } = await c.started();
        await rawModeOn(pty, before);
        await c.type("CLOSE1011");
        const { code, after } = await c.exit();
        assertEquals([code, after], [1, before], c.out);
        assert(c.out.includes("closed by the server (1011: agent connection lost)"), c.out);
      });
      await t.step("SIGTERM: the terminal is restored and the process exits", async () => {
        const c = new Child(s.endpoint, "web", true);
        const { pid, pty, before } = await c.started();
        await rawModeOn(pty, before);
        Deno.kill(pid, "SIGTERM");
        const { code, after } = await c.exit();
        assertEquals([code, after], [1, before], c.out);
        assert(c.out.includes("interrupted by SIGTERM"), c.out);
      });
      await t.step("a refusal before the upgrade leaves the terminal alone", async () => {
        const c = new Child(s.endpoint, "stopped-vm", true);
        const { before } = await c.started();
        const { code, after } = await c.exit();
        assertEquals([code, after], [1, before], c.out);
        assert(c.out.includes("api_error: vm_invalid_state: vm is stopped"), c.out);
        assert(!c.out.includes("Connected to"));
      });
    } finally {
      await s.server.shutdown();
    }
  },
});

Deno.test({
  name: "cli console: piped stdin streams both ways; EOF ends the session",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const s = standIn();
    try {
      const c = new Child(s.endpoint, "web", false);
      await c.started();
      await c.until(/Connected to web/);
      await c.type("line one\n");
      await c.type([0x1d, 0x03, 0x0a]); // not special without a terminal
      await c.closeStdin();
      const { code } = await c.exit();
      assertEquals(code, 0, c.out);
      // Reads may coalesce, so compare the stream with the stand-in's prefixes removed.
      const echoed = c.out.replaceAll("echo:", "");
      assert(c.out.startsWith("CHILD") && c.out.includes("echo:line one"), c.out);
      assert(echoed.includes("line one\n\x1d\x03\n"), JSON.stringify(c.out));
      assert(c.out.includes("CHILD outcome=eof"));
    } finally {
      await s.server.shutdown();
    }
  },
});

Deno.test("cli console: ticket errors are API errors; injected terminal streams", async (t) => {
  const s = standIn();
  try {
    await t.step(
      "an unknown VM is api_error: vm_not_found before anything is attached",
      async () => {
        let err: unknown;
        try {
          const client = new ApiClient({
            endpoint: s.endpoint,
            token: "test-token",
            timeoutMs: 5000,
          });
          await runConsole({ client, name: "ghost" });
        } catch (e) {
          err = e;
        }
        assert(err instanceof ApiCallError);
        assertEquals(err.render(), 'api_error: vm_not_found: vm "ghost" not found');
      },
    );
    await t.step("a bad credential is api_error: unauthenticated", async () => {
      let err: unknown;
      try {
        await runConsole({ endpoint: s.endpoint, token: "wrong", name: "web" });
      } catch (e) {
        err = e;
      }
      assert(err instanceof ApiCallError && err.code === "unauthenticated");
    });
    await t.step("injected streams: output written in order, raw mode never touched", async () => {
      const out: string[] = [];
      const err: string[] = [];
      let stdin!: ReadableStreamDefaultController<Uint8Array>;
      const outcome = runConsole({
        endpoint: s.endpoint,
        token: "test-token",
        name: "web",
        terminal: {
          stdin: new ReadableStream({ start: (c) => void (stdin = c) }),
          writeOut: (b) => Promise.resolve(void out.push(new TextDecoder().decode(b))),
          writeErr: (t) => void err.push(t),
          isTerminal: () => false,
          setRaw: () => {
            throw new Error("raw mode must not be touched without a terminal");
          },
          onSignal: () => () => {},
        },
      });
      const until = async (cond: () => boolean) => {
        const deadline = Date.now() + 10_000;
        while (!cond()) {
          assert(Date.now() < deadline, `timed out; out=${JSON.stringify(out)}`);
          await new Promise((r) => setTimeout(r, 10));
        }
      };
      await until(() => err.join("").includes("Connected to web"));
      for (let i = 0; i < 50; i++) stdin.enqueue(new TextEncoder().encode(`${i},`));
      await until(() => out.join("").split("echo:").length > 50);
      stdin.close();
      assertEquals(await outcome, "eof");
      const echoed = out.join("").replaceAll("echo:", "");
      assertEquals(echoed, Array.from({ length: 50 }, (_, i) => `${i},`).join(""));
    });
  } finally {
    await s.server.shutdown();
  }
});
