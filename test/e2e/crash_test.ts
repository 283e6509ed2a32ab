/**
 * Crash safety of durable tasks, end to end: the control plane is killed abruptly (a
 * failpoint exits it with status 137, like `kill -9`, see cp/failpoints.ts) at each step of a
 * create, a lifecycle verb and a delete — before dispatch, during the image download, after
 * QEMU was spawned but before the result was projected — and restarted. Every VM converges,
 * with exactly one QEMU, no leaked disk and no orphan.
 */
import { join } from "node:path";
import { assert, assertEquals } from "../assert.ts";
import { pidAlive } from "../harness.ts";
import { type Cluster, type Json, startCluster, vmBody } from "./cluster.ts";

/** Restarts the control plane armed with `failpoint`, runs `action`, waits for the crash. */
async function crashAt(c: Cluster, failpoint: string, action: () => Promise<unknown>) {
  assert(pidAlive(c.agent.proc.pid), `the agent died:\n${c.agent.proc.output.slice(-8000)}`);
  await c.api.proc.stop();
  await c.startApi({ OTHERIX_FAILPOINTS: failpoint });
  const pending = action().catch(() => null); // the request itself may die with the process
  let timer: ReturnType<typeof setTimeout> | undefined;
  const st = await Promise.race([
    c.api.proc.status(),
    new Promise<null>((r) => timer = setTimeout(() => r(null), 60_000)),
  ]);
  clearTimeout(timer);
  if (st === null) {
    throw new Error(
      `the control plane did not reach ${failpoint} within 60 s\n--- api ---\n` +
        `${c.api.proc.output.slice(-8000)}\n--- agent ---\n${c.agent.proc.output.slice(-8000)}`,
    );
  }
  assertEquals(st.code, 137, `control plane should crash at ${failpoint}:\n${c.api.proc.output}`);
  assert(c.api.proc.output.includes(`"failpoint":"${failpoint}"`), "crashed at the failpoint");
  await pending;
  await c.startApi({});
}

Deno.test({
  name: "e2e: control plane killed at every step of create, verbs and delete; VMs converge",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn(t) {
    const c = await startCluster({ prefix: "otx-crash" });
    const vmsDir = () => join(c.agent.stateDir, "vms");
    const one = (name: string) => {
      const pids = c.qemuPids(name);
      assertEquals(pids.length, 1, `exactly one QEMU for ${name}: ${pids}`);
      return pids[0];
    };
    try {
      let pidA = 0;
      await t.step("create: killed during the download (after dispatch)", async () => {
        c.trickle = 2 * 1024 * 1024;
        await crashAt(
          c,
          "task.after_dispatch",
          () =>
            c.call("POST", "/v1/vms", vmBody(c, "vm-a", { image_url: c.imageUrl(true, "a.img") })),
        );
        const vm = await c.waitVm("vm-a", (v) => v.status === "running");
        pidA = one("vm-a");
        const task = (await c.call("GET", `/v1/tasks/${vm.last_task.id}`)).json;
        assertEquals([task.type, task.status], ["vm.create", "succeeded"]);
        assert(task.attempts >= 2, `resumed by a new claim (attempts ${task.attempts})`);
      });

      await t.step("create: killed right after the VM record was written", async () => {
        await crashAt(
          c,
          "vm.create.after_record",
          () => c.call("POST", "/v1/vms", vmBody(c, "vm-b")),
        );
        await c.waitVm("vm-b", (v) => v.status === "running");
        one("vm-b");
      });

      await t.step(
        "create: killed after QEMU spawned, before the result was projected",
        async () => {
          await crashAt(
            c,
            "task.before_finish",
            () => c.call("POST", "/v1/vms", vmBody(c, "vm-c")),
          );
          const vm = await c.waitVm("vm-c", (v) => v.status === "running");
          one("vm-c");
          assertEquals(vm.error, null);
        },
      );

      await t.step("pause: killed before dispatch", async () => {
        await crashAt(c, "task.before_dispatch", () => c.call("POST", "/v1/vms/vm-a/pause"));
        const vm = await c.waitVm(
          "vm-a",
          (v) => v.status === "paused" && !v.last_task?.status.match(/pending|running/),
        );
        assertEquals(vm.desired_phase, "paused");
        assertEquals(one("vm-a"), pidA, "the same QEMU");
      });

      await t.step(
        "resume: killed after the QMP command, before the result was projected",
        async () => {
          await crashAt(c, "task.before_finish", () => c.call("POST", "/v1/vms/vm-a/resume"));
          const vm = await c.waitVm(
            "vm-a",
            (v) =>
              v.status === "running" && v.last_task?.type === "vm.resume" &&
              v.last_task.status === "succeeded",
          );
          assertEquals(vm.desired_phase, "running");
          assertEquals(one("vm-a"), pidA, "the same QEMU");
        },
      );

      await t.step("delete: killed after dispatch", async () => {
        const pid = one("vm-b");
        const id = (await c.call("GET", "/v1/vms/vm-b")).json.id;
        await crashAt(c, "task.after_dispatch", () => c.call("DELETE", "/v1/vms/vm-b"));
        await c.waitVm("vm-b", "absent");
        assert(!c.qemuPids("vm-b").includes(pid), "QEMU of vm-b gone");
        assertEquals(c.qemuPids("vm-b"), []);
        const left = [...Deno.readDirSync(vmsDir())].map((e) => e.name);
        assert(!left.includes(id), `vm-b's disk is gone: ${left}`);
      });

      await t.step("everything left converged: no duplicate, no orphan, no leak", async () => {
        const vms = (await c.call("GET", "/v1/vms")).json.items as Json[];
        assertEquals(vms.map((v) => [v.name, v.status]).sort(), [
          ["vm-a", "running"],
          ["vm-c", "running"],
        ]);
        const onDisk = [...Deno.readDirSync(vmsDir())].map((e) => e.name).sort();
        assertEquals(onDisk, vms.map((v) => v.id).sort(), "one directory per VM, none orphaned");
        const active = (await c.call("GET", "/v1/vms")).json.items.filter((v: Json) =>
          ["pending", "running"].includes(v.last_task?.status)
        );
        assertEquals(active, [], "no task left in flight");
        for (const name of ["vm-a", "vm-c"]) {
          const t = (await c.call("DELETE", `/v1/vms/${name}`)).json;
          assertEquals((await c.waitTask(t.id)).status, "succeeded");
        }
        assertEquals(c.qemuPids("vm-"), []);
        assertEquals([...Deno.readDirSync(vmsDir())], []);
      });
    } finally {
      await c.close();
    }
  },
});
