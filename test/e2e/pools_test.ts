/**
 * Storage pools end to end on a one-node cluster of real processes (test/e2e/cluster.ts:
 * `otherix-api` and `otherix-agent` under their sandboxes, mTLS between them, the real CLI):
 * the periodic scan of the auto-provisioned pool, `pool create --wait` making a real
 * directory, refusals by the control plane and by the agent (a symlink escape), `pool scan`,
 * `pool get` in both shapes, the cluster default pool and `vm create` without `--pool`, and
 * `pool delete` refused while a VM record holds a disk there, then done, after which the agent
 * no longer provides the pool. No QEMU boots: the only VM never gets its image.
 */
import { join } from "node:path";
import { assert, assertEquals, assertMatch, assertStringIncludes } from "../assert.ts";
import { runCli, waitFor } from "../harness.ts";
import { type Json, startCluster } from "./cluster.ts";

Deno.test({
  name: "e2e pools: create, scan, get, default pool, delete rules, against real processes",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async (t) => {
    const c = await startCluster({ prefix: "otx-pools" });
    try {
      const pools = join(c.agent.stateDir, "pools");
      const env = {
        HOME: join(c.root, "home"),
        OTHERIX_SERVER: c.api.url,
        OTHERIX_API_TOKEN: c.token,
      };
      const cli = (...args: string[]) => runCli(args, env);
      const instance = async (name: string): Promise<Json> =>
        (await c.call("GET", `/v1/pools/${name}`)).json.instances?.[0];

      await t.step("the default pool is listed and scanned periodically over mTLS", async () => {
        const def = await waitFor(
          "the default pool's first periodic scan",
          async () => {
            const p = await instance("default");
            return p?.last_scan ? p : null;
          },
          60_000,
          100,
        );
        assert(def.last_scan.total_bytes > 0 && def.last_scan.available_bytes > 0);
        assertEquals(def.pressure.disk.available_percent !== null, true);
        const list = await cli("pool", "list");
        assertEquals(list.code, 0, list.stderr);
        const [header, row] = list.stdout.split("\n");
        assertMatch(header, /^NAME\s+NODE\s+TYPE\s+PATH\s+AVAILABLE\s+STATUS\s+DEFAULT\s+AGE$/);
        assertMatch(row, new RegExp(`^default\\s+node-1\\s+local_dir\\s+${pools}/default\\s+`));
        assertMatch(row, /\s(ready|under_pressure)\s+yes\s+\d+[smh]$/);
      });

      let fastId = "";
      await t.step(
        "pool create --wait: the agent makes the directory and reports ready",
        async () => {
          const r = await cli(
            "pool",
            "create",
            "fast",
            "--node",
            "node-1",
            "--path",
            `${pools}/fast`,
            "--wait",
          );
          assertEquals(r.code, 0, r.stderr);
          assertEquals(
            r.stdout,
            `pool fast created on node node-1\ntype: local_dir\npath: ${pools}/fast\n` +
              "pool fast ready on node node-1\n",
          );
          assert(Deno.statSync(`${pools}/fast/images`).isDirectory);
          fastId = (await instance("fast")).id;
        },
      );

      await t.step(
        "refusals: the same instance, a node UUID, a path outside the prefixes",
        async () => {
          const nodeId = (await c.call("GET", "/v1/nodes/node-1")).json.id;
          for (
            const [args, line] of [
              [["--node", "node-1", "--path", `${pools}/fast2`], "api_error: conflict: "],
              [["--node", nodeId, "--path", `${pools}/x`], "api_error: validation_failed: "],
              [
                ["--node", "node-1", "--path", `${c.root}/elsewhere`],
                "api_error: path_not_allowed: ",
              ],
            ] as [string[], string][]
          ) {
            const r = await cli("pool", "create", "fast", ...args);
            assertEquals(r.code, 1, r.stdout);
            assert(r.stderr.startsWith(line), r.stderr);
          }
          const names = (await c.call("GET", "/v1/pools")).json.items.map((p: Json) => p.name);
          assertEquals(names, ["default", "fast"]);
        },
      );

      await t.step("the agent refuses a symlink escape under an allowed prefix", async () => {
        const outside = join(c.root, "outside");
        await Deno.mkdir(outside);
        await Deno.symlink(outside, `${pools}/escape`);
        const r = await cli(
          "pool",
          "create",
          "esc",
          "--node",
          "node-1",
          "--path",
          `${pools}/escape/p`,
          "--wait",
        );
        assertEquals(r.code, 1, r.stdout);
        assertStringIncludes(
          r.stderr,
          "api_error: path_not_allowed: pool esc failed on node node-1: ",
        );
        assertStringIncludes(r.stderr, "resolves outside the agent's pools directory");
        assertEquals([...Deno.readDirSync(outside)], [], "nothing created outside");
        assertEquals((await c.call("DELETE", "/v1/pools/esc")).status, 200);
      });

      await t.step("pool scan --wait and pool get in both shapes", async () => {
        const scan = await cli("pool", "scan", "fast", "--wait");
        assertEquals(scan.code, 0, scan.stderr);
        const [queued, found] = scan.stdout.split("\n");
        assertMatch(queued, /^pool fast scan on node node-1 task=[0-9a-f-]{36} status=\w+$/);
        assertMatch(
          found,
          /^pool fast on node node-1 scanned: \d+\.\d[KMGT]iB available of \d+\.\d[KMGT]iB \(vm disks: 0, 0B; images: 0, 0B\)$/,
        );
        const byId = await cli("pool", "get", fastId);
        assertEquals(byId.code, 0, byId.stderr);
        for (
          const line of [
            `id: ${fastId}`,
            "name: fast",
            "node: node-1",
            "status: ready",
            "last_scan:",
            "images: []",
          ]
        ) {
          assertStringIncludes(byId.stdout, `${line}\n`);
        }
        const byName = await cli("pool", "get", "fast");
        assertEquals(byName.code, 0, byName.stderr);
        assert(
          byName.stdout.startsWith(
            "name: fast\ntype: local_dir\nis_cluster_default: false\ninstances:\n" +
              `  - node: node-1\n    id: ${fastId}\n    path: ${pools}/fast\n`,
          ),
          byName.stdout,
        );
      });

      await t.step(
        "the cluster default pool: get, set (any case), unset, vm create without --pool",
        async () => {
          assertEquals(
            (await cli("cluster", "get-default-pool")).stdout,
            "default-pool: default\n",
          );
          const set = await cli("cluster", "set-default-pool", "FAST");
          assertEquals([set.code, set.stdout], [0, "default pool set to 'fast'\n"], set.stderr);
          const listed = (await c.call("GET", "/v1/pools")).json.items;
          assertEquals(listed.map((p: Json) => [p.name, p.is_default]), [["default", false], [
            "fast",
            true,
          ]]);
          const missing = await cli("cluster", "set-default-pool", "nope");
          assertEquals(missing.code, 1);
          assert(missing.stderr.startsWith("api_error: pool_not_found: "), missing.stderr);
          const unset = await cli("cluster", "unset-default-pool", "--force");
          assertEquals([unset.code, unset.stdout], [0, "default pool cleared\n"], unset.stderr);
          assertEquals(
            (await cli("cluster", "get-default-pool")).stdout,
            "no default pool configured (run 'otherix cluster set-default-pool <name>' to configure)\n",
          );
          const vm = await cli("vm", "create", "nopool", "--image-url", c.imageUrl());
          assertEquals(vm.code, 1);
          assert(vm.stderr.startsWith("api_error: default_pool_not_set: "), vm.stderr);
          assertEquals((await c.call("GET", "/v1/vms/nopool")).status, 404);
        },
      );

      await t.step(
        "pool delete: refused while a VM holds a disk there; then done, and the agent drops it",
        async () => {
          const image = c.imageUrl().replace("/images/", "/missing/");
          const created = await c.call("POST", "/v1/vms", {
            name: "blocker",
            image_url: image,
            architecture: "amd64",
            pool: "fast",
            memory_mb: 128,
            disk_gib: 1,
          });
          assertEquals(created.status, 202, JSON.stringify(created.json));
          await c.waitVm("blocker", (v) => v.status === "failed");
          const refused = await cli("pool", "delete", "fast", "--force");
          assertEquals(refused.code, 1);
          assertEquals(
            refused.stderr.split(" (vm_disks")[0],
            'api_error: conflict: pool "fast" on node "node-1" still backs 1 VM disk(s)',
          );
          assertStringIncludes(refused.stderr, "vm_disks: 1; VMs: blocker");
          assertEquals((await instance("fast")).id, fastId, "nothing changed");

          assertEquals((await c.call("DELETE", "/v1/vms/blocker")).status, 202);
          await c.waitVm("blocker", "absent");
          const done = await cli("pool", "delete", "fast", "--force");
          assertEquals([done.code, done.stdout], [0, "pool fast deleted\n"], done.stderr);
          await waitFor(
            "the agent no longer provides the pool",
            async () => {
              const desired = JSON.parse(
                await Deno.readTextFile(join(c.agent.stateDir, "desired-pools.json")),
              );
              return !desired.some((p: Json) => p.name === "fast");
            },
            30_000,
            100,
          );
          const scan = await c.call("POST", "/v1/pools/fast/scan");
          assertEquals([scan.status, scan.json.error.code], [404, "pool_not_found"]);
          assert(
            Deno.statSync(`${pools}/fast/images`).isDirectory,
            "the directory is left on disk",
          );
        },
      );
    } finally {
      await c.close();
    }
  },
});
