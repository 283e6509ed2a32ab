/**
 * End-to-end: real `otherix-api` (embedded store) + real `otherix-agent` (under its sandbox,
 * temporary root) + the real `otherix` CLI + real QEMU booting the offline test image served
 * from a loopback HTTP server. Every step goes through the CLI (issue #2).
 *
 * Prints how long each phase took.
 */
import { join } from "node:path";
import { assert, assertEquals, assertMatch, assertStringIncludes } from "../assert.ts";
import {
  type AgentHandle,
  type ApiHandle,
  pgrep,
  pidAlive,
  runCli,
  startAgent,
  startApi,
  tempRoot,
  TEST_ADMIN,
  waitFor,
} from "../harness.ts";
import { permissionFlags } from "../../scripts/permissions.ts";
import { ensureTestImage } from "../test_image.ts";

const phases: [string, number][] = [];
async function phase<T>(name: string, fn: () => Promise<T>): Promise<T> {
  const t0 = performance.now();
  try {
    return await fn();
  } finally {
    const secs = (performance.now() - t0) / 1000;
    phases.push([name, secs]);
    console.log(`phase ${name}: ${secs.toFixed(1)}s`);
  }
}

/** A loopback HTTP server that serves the test image under two paths and counts requests. */
function serveImage(image: Uint8Array<ArrayBuffer>) {
  const hits = new Map<string, number>();
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, (req) => {
    const path = new URL(req.url).pathname;
    hits.set(path, (hits.get(path) ?? 0) + 1);
    if (path === "/images/otherix-test.img" || path === "/images/otherix-copy.img") {
      return new Response(image, { headers: { "content-type": "application/octet-stream" } });
    }
    return new Response("not found", { status: 404 });
  });
  return { server, hits, base: `http://127.0.0.1:${server.addr.port}` };
}

Deno.test({
  name: "e2e: a VM boots through otherix-api, otherix-agent and otherix",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const image = await phase("test image", () => ensureTestImage());
    const imageBytes = await Deno.readFile(image.path);
    const root = await tempRoot("otx-e2e");
    const env = {
      HOME: join(root, "home"),
      OTHERIX_CONFIG: join(root, "home/.otherix/config"),
    };
    const cli = async (...args: string[]) => await runCli(args, env);
    const ok = async (...args: string[]) => {
      const r = await cli(...args);
      assertEquals(r.code, 0, `otherix ${args.join(" ")} failed:\n${r.stderr}\n${r.stdout}`);
      return r.stdout;
    };
    const img = serveImage(imageBytes);
    let api: ApiHandle | undefined;
    let agent: AgentHandle | undefined;
    try {
      api = await phase("start otherix-api", () =>
        startApi({
          root: join(root, "cp"),
          // The agent's pools live under its own temporary root.
          config: {
            storage_pools: { allowed_path_prefixes: [join(root, "agent/var/lib/otherix/pools/")] },
          },
        }));
      const cpUrl = api.url;

      await phase("config add cluster", async () => {
        const out = await ok(
          "config",
          "add",
          "cluster",
          "--name",
          "e2e",
          "--server",
          cpUrl,
          "--login",
          TEST_ADMIN.email,
          "--password",
          TEST_ADMIN.password,
        );
        assertStringIncludes(out, "cluster added: name=e2e");
        const st = await Deno.stat(env.OTHERIX_CONFIG);
        assertEquals(st.mode! & 0o777, 0o600);
        assertStringIncludes(await Deno.readTextFile(env.OTHERIX_CONFIG), "otx_");
      });

      const join1 = await phase("join-token create", async () =>
        JSON.parse(
          await ok(
            "node",
            "join-token",
            "create",
            "--node-name",
            "node-e2e",
            "--ttl",
            "10m",
            "-o",
            "json",
          ),
        ));
      assertMatch(join1.ca_fingerprint, /^sha256:[0-9a-f]{64}$/);

      await phase("wrong CA pin fails bootstrap", async () => {
        const badRoot = join(root, "agent-bad");
        const bad = await startAgent({
          root: badRoot,
          cpUrl: api!.agentUrl,
          caFingerprint: "sha256:" + "0".repeat(64),
          nodeName: "node-e2e",
          token: join1.token,
        });
        const st = await bad.proc.status();
        assert(!st.success, "agent with a wrong CA pin must exit non-zero");
        assertStringIncludes(bad.proc.output, "CA fingerprint mismatch");
        for (const f of ["agent.crt", "agent.key", "ca.crt"]) {
          const exists = await Deno.stat(join(bad.stateDir, "certs", f)).then(
            () => true,
            () => false,
          );
          assert(!exists, `${f} must not be written after a failed bootstrap`);
        }
      });

      agent = await phase("agent bootstrap", async () => {
        const a = await startAgent({
          root: join(root, "agent"),
          cpUrl: api!.agentUrl,
          caFingerprint: join1.ca_fingerprint,
          nodeName: "node-e2e",
          token: join1.token,
        });
        await a.proc.waitForOutput((o) => o.includes("agent: bootstrap complete"), 60_000);
        return a;
      });

      await phase("agent sandbox flags", async () => {
        const cmdline = (await Deno.readTextFile(`/proc/${agent!.proc.pid}/cmdline`)).split("\0");
        for (const flag of permissionFlags("otherix-agent", agent!.roots)) {
          assert(
            cmdline.includes(flag),
            `agent must run with ${flag}; cmdline: ${cmdline.join(" ")}`,
          );
        }
        assert(
          !cmdline.some((a) => a === "-A" || a === "--allow-all"),
          "agent must not run with -A",
        );
      });

      await phase("node ready", async () => {
        await waitFor(
          "node-e2e ready",
          async () => {
            const nodes = JSON.parse(await ok("node", "list", "-o", "json"));
            const items = Array.isArray(nodes) ? nodes : nodes.items;
            return items.find((n: { name: string; status: string }) =>
              n.name === "node-e2e" && n.status === "ready"
            );
          },
          60_000,
          500,
        );
        const table = await ok("node", "list");
        assertMatch(table, /node-e2e\s+amd64\s+ready/);
        await waitFor(
          "default pool ready on node-e2e",
          async () => {
            const pools = JSON.parse(await ok("pool", "list", "-o", "json"));
            return pools.items.find((p: { name: string; node: string; status: string }) =>
              p.name === "default" && p.node === "node-e2e" && p.status === "ready"
            );
          },
          30_000,
          500,
        );
      });

      const marker = `hello-from-user-data-${crypto.randomUUID().slice(0, 8)}`;
      const userData = join(root, "user-data.yaml");
      await Deno.writeTextFile(userData, `#cloud-config\n# otherix-marker: ${marker}\n`);
      const imageUrl = `${img.base}/images/otherix-test.img`;

      await phase("bad input is refused and changes nothing", async () => {
        const cases: string[][] = [
          ["vm", "create", "Bad_Name", "--image-url", imageUrl],
          ["vm", "create", "ok-name", "--image-url", "ftp://example.com/x.img"],
          ["vm", "create", "ok-name", "--image-url", imageUrl, "--vcpus", "0"],
          ["vm", "create", "ok-name", "--image-url", imageUrl, "--memory-mb", "99999999"],
        ];
        for (const args of cases) {
          const r = await cli(...args);
          assertEquals(r.code, 1, `expected failure for ${args.join(" ")}`);
          assertStringIncludes(r.stderr, "api_error: validation_failed");
        }
        const missing = await cli("vm", "get", "no-such-vm");
        assertEquals(missing.code, 1);
        assertStringIncludes(missing.stderr, "api_error: vm_not_found");
        const list = JSON.parse(await ok("vm", "list", "-o", "json"));
        assertEquals((Array.isArray(list) ? list : list.items).length, 0);
        assertEquals(img.hits.size, 0, "nothing may reach the agent for refused input");
      });

      await phase("vm create --wait (download + boot)", async () => {
        const out = await ok(
          "vm",
          "create",
          "demo-vm",
          "--image-url",
          imageUrl,
          "--image-sha256",
          image.sha256,
          "--arch",
          "amd64",
          "--vcpus",
          "1",
          "--memory-mb",
          "256",
          "--disk-gib",
          "1",
          "--user-data",
          `@${userData}`,
          "--wait",
        );
        assertMatch(out, /created task=\S+ status=pending/);
        assertMatch(out, /vm running task=/);
      });

      await phase("vm list shows running", async () => {
        const table = await ok("vm", "list");
        assertMatch(table, /demo-vm\s+running/);
        const vm = JSON.parse(await ok("vm", "get", "demo-vm", "-o", "json"));
        assertEquals(vm.status, "running");
        assertEquals(vm.node, "node-e2e");
        assertEquals(vm.pool, "default");
        assertEquals(vm.image, "otherix-test.img");
      });

      await phase("serial console shows cloud-init data", async () => {
        const log = await waitFor(
          "marker on the serial console",
          async () => {
            const r = await cli("vm", "logs", "demo-vm");
            return r.code === 0 && r.stdout.includes(`marker=${marker}`) &&
                r.stdout.includes("login:")
              ? r.stdout
              : undefined;
          },
          180_000,
          2000,
        );
        assertStringIncludes(log, "otherix-test-image: hostname=demo-vm");
        assertStringIncludes(log, `otherix-test-image: marker=${marker}`);
      });

      await phase("second VM hits the image cache", async () => {
        await ok(
          "vm",
          "create",
          "second-vm",
          "--image-url",
          imageUrl,
          "--memory-mb",
          "128",
          "--disk-gib",
          "1",
          "--wait",
        );
        assertEquals(img.hits.get("/images/otherix-test.img"), 1, "the image was downloaded twice");
      });

      await phase("bad checksum fails with checksum_mismatch", async () => {
        const r = await cli(
          "vm",
          "create",
          "bad-sum",
          "--image-url",
          `${img.base}/images/otherix-copy.img`,
          "--image-sha256",
          "0".repeat(64),
          "--wait",
        );
        assertEquals(r.code, 1);
        assertStringIncludes(r.stderr, "api_error: checksum_mismatch");
        const vm = JSON.parse(await ok("vm", "get", "bad-sum", "-o", "json"));
        assertEquals(vm.status, "failed");
        assertEquals(vm.error?.code, "checksum_mismatch");
        const cached = join(agent!.stateDir, "pools/default/images/otherix-copy.img");
        assert(
          !(await Deno.stat(cached).then(() => true, () => false)),
          "bad image must not be cached",
        );
      });

      await phase("vm delete --wait leaves nothing", async () => {
        const qemuPids = pgrep("qemu-system", "guest=", agent!.runDir);
        assert(qemuPids.length >= 2, `expected 2 QEMU processes, found ${qemuPids.length}`);
        for (const name of ["demo-vm", "second-vm", "bad-sum"]) {
          const out = await ok("vm", "delete", name, "--force", "--wait");
          assertMatch(out, /vm deleted task=/);
        }
        const list = JSON.parse(await ok("vm", "list", "-o", "json"));
        assertEquals((Array.isArray(list) ? list : list.items).length, 0);
        for (const pid of qemuPids) {
          // QEMU is not the agent's child any more (it outlives the agent): it is reaped by
          // PID 1, so allow the exit a moment to become visible.
          await waitFor(`QEMU pid ${pid} gone`, () => Promise.resolve(!pidAlive(pid)), 3000);
        }
        assertEquals(pgrep("qemu-system", "guest=", agent!.runDir).length, 0, "no QEMU may remain");
        const vmsDir = join(agent!.stateDir, "vms");
        const left = [...Deno.readDirSync(vmsDir)].map((e) => e.name);
        assertEquals(left, [], `VM runtime files left: ${left.join(", ")}`);
        const sockets = join(agent!.runDir, "vms");
        const leftSockets = await Deno.stat(sockets).then(
          () => [...Deno.readDirSync(sockets)],
          () => [],
        );
        assertEquals(leftSockets.length, 0);
      });
    } finally {
      await agent?.proc.stop();
      await api?.proc.stop();
      await img.server.shutdown();
      console.log("\nphase timings (s):");
      for (const [n, s] of phases) console.log(`  ${n.padEnd(45)} ${s.toFixed(1)}`);
      if (!Deno.env.get("OTHERIX_KEEP_TEST_ROOT")) await Deno.remove(root, { recursive: true });
    }
  },
});
