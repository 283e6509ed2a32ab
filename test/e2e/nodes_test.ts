/**
 * Node lifecycle end to end: two real agents (separate processes, each with its own root and
 * certificate) against a real control plane with compressed timings walk `ready →
 * unreachable → gone → ready`; cordon keeps a node out of placement; `node delete` is refused
 * while VMs live there and `--force` marks them lost; a deleted node's agent is refused.
 * Driven through the real CLI where the issue names a command.
 */
import { join } from "node:path";
import { assertEquals, assertMatch, assertStringIncludes } from "../assert.ts";
import {
  type AgentHandle,
  pgrep,
  runCli,
  startAgent,
  startApi,
  tempRoot,
  TEST_ADMIN,
  waitFor,
} from "../harness.ts";
import { ensureTestImage } from "../test_image.ts";

Deno.test({
  name: "e2e: nodes walk ready → unreachable → gone → ready; cordon; delete (--force → lost)",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn(t) {
    const root = await tempRoot("otx-n"); // short: QEMU socket paths must fit in 107 bytes
    const image = await Deno.readFile((await ensureTestImage()).path);
    const img = Deno.serve(
      { hostname: "127.0.0.1", port: 0, onListen() {} },
      () => new Response(image),
    );
    const api = await startApi({
      root: join(root, "cp"),
      config: {
        nodes: { heartbeat_interval_seconds: 1, stale_threshold_seconds: 3, gone_grace_seconds: 3 },
        storage_pools: { allowed_path_prefixes: [join(root, "a") + "/"] },
      },
    });
    const login = await (await fetch(`${api.url}/v1/auth/login`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ email: TEST_ADMIN.email, password: TEST_ADMIN.password }),
    })).json();
    const env = {
      HOME: join(root, "home"),
      OTHERIX_SERVER: api.url,
      OTHERIX_API_TOKEN: login.access_token,
    };
    const cli = (...args: string[]) => runCli(args, env);
    const ok = async (...args: string[]) => {
      const r = await cli(...args);
      assertEquals(r.code, 0, `otherix ${args.join(" ")}: ${r.stderr}`);
      return r.stdout;
    };
    const node = async (name: string) => JSON.parse(await ok("node", "get", name, "-o", "json"));
    const agents = new Map<string, AgentHandle>();
    const readings = (name: string) => join(root, "a", name, "run/otherix/readings.json");
    const tokens = new Map<string, { token: string; ca_fingerprint: string }>();
    const start = async (name: string) => {
      if (!tokens.has(name)) {
        tokens.set(
          name,
          JSON.parse(await ok("node", "join-token", "create", "--node-name", name, "-o", "json")),
        );
      }
      const a = await startAgent({
        root: join(root, "a", name),
        cpUrl: api.agentUrl,
        caFingerprint: tokens.get(name)!.ca_fingerprint,
        nodeName: name,
        token: agents.has(name) ? undefined : tokens.get(name)!.token,
        port: agents.get(name)?.port,
        // The agent's readings test hook (agent/sysinfo.ts): absent file, real readings.
        env: { OTHERIX_TEST_READINGS: readings(name) },
      });
      agents.set(name, a);
      await a.proc.waitForOutput((o) => o.includes("heartbeat: ok"), 60_000);
    };
    try {
      await start("node-a");
      await start("node-b");
      await waitFor(
        "both ready",
        async () => {
          const list = JSON.parse(await ok("node", "list", "-o", "json")).items;
          return list.length === 2 && list.every((n: { status: string }) => n.status === "ready");
        },
        30_000,
        200,
      );

      await t.step("node list: spec columns, filters, ids", async () => {
        const table = await ok("node", "list");
        assertMatch(table, /^NAME\s+ARCHITECTURE\s+STATUS\s+CORDONED\s+LAST_HEARTBEAT\s+AGE$/m);
        assertMatch(table, /^node-a\s+amd64\s+ready\s+no\s+/m);
        const a = await node("node-a");
        assertEquals([a.migration_host, a.migration_port_range], ["127.0.0.1", "49152-49251"]);
        const ids = await ok("node", "list", "--show-ids");
        assertMatch(ids, /^ID\s+NAME/m);
        assertEquals(
          JSON.parse(await ok("node", "list", "--status", "gone", "-o", "json")).items,
          [],
        );
        const arm = JSON.parse(await ok("node", "list", "--architecture", "arm64", "-o", "json"));
        assertEquals(arm.items, []);
        const bad = await cli("node", "list", "--status", "sleeping");
        assertEquals(bad.code, 1);
        assertStringIncludes(
          bad.stderr,
          "--status: must be one of pending, ready, unreachable, gone",
        );
      });

      await t.step(
        "an agent that stops: unreachable, then gone; back to ready when it returns",
        async () => {
          await agents.get("node-b")!.proc.stop();
          await waitFor(
            "node-b unreachable",
            async () => (await node("node-b")).status === "unreachable",
            30_000,
            200,
          );
          await waitFor(
            "node-b gone",
            async () => (await node("node-b")).status === "gone",
            30_000,
            200,
          );
          assertStringIncludes(api.proc.output, '"msg":"node unreachable","node":"node-b"');
          assertStringIncludes(
            api.proc.output,
            '"msg":"node gone: unreachable past the gone-grace window","node":"node-b"',
          );
          assertEquals((await node("node-a")).status, "ready", "the other node is unaffected");
          await start("node-b");
          await waitFor(
            "node-b ready",
            async () => (await node("node-b")).status === "ready",
            30_000,
            200,
          );
          await waitFor(
            "logged",
            () =>
              Promise.resolve(
                api.proc.output.includes('"msg":"node ready","node":"node-b","from":"gone"'),
              ),
            10_000,
            100,
          );
          const once = api.proc.output.split('"msg":"node gone').length - 1;
          assertEquals(once, 1, "each transition is logged once");
        },
      );

      await t.step("cordon keeps a node out of placement; uncordon brings it back", async () => {
        assertStringIncludes(await ok("node", "cordon", "node-a"), "node node-a cordoned");
        assertEquals((await node("node-a")).cordoned, true);
        const refused = await cli(
          "vm",
          "create",
          "pinned",
          "--image-url",
          `http://127.0.0.1:${img.addr.port}/i.img`,
          "--node",
          "node-a",
          "--memory-mb",
          "128",
          "--disk-gib",
          "1",
        );
        assertEquals(refused.code, 1);
        assertStringIncludes(refused.stderr, "api_error: no_eligible_nodes");
        assertStringIncludes(refused.stderr, "cordoned");
        const viewer = await cli("node", "cordon", "nope");
        assertStringIncludes(viewer.stderr, "api_error: node_not_found");
        assertStringIncludes(await ok("node", "uncordon", "node-a"), "node node-a uncordoned");
        await ok(
          "vm",
          "create",
          "pinned",
          "--image-url",
          `http://127.0.0.1:${img.addr.port}/i.img`,
          "--node",
          "node-a",
          "--memory-mb",
          "128",
          "--disk-gib",
          "1",
          "--wait",
        );
      });

      await t.step("vm create --dry-run: the decision table, nothing created", async () => {
        const url = `http://127.0.0.1:${img.addr.port}/i.img`;
        await ok("node", "cordon", "node-b");
        const table = await ok("vm", "create", "plan", "--image-url", url, "--dry-run");
        assertMatch(table, /^placement: pool default, resource_aware: would place on node-a$/m);
        assertMatch(table, /^NODE\s+VERDICT\s+SCORE\s+CPU\s+MEMORY_MIB\s+DISK\s+VMS/m);
        assertMatch(table, /^node-a\s+winner\s+\d+\.\d\s+1\/\d+\s+128\/\d+\s+/m);
        assertMatch(table, /^node-b\s+rejected\s+-\s+.*node is cordoned$/m);
        const json = JSON.parse(
          await ok("vm", "create", "plan", "--image-url", url, "--dry-run", "-o", "json"),
        );
        assertEquals(json.node, "node-a");
        const none = await cli(
          "vm",
          "create",
          "plan",
          "--image-url",
          url,
          "--node",
          "node-b",
          "--dry-run",
        );
        assertEquals(none.code, 1);
        assertMatch(none.stdout, /no eligible node/);
        assertStringIncludes(none.stderr, "no_eligible_nodes");
        assertEquals((await cli("vm", "get", "plan")).code, 1, "nothing was created");
        await ok("node", "uncordon", "node-b");
      });

      await t.step(
        "pressure from a real agent's readings: set after 3 low heartbeats, cleared by one",
        async () => {
          const pressured = async () => {
            const p = (await node("node-b")).pressure;
            return [p.memory.under_pressure, p.system_disk.under_pressure];
          };
          assertEquals(await pressured(), [false, false]);
          await Deno.writeTextFile(
            readings("node-b"),
            JSON.stringify({ memory_available_mib: 1, system_disk_available_bytes: 1 }),
          );
          await waitFor(
            "node-b under pressure",
            async () => (await pressured()).join() === "true,true",
            30_000,
            200,
          );
          assertMatch(await ok("node", "list"), /^node-b\s+amd64\s+under_pressure\s+no\s+/m);
          assertStringIncludes(
            api.proc.output,
            '"msg":"node under memory pressure","node":"node-b","condition":"memory"',
          );
          assertStringIncludes(
            api.proc.output,
            '"msg":"node under system disk pressure","node":"node-b","condition":"system_disk"',
          );
          const refused = await cli(
            "vm",
            "create",
            "squeezed",
            "--image-url",
            `http://127.0.0.1:${img.addr.port}/i.img`,
            "--node",
            "node-b",
          );
          assertEquals(refused.code, 1);
          assertStringIncludes(refused.stderr, "api_error: no_eligible_nodes");
          assertStringIncludes(refused.stderr, "node is under memory pressure");
          await Deno.remove(readings("node-b"));
          await waitFor(
            "node-b pressure cleared",
            async () => (await pressured()).join() === "false,false",
            30_000,
            200,
          );
          assertStringIncludes(
            api.proc.output,
            '"msg":"node memory pressure cleared","node":"node-b"',
          );
          assertMatch(await ok("node", "list"), /^node-b\s+amd64\s+ready\s+no\s+/m);
        },
      );

      await t.step(
        "node delete: refused while VMs live there; --force marks them lost",
        async () => {
          const unconfirmed = await cli("node", "delete", "node-a");
          assertEquals(unconfirmed.code, 1);
          assertStringIncludes(unconfirmed.stderr, "without confirmation");
          const plain = await fetch(`${api.url}/v1/nodes/node-a`, {
            method: "DELETE",
            headers: { authorization: `Bearer ${login.access_token}` },
          });
          const body = await plain.json();
          assertEquals([plain.status, body.error.code, body.error.details.vms], [409, "conflict", [
            "pinned",
          ]]);
          assertStringIncludes(
            await ok("node", "delete", "node-a", "--force"),
            "node node-a deleted",
          );
          const vm = JSON.parse(await ok("vm", "get", "pinned", "-o", "json"));
          assertEquals(vm.status, "lost");
          const names = JSON.parse(await ok("node", "list", "-o", "json")).items.map((
            n: { name: string },
          ) => n.name);
          assertEquals(names, ["node-b"]);
          // The deleted node's agent is refused from now on.
          await agents.get("node-a")!.proc.waitForOutput(
            (o) => o.includes("node_not_found"),
            15_000,
          );
          assertStringIncludes(await ok("vm", "delete", "pinned", "--force"), "status=succeeded");
          assertEquals((await cli("vm", "get", "pinned")).code, 1);
        },
      );
    } finally {
      for (const a of agents.values()) await a.proc.stop().catch(() => {});
      await api.proc.stop();
      for (const pid of pgrep("qemu-system", root)) {
        try {
          Deno.kill(pid, "SIGKILL");
        } catch { /* gone */ }
      }
      await img.shutdown();
      await Deno.remove(root, { recursive: true }).catch(() => {});
    }
  },
});
