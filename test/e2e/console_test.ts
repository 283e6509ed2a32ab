/**
 * End-to-end serial console: real `otherix-api` + `otherix-agent` (sandboxed, temporary
 * roots) + QEMU booting the offline test image, reached three ways:
 * - the real CLI, `otherix vm console NAME` under a pseudo-terminal (`script`): types at the
 *   guest's `login:` prompt, logs in as root, runs a command and reads its output back,
 *   detaches with Ctrl+], and the terminal's mode (`stty -g`) is the same afterwards;
 * - the browser page (`/console/NAME`) in headless Chromium: logs in, attaches to the same
 *   serial line, types a command and sees its output;
 * - the WebSocket directly: a used token is refused (401).
 *
 * Prints how long each phase took.
 */
import { join } from "node:path";
import type { Buffer } from "node:buffer";
// node:assert directly: test/assert.ts does not type-check once `ws` brings @types/node in.
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { WebSocket } from "ws";
import { chromium } from "playwright-core";
import {
  type AgentHandle,
  type ApiHandle,
  baseEnv,
  runCli,
  startAgent,
  startApi,
  tempRoot,
  TEST_ADMIN,
  waitFor,
} from "../harness.ts";
import { denoRunArgs } from "../../scripts/permissions.ts";
import { ensureTestImage } from "../test_image.ts";

async function phase<T>(name: string, fn: () => Promise<T>): Promise<T> {
  const t0 = performance.now();
  try {
    return await fn();
  } finally {
    console.log(`phase ${name}: ${((performance.now() - t0) / 1000).toFixed(1)}s`);
  }
}

/** A command under a pseudo-terminal (`script -qfec`), its output and its keyboard. */
class PtySession {
  out = "";
  readonly proc: Deno.ChildProcess;
  readonly #writer: WritableStreamDefaultWriter<Uint8Array>;
  readonly #done: Promise<void>;
  #exited = false;

  constructor(shellCommand: string, env: Record<string, string>) {
    this.proc = new Deno.Command("script", {
      args: ["-qfec", shellCommand, "/dev/null"],
      env,
      clearEnv: true,
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    this.#writer = this.proc.stdin.getWriter();
    const pump = async (s: ReadableStream<Uint8Array>) => {
      const dec = new TextDecoder();
      for await (const c of s) this.out += dec.decode(c, { stream: true });
    };
    this.#done = Promise.all([pump(this.proc.stdout), pump(this.proc.stderr)]).then(() => {});
    void this.#done.then(() => this.#exited = true);
  }

  async type(data: string | number[]) {
    await this.#writer.write(
      typeof data === "string" ? new TextEncoder().encode(data) : new Uint8Array(data),
    );
  }

  /** Resolves with the first match of `re` in the output after offset `from`. */
  async until(re: RegExp, ms = 60_000, from = 0): Promise<RegExpMatchArray> {
    const deadline = Date.now() + ms;
    for (;;) {
      const m = this.out.slice(from).match(re);
      if (m) return m;
      if (this.#exited) throw new Error(`exited before ${re}; output:\n${this.out.slice(-3000)}`);
      if (Date.now() > deadline) {
        throw new Error(`no ${re} within ${ms} ms; output:\n${this.out.slice(-3000)}`);
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  async exit(): Promise<number> {
    const st = await this.proc.status;
    await this.#done;
    return st.code;
  }
}

function shellQuote(s: string): string {
  return `'${s.replaceAll("'", `'\\''`)}'`;
}

/** Serves the test image on loopback. */
function serveImage(image: Uint8Array<ArrayBuffer>) {
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen() {} },
    (req) =>
      new URL(req.url).pathname === "/images/otherix-test.img"
        ? new Response(image)
        : new Response("not found", { status: 404 }),
  );
  return { server, base: `http://127.0.0.1:${server.addr.port}` };
}

/** QEMU outlives the agent: kills any still named by a pidfile under `vmsRunDir`. */
async function killLeftoverQemu(vmsRunDir: string): Promise<void> {
  let entries: Deno.DirEntry[] = [];
  try {
    entries = [...Deno.readDirSync(vmsRunDir)];
  } catch { /* none */ }
  for (const e of entries) {
    const pid = Number(
      await Deno.readTextFile(join(vmsRunDir, e.name, "qemu.pid")).catch(() => ""),
    );
    if (pid > 0) {
      try {
        Deno.kill(pid, "SIGKILL");
      } catch { /* gone */ }
    }
  }
}

Deno.test({
  name: "e2e: serial console through otherix-api and otherix-agent (CLI, browser, token reuse)",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const image = await phase("test image", () => ensureTestImage());
    const root = await tempRoot("otx-e2econ");
    const env = {
      ...baseEnv(),
      HOME: join(root, "home"),
      OTHERIX_CONFIG: join(root, "home/.otherix/config"),
    };
    const ok = async (...args: string[]) => {
      const r = await runCli(args, env);
      assertEquals(r.code, 0, `otherix ${args.join(" ")} failed:\n${r.stderr}\n${r.stdout}`);
      return r.stdout;
    };
    const img = serveImage(await Deno.readFile(image.path));
    const nonce = crypto.randomUUID().slice(0, 8);
    let api: ApiHandle | undefined;
    let agent: AgentHandle | undefined;
    try {
      api = await phase("start otherix-api", () =>
        startApi({
          root: join(root, "cp"),
          config: {
            storage_pools: { allowed_path_prefixes: [join(root, "agent/var/lib/otherix/pools/")] },
          },
        }));
      await ok(
        "config",
        "add",
        "cluster",
        "--name",
        "e2e",
        "--server",
        api.url,
        "--login",
        TEST_ADMIN.email,
        "--password",
        TEST_ADMIN.password,
      );
      const join1 = JSON.parse(
        await ok("node", "join-token", "create", "--node-name", "node-con", "-o", "json"),
      );
      agent = await phase("agent bootstrap", async () => {
        const a = await startAgent({
          root: join(root, "agent"),
          cpUrl: api!.agentUrl,
          caFingerprint: join1.ca_fingerprint,
          nodeName: "node-con",
          token: join1.token,
        });
        await a.proc.waitForOutput((o) => o.includes("agent: bootstrap complete"), 60_000);
        return a;
      });
      await phase(
        "node and pool ready",
        () =>
          waitFor(
            "default pool ready on node-con",
            async () => {
              const pools = JSON.parse(await ok("pool", "list", "-o", "json"));
              return pools.items.find((p: { node: string; status: string }) =>
                p.node === "node-con" && p.status === "ready"
              );
            },
            60_000,
            500,
          ),
      );
      await phase("vm create --wait", () =>
        ok(
          "vm",
          "create",
          "con-vm",
          "--image-url",
          `${img.base}/images/otherix-test.img`,
          "--image-sha256",
          image.sha256,
          "--memory-mb",
          "256",
          "--disk-gib",
          "1",
          "--wait",
        ));

      await phase("CLI: otherix vm console under a terminal", async () => {
        const cli = [
          Deno.execPath(),
          ...denoRunArgs("otherix", { config: "/", state: "/", run: "/" }, [
            "vm",
            "console",
            "con-vm",
          ]),
        ].map(shellQuote).join(" ");
        const pty = new PtySession(
          `echo "STTY-BEFORE=$(stty -g)"; ${cli}; echo "EXIT=$?"; echo "STTY-AFTER=$(stty -g)"`,
          env,
        );
        await pty.until(/Connected to con-vm \(escape character is \^\]\)/, 60_000);
        // The guest may still be booting: press Enter until getty answers.
        await waitFor(
          "a login prompt",
          async () => {
            const mark = pty.out.length;
            await pty.type("\r");
            return await pty.until(/login: $/m, 5_000, mark).then(() => true, () => false);
          },
          240_000,
          0,
        );
        let mark = pty.out.length;
        await pty.type("root\r");
        await pty.until(/\/root # /, 60_000, mark); // (ash then asks for the cursor: ESC[6n)
        mark = pty.out.length;
        await pty.type(`echo otherix-${nonce}-$((6*7))\r`);
        await pty.until(new RegExp(`otherix-${nonce}-42`), 30_000, mark); // typed: $((6*7))
        await pty.type([0x1d]);
        await pty.until(/Detached\./, 10_000);
        assertEquals(await pty.exit(), 0, pty.out);
        const before = pty.out.match(/STTY-BEFORE=(\S+)/)?.[1];
        const after = pty.out.match(/STTY-AFTER=(\S+)/)?.[1];
        assert(pty.out.includes("EXIT=0"), pty.out.slice(-2000));
        assert(before && before === after, `terminal mode changed: ${before} → ${after}`);
      });

      await phase("browser: the console page in headless Chromium", async () => {
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
          const page = await browser.newPage();
          await page.goto(`${api!.url}/console/con-vm`);
          await page.fill("#email", TEST_ADMIN.email);
          await page.fill("#password", TEST_ADMIN.password);
          await page.click("button[type=submit]");
          await page.locator('body[data-state="attached"]').waitFor({ timeout: 30_000 });
          // The CLI left root logged in on the serial line: Enter gives the shell's prompt.
          await page.keyboard.press("Enter");
          await page.locator(".xterm-rows", { hasText: "#" }).waitFor({ timeout: 30_000 });
          await page.keyboard.type(`echo browser-${nonce}-$((7*6))`);
          await page.keyboard.press("Enter");
          await page.locator(".xterm-rows", { hasText: `browser-${nonce}-42` }).waitFor({
            timeout: 30_000,
          });
        } finally {
          await browser.close();
        }
      });

      await phase("a console token works once", async () => {
        const login = await (await fetch(`${api!.url}/v1/auth/login`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify(TEST_ADMIN),
        })).json();
        const res = await fetch(`${api!.url}/v1/vms/con-vm/console`, {
          method: "POST",
          headers: { authorization: `Bearer ${login.access_token}` },
        });
        assertEquals(res.status, 201);
        const ticket = await res.json();
        const url = api!.url.replace(/^http/, "ws") + ticket.websocket_path;
        const attempt = () =>
          new Promise<number>((resolve, reject) => {
            const ws = new WebSocket(url);
            ws.once("open", () => {
              ws.close();
              resolve(101);
            });
            ws.once("unexpected-response", (_req, r) => {
              r.resume();
              ws.terminate();
              resolve(r.statusCode ?? 0);
            });
            ws.once("error", (e: Buffer | Error) => reject(e));
          });
        assertEquals(await attempt(), 101);
        assertEquals(await attempt(), 401);
      });
    } finally {
      if (api && agent) await runCli(["vm", "delete", "con-vm", "--force", "--wait"], env);
      await agent?.proc.stop();
      await api?.proc.stop();
      await img.server.shutdown();
      if (agent) await killLeftoverQemu(join(agent.runDir, "vms"));
      await Deno.remove(root, { recursive: true }).catch(() => {});
    }
  },
});
