/**
 * VM lifecycle end to end (real otherix-api, otherix-agent, QEMU under TCG, the offline test
 * image): every verb and its status transitions, invalid transitions, VMs that outlive the
 * agent (SIGTERM and kill -9: same QEMU pid, `running` throughout), a QEMU killed behind the
 * agent's back restarted per its restart policy, and a guest that powers itself off staying
 * stopped. One VM carries the whole sequence, so the guest boots as few times as it must.
 */
import {
  assert,
  assertEquals,
  assertMatch,
  assertNotEquals,
  assertStringIncludes,
} from "../assert.ts";
import { runCli, waitFor } from "../harness.ts";
import { TEST_IMAGE_LOGIN, TEST_IMAGE_SHELL_PROMPT } from "../test_image.ts";
import { ConsoleSession, type Json, startCluster, vmBody } from "./cluster.ts";

Deno.test({
  name: "e2e: lifecycle verbs, VMs outliving the agent, restart policy, guest poweroff",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn(t) {
    const c = await startCluster({
      prefix: "otx-life",
      apiConfig: { nodes: { heartbeat_interval_seconds: 1, stale_threshold_seconds: 8 } },
    });
    const vmOf = async (name: string): Promise<Json> =>
      (await c.call("GET", `/v1/vms/${name}`)).json;
    const vm = () => vmOf("life");
    /** Runs a verb and waits for its task; returns the VM afterwards. */
    const verb = async (action: string, body?: unknown, expect = "succeeded") => {
      const r = await c.call("POST", `/v1/vms/life/${action}`, body);
      assertEquals(r.status, 202, JSON.stringify(r.json));
      assertEquals(r.json.type, `vm.${action}`);
      const task = await c.waitTask(r.json.id);
      assertEquals(task.status, expect, JSON.stringify(task.error));
      return await vm();
    };
    const pid = () => {
      const pids = c.qemuPids("life");
      assertEquals(pids.length, 1, `one QEMU: ${pids}`);
      return pids[0];
    };
    /** Waits for the guest's login prompt (after `from` in a fresh console session). */
    const loginPrompt = async (con: ConsoleSession) => {
      await waitFor(
        "login prompt",
        async () => {
          con.send("\n");
          const at = con.output.lastIndexOf("login:");
          await new Promise((r) => setTimeout(r, 500));
          return at >= 0 ? true : null;
        },
        120_000,
        0,
      );
    };
    try {
      const created = await c.call("POST", "/v1/vms", vmBody(c, "life"));
      assertEquals(created.status, 202);
      let v = await c.waitVm("life", (x) => x.status === "running");
      assertEquals([v.desired_phase, v.restart_policy, v.image_format], [
        "running",
        "on-failure",
        "raw",
      ]);
      let qemu = pid();

      await t.step("invalid transitions are 409 with the current status", async () => {
        for (const action of ["start", "resume"]) {
          const r = await c.call("POST", `/v1/vms/life/${action}`);
          assertEquals([r.status, r.json.error.code], [409, "vm_invalid_state"], action);
          assertEquals(r.json.error.details.status, "running");
        }
        const bad = await c.call("POST", "/v1/vms/life/stop", { timeout_seconds: 0 });
        assertEquals([bad.status, bad.json.error.code], [400, "validation_failed"]);
        const unknown = await c.call("POST", "/v1/vms/nope/stop");
        assertEquals([unknown.status, unknown.json.error.code], [404, "vm_not_found"]);
        assertEquals((await vm()).last_task.type, "vm.create", "nothing was queued");
      });

      await t.step("pause, resume, reset: same QEMU, status follows", async () => {
        // Through the real CLI, whose --wait follows the event stream.
        const env = {
          HOME: `${c.root}/home`,
          OTHERIX_SERVER: c.api.url,
          OTHERIX_API_TOKEN: c.token,
        };
        const paused = await runCli(["vm", "pause", "life", "--wait"], env);
        assertEquals(paused.code, 0, paused.stderr);
        assertMatch(paused.stdout, /^vm life paused task=[0-9a-f-]{36}$/m);
        v = await vm();
        assertEquals([v.status, v.desired_phase], ["paused", "paused"]);
        const again = await runCli(["vm", "pause", "life"], env);
        assertEquals(again.code, 1);
        assertStringIncludes(again.stderr, "api_error: vm_invalid_state");
        const r = await c.call("POST", "/v1/vms/life/pause");
        assertEquals([r.status, r.json.error.details.status], [409, "paused"]);
        v = await verb("resume");
        assertEquals([v.status, v.desired_phase], ["running", "running"]);
        v = await verb("reset");
        assertEquals(v.status, "running");
        assertEquals(pid(), qemu);
      });

      await t.step("the VM outlives the agent: SIGTERM and kill -9", async () => {
        for (const signal of ["SIGTERM", "SIGKILL"] as const) {
          const seen = new Set<string>();
          let watching = true;
          const watch = (async () => {
            while (watching) {
              seen.add((await vm()).status);
              await new Promise((r) => setTimeout(r, 50));
            }
          })();
          await c.restartAgent(signal);
          // Let a heartbeat of the new agent land before judging.
          await c.agent.proc.waitForOutput((o) => o.includes("heartbeat: ok"));
          watching = false;
          await watch;
          assertEquals([...seen], ["running"], `status while the agent restarted (${signal})`);
          assertEquals(pid(), qemu, `same QEMU after ${signal}`);
        }
      });

      await t.step("a guest-visible reboot and a stop by ACPI", async () => {
        const con = await ConsoleSession.open(c, "life");
        await loginPrompt(con);
        const mark = con.output.length;
        v = await verb("reboot", { timeout_seconds: 60 });
        assertEquals(v.status, "running");
        await con.expect("login:", mark); // the guest booted again
        assertEquals(pid(), qemu, "a reboot keeps the QEMU process");
        v = await verb("stop", { timeout_seconds: 60 });
        assertEquals([v.status, v.desired_phase, v.last_exit?.reason], [
          "stopped",
          "stopped",
          "requested",
        ]);
        assertEquals(c.qemuPids("life"), []);
        await con.closed;
      });

      await t.step("start again, then poweroff", async () => {
        v = await verb("start");
        assertEquals([v.status, v.desired_phase], ["running", "running"]);
        qemu = pid();
        v = await verb("poweroff");
        assertEquals([v.status, v.desired_phase], ["stopped", "stopped"]);
        assertEquals(c.qemuPids("life"), []);
        v = await verb("start");
        qemu = pid();
      });

      await t.step("a QEMU killed behind the agent's back is restarted (on-failure)", async () => {
        Deno.kill(qemu, "SIGKILL");
        v = await c.waitVm("life", (x) => x.restart_count === 1 && x.status === "running");
        assertEquals(v.last_exit?.reason, "crashed");
        assertEquals(v.desired_phase, "running");
        const task = (await c.call("GET", `/v1/tasks/${v.last_task.id}`)).json;
        assertEquals(task.type, "vm.start");
        assert(task.reason?.includes("crashed"), `reason: ${task.reason}`);
        assertNotEquals(pid(), qemu);
        qemu = pid();
      });

      await t.step("a guest that powers itself off stays stopped", async () => {
        const con = await ConsoleSession.open(c, "life");
        await loginPrompt(con);
        con.send(`${TEST_IMAGE_LOGIN}\n`);
        await con.expect(TEST_IMAGE_SHELL_PROMPT);
        const before = (await vm()).last_task.id;
        con.send("poweroff\n");
        v = await c.waitVm("life", (x) => x.status === "stopped" && x.desired_phase === "stopped");
        assertEquals(v.last_exit?.reason, "guest-shutdown");
        await con.closed;
        // Two more heartbeats reach the controller: still stopped, no restart task queued.
        for (let i = 0; i < 2; i++) {
          const hb = (await c.call("GET", "/v1/nodes/node-1")).json.last_heartbeat_at;
          await waitFor(
            "next heartbeat",
            async () => {
              const n = (await c.call("GET", "/v1/nodes/node-1")).json;
              return n.last_heartbeat_at !== hb;
            },
            30_000,
            100,
          );
        }
        v = await vm();
        assertEquals([v.status, v.last_task.id], ["stopped", before]);
        assertEquals(c.qemuPids("life"), []);
      });

      await t.step("delete during a create's download cancels it; nothing is left", async () => {
        c.trickle = 64 * 1024;
        const create = await c.call(
          "POST",
          "/v1/vms",
          vmBody(c, "slow", { image_url: c.imageUrl(true, "slow.img") }),
        );
        await waitFor(
          "downloading",
          async () => {
            const t = (await c.call("GET", `/v1/tasks/${create.json.id}`)).json;
            return t.progress?.startsWith("downloading") ? t : null;
          },
          60_000,
          50,
        );
        const del = await c.call("DELETE", "/v1/vms/slow");
        assertEquals(del.status, 202);
        const cancelled = await c.waitTask(create.json.id);
        assertEquals([cancelled.status, cancelled.error?.code], ["failed", "task_cancelled"]);
        assertEquals((await c.waitTask(del.json.id)).status, "succeeded");
        await c.waitVm("slow", "absent");
        const images = `${c.agent.stateDir}/pools/default/images`;
        const cached = [...Deno.readDirSync(images)].map((e) => e.name);
        assert(!cached.some((n) => n.includes("slow")), `no partial download left: ${cached}`);
        const vmDirs = [...Deno.readDirSync(`${c.agent.stateDir}/vms`)].map((e) => e.name);
        assert(!vmDirs.includes(create.json.resource.id), "no VM directory left");
        assertEquals(c.qemuPids("slow"), []);
      });

      await t.step("delete leaves nothing", async () => {
        const d = await c.call("DELETE", "/v1/vms/life");
        assertEquals((await c.waitTask(d.json.id)).status, "succeeded");
        await c.waitVm("life", "absent");
        assertEquals(c.qemuPids("life"), []);
      });

      await t.step(
        "delete --force on a node that is away; the agent cleans up on return",
        async () => {
          await c.call("POST", "/v1/vms", vmBody(c, "away"));
          const away = await c.waitVm("away", (x) => x.status === "running");
          const awayPid = c.qemuPids("away");
          assertEquals(awayPid.length, 1);
          await c.agent.proc.stop(); // the VM keeps running without its agent
          await waitFor(
            "node unreachable",
            async () => {
              return (await c.call("GET", "/v1/nodes/node-1")).json.status === "unreachable";
            },
            30_000,
            100,
          );
          assertEquals((await vmOf("away")).status, "unknown");
          const plain = await c.call("DELETE", "/v1/vms/away?force=true");
          assertEquals([plain.status, plain.json.status], [202, "succeeded"]);
          assertEquals((await c.call("GET", "/v1/vms/away")).status, 404);
          assertEquals(c.qemuPids("away"), awayPid, "nothing touched the node meanwhile");
          await c.restartAgent("SIGTERM");
          // The agent's delete stops QEMU first, then removes the files: wait for both.
          const filesOf = () => [...Deno.readDirSync(`${c.agent.stateDir}/vms`)].map((e) => e.name);
          await waitFor(
            "orphan QEMU and files removed",
            () => Promise.resolve(c.qemuPids("away").length === 0 && !filesOf().includes(away.id)),
            60_000,
            100,
          );
        },
      );
    } finally {
      await c.close();
    }
  },
});
