/**
 * The control plane's unit restricts system calls (`SystemCallFilter=` in
 * deploy/systemd/otherix-api.service). systemd is not PID 1 here, so the filter cannot be
 * applied; instead a real `otherix-api` runs under `strace -f` through start, login, lists, a
 * join token, the agent-facing CA endpoint, an event stream and a graceful stop, and every
 * system call it made must be one the filter allows (groups expanded with
 * `systemd-analyze syscall-filter`).
 *
 * @module
 */
import { join } from "node:path";
import { assertEquals } from "../assert.ts";
import { denoRunArgs, REPO_ROOT, type SandboxRoots } from "../../scripts/permissions.ts";
import { freePort, Proc, tempRoot, TEST_ADMIN, waitFor } from "../harness.ts";
import { parseUnit, sh } from "./helpers.ts";

/** The system calls `filter` (`@group name …`) allows, groups expanded. */
async function allowed(filter: string[]): Promise<Set<string>> {
  const listing = (await sh(["systemd-analyze", "syscall-filter"])).stdout;
  const groups = new Map<string, string[]>();
  let cur: string[] | null = null;
  for (const line of listing.split("\n")) {
    if (/^@[a-z-]+$/.test(line)) groups.set(line, cur = []);
    else if (cur && line.trim() && !line.trim().startsWith("#")) cur.push(line.trim());
  }
  const out = new Set<string>();
  const add = (name: string, seen: Set<string>) => {
    if (!name.startsWith("@")) return void out.add(name);
    if (seen.has(name)) return;
    seen.add(name);
    for (const m of groups.get(name) ?? []) add(m, seen);
  };
  for (const f of filter) add(f, new Set());
  return out;
}

Deno.test({
  name: "otherix-api unit: every system call the control plane makes passes its filter",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const unit = parseUnit(
      await Deno.readTextFile(join(REPO_ROOT, "deploy/systemd/otherix-api.service")),
    );
    const filter = unit.get("Service")!.get("SystemCallFilter")!.join(" ").split(/\s+/);
    const ok = await allowed(filter);
    const root = await tempRoot("otx-sc");
    const data = join(root, "data");
    const port = freePort();
    const agentPort = freePort();
    const cfg = join(root, "api.yaml");
    await Deno.writeTextFile(
      cfg,
      `server:\n  listen: "127.0.0.1:${port}"\n  agent_listen: "127.0.0.1:${agentPort}"\n` +
        `store:\n  data_dir: ${data}\n`,
    );
    const roots: SandboxRoots = { config: cfg, state: data, run: data };
    const trace = join(root, "trace");
    const proc = new Proc(
      "strace",
      new Deno.Command("strace", {
        args: [
          "-f",
          "-qq",
          "-o",
          trace,
          Deno.execPath(),
          ...denoRunArgs("otherix-api", roots, ["--config", cfg]),
        ],
        cwd: REPO_ROOT,
        env: {
          OTHERIX_BOOTSTRAP_ADMIN_EMAIL: TEST_ADMIN.email,
          OTHERIX_BOOTSTRAP_ADMIN_PASSWORD: TEST_ADMIN.password,
        },
        stdin: "null",
        stdout: "piped",
        stderr: "piped",
      }),
    );
    try {
      const url = `http://127.0.0.1:${port}`;
      await waitFor("readyz", async () => {
        const r = await fetch(`${url}/readyz`);
        await r.body?.cancel();
        return r.ok;
      }, 90_000);
      const login = await fetch(`${url}/v1/auth/login`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(TEST_ADMIN),
      });
      const token = (await login.json()).access_token;
      const auth = { authorization: `Bearer ${token}` };
      for (const path of ["/v1/vms", "/v1/nodes", "/v1/pools"]) {
        const r = await fetch(url + path, { headers: auth });
        assertEquals(r.status, 200, path);
        await r.body?.cancel();
      }
      const jt = await fetch(`${url}/v1/nodes/join-tokens`, {
        method: "POST",
        headers: { ...auth, "content-type": "application/json" },
        body: JSON.stringify({ node_name: "n1" }),
      });
      assertEquals(jt.status, 201);
      await jt.body?.cancel();
      const ca = await sh([
        "curl",
        "-sk",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        `https://127.0.0.1:${agentPort}/v1/ca`,
      ]);
      assertEquals(ca.stdout, "200");
      const ev = await fetch(`${url}/v1/events?kind=vm`, { headers: auth });
      const reader = ev.body!.getReader();
      await reader.read();
      await reader.cancel();
      // A graceful stop: the traced deno is strace's child.
      const deno = (await sh(["pgrep", "-P", String(proc.pid)])).stdout.trim();
      Deno.kill(Number(deno), "SIGTERM");
      await proc.status();
      const used = new Set<string>();
      for (const line of (await Deno.readTextFile(trace)).split("\n")) {
        const m = /^\d+\s+([a-z_0-9]+)\(/.exec(line);
        if (m) used.add(m[1]);
      }
      const outside = [...used].filter((s) => !ok.has(s)).sort();
      assertEquals(outside, [], `system calls outside SystemCallFilter=${filter.join(" ")}`);
      assertEquals(used.has("accept4") && used.has("openat"), true, "the trace saw the work");
    } finally {
      await proc.stop().catch(() => {});
      await Deno.remove(root, { recursive: true }).catch(() => {});
    }
  },
});
