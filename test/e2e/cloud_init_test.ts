/**
 * cloud-init readiness end to end on a one-node cluster of real processes (the agent reads
 * the guest's serial console: agent/cloud_init.ts; the control plane copies the condition
 * into the VM view): the offline test image prints cloud-init's final line after processing
 * its seed, or its error lines first when the user-data says `otherix-fail-cloud-init: true`.
 * `vm create --wait=cloud-init` returns once cloud-init finished, or fails with
 * `cloud_init_failed`; `vm get` shows `cloud_init`; the condition survives an agent restart;
 * a new boot (stop, start) starts pending again and finishes anew. Three boots under TCG.
 */
import { join } from "node:path";
import { assert, assertEquals, assertMatch, assertStringIncludes } from "../assert.ts";
import { runCli, waitFor } from "../harness.ts";
import { type Json, startCluster } from "./cluster.ts";

Deno.test({
  name: "e2e cloud-init readiness: --wait=cloud-init, vm get, errors, agent restart, new boot",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async (t) => {
    const c = await startCluster({ prefix: "otx-ci" });
    try {
      const home = join(c.root, "home");
      await Deno.mkdir(home, { recursive: true });
      const env = { HOME: home, OTHERIX_SERVER: c.api.url, OTHERIX_API_TOKEN: c.token };
      const cli = (...args: string[]) => runCli(args, env);
      const create = (name: string, userData: string) =>
        cli(
          "vm",
          "create",
          name,
          "--image-url",
          c.imageUrl(),
          "--memory-mb",
          "256",
          "--disk-gib",
          "1",
          "--user-data",
          userData,
          "--wait=cloud-init",
          "--wait-timeout",
          "240s",
        );
      let firstDone: Json = null;

      await t.step(
        "--wait=cloud-init returns once the final line was seen; vm get shows it",
        async () => {
          const r = await create("ok-vm", "#cloud-config\n# otherix-marker: ready\n");
          assertEquals(r.code, 0, r.stderr);
          const lines = r.stdout.trim().split("\n");
          assertMatch(lines[1], /^vm running task=/);
          assertEquals(lines[2], "vm ok-vm cloud-init done");
          const get = await cli("vm", "get", "ok-vm");
          assertStringIncludes(get.stdout, "\ncloud_init: done\n");
          firstDone = (await c.call("GET", "/v1/vms/ok-vm")).json.cloud_init;
          assertMatch(
            firstDone.detail,
            /^Cloud-init v\. 0\.0-otherix-test finished at .+\. Datasource DataSourceNoCloud\.$/,
          );
          const log = (await cli("vm", "logs", "ok-vm")).stdout;
          assertStringIncludes(log, "otherix-test-image: marker=ready");
        },
      );

      await t.step("an error line: cloud_init_failed, and vm get shows the line", async () => {
        const r = await create("bad-vm", "#cloud-config\notherix-fail-cloud-init: true\n");
        assertEquals(r.code, 1, r.stdout);
        assertMatch(
          r.stderr,
          /api_error: cloud_init_failed: vm bad-vm: cloud-init reported an error: Cloud-init v\. 0\.0-otherix-test running 'modules:final' at .+\. ERROR: otherix-fail-cloud-init is set\n$/,
        );
        const vm = (await c.call("GET", "/v1/vms/bad-vm")).json;
        assertEquals([vm.status, vm.cloud_init.status], ["running", "error"]);
        const get = await cli("vm", "get", "bad-vm");
        assertStringIncludes(
          get.stdout,
          "\ncloud_init: error (Cloud-init v. 0.0-otherix-test running",
        );
        assertEquals((await c.call("DELETE", "/v1/vms/bad-vm")).status, 202);
      });

      await t.step("an agent restart keeps the condition (same QEMU, re-adopted)", async () => {
        const id = (await c.call("GET", "/v1/vms/ok-vm")).json.id;
        const saved = JSON.parse(
          await Deno.readTextFile(join(c.agent.stateDir, "cloud-init.json")),
        )[id];
        assertEquals(saved.condition, firstDone);
        await c.restartAgent("SIGTERM");
        // A change the restarted agent reports (pause, resume) carries its condition along.
        for (const verb of ["pause", "resume"]) {
          const r = await cli("vm", verb, "ok-vm", "--wait");
          assertEquals(r.code, 0, r.stderr);
        }
        const vm = await c.waitVm("ok-vm", (v) => v.status === "running");
        assertEquals(vm.cloud_init, firstDone);
      });

      await t.step("a new boot starts pending and finishes again", async () => {
        const stop = await cli("vm", "stop", "ok-vm", "--wait", "--timeout", "30s");
        assertEquals(stop.code, 0, stop.stderr);
        const start = await cli("vm", "start", "ok-vm", "--wait");
        assertEquals(start.code, 0, start.stderr);
        const again = await waitFor(
          "a second cloud-init done",
          async () => {
            const ci = (await c.call("GET", "/v1/vms/ok-vm")).json.cloud_init;
            return ci?.status === "done" && ci.at !== firstDone.at ? ci : null;
          },
          120_000,
          250,
        );
        assert(Date.parse(again.at) > Date.parse(firstDone.at), "the new boot's line");
      });
    } finally {
      await c.close();
    }
  },
});
