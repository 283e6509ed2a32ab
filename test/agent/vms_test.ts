/**
 * The VM manager with real QEMU (TCG) on a tiny blank disk (the guest is SeaBIOS finding
 * nothing to boot: cheap, and deaf to the ACPI power button): create, every lifecycle verb and
 * its phases, exits (requested, crashed), delete, failures, cancellation, and re-adoption by
 * a new manager (an agent restart).
 */
import { assert, assertEquals, assertRejects, assertStringIncludes } from "../assert.ts";
import { ApiError } from "../../shared/errors.ts";
import type { AgentVmCreateRequest } from "../../shared/api/agent.ts";
import type { ObservedVm, VmPhase } from "../../shared/api/vm_runtime.ts";
import type { VmAction } from "../../shared/api/tasks.ts";
import { agentPaths } from "../../agent/config.ts";
import { ImageCache } from "../../agent/images.ts";
import { TaskManager } from "../../agent/tasks.ts";
import { VmManager } from "../../agent/vms.ts";
import { QmpClient } from "../../agent/qmp.ts";
import {
  killQemus,
  listDir,
  lockedPidOf,
  memoryLogger,
  parentPid,
  pidAlive,
  poweroffBootImage,
  qemuPidsMentioning,
  serveFiles,
  sha256Hex,
  tempRoot,
  tinyRawImage,
  waitGone,
  waitUntil,
} from "./helpers.ts";

function createReq(
  base: string,
  poolPath: string,
  over: Partial<AgentVmCreateRequest["vm"]> = {},
  taskId = crypto.randomUUID(),
): AgentVmCreateRequest {
  return {
    task_id: taskId,
    vm: {
      id: crypto.randomUUID(),
      name: "tiny",
      image_url: `${base}/images/tiny.img`,
      architecture: "amd64",
      vcpus: 1,
      memory_mb: 128,
      disk_gib: 1,
      user_data: "#cloud-config\n# otherix-marker: hi\n",
      ...over,
    },
    pool: { name: "default", path: poolPath },
  };
}

async function setup(extraQemuArgs?: string[]) {
  const t = await tempRoot("qemu:\n  accelerator: tcg\n");
  const image = await tinyRawImage();
  const http = serveFiles(new Map([["/images/tiny.img", image]]));
  const paths = agentPaths(t.cfg);
  const { log, lines } = memoryLogger();
  const manager = () =>
    new VmManager({
      paths,
      qemu: t.cfg.qemu,
      accelerator: "tcg",
      hostArch: "amd64",
      images: new ImageCache({ idleTimeoutMs: 5000 }),
      log,
      extraQemuArgs,
      stopGraceMs: 3000,
    });
  const vms = manager();
  await vms.recover();
  const tasks = new TaskManager(vms, log);
  const pool = `${paths.poolsDir}/default`;
  return {
    t,
    http,
    image,
    paths,
    vms,
    tasks,
    pool,
    lines,
    manager,
    async done() {
      await vms.close();
      await killQemus(paths.runDir);
      await http.server.shutdown();
      await t.cleanup();
    },
  };
}

/** Records every change a manager announces. */
function recordChanges(vms: VmManager, id: string) {
  const changes: ObservedVm[] = [];
  let removed = false;
  vms.subscribe((vm, gone) => {
    if (vm.id !== id) return;
    changes.push(vm);
    if (gone) removed = true;
  });
  return {
    changes,
    get removed() {
      return removed;
    },
    /** Distinct consecutive phases seen since the last call. */
    phases(): VmPhase[] {
      const out: VmPhase[] = [];
      for (const c of changes.splice(0)) if (out.at(-1) !== c.phase) out.push(c.phase);
      return out;
    },
  };
}

Deno.test("vms: create, every verb with its phases, exits, delete (one tiny VM)", async (t) => {
  const s = await setup();
  const req = createReq(s.http.base, s.pool);
  const id = req.vm.id;
  const seen = recordChanges(s.vms, id);
  const act = async (
    action: VmAction,
    extra: { timeout_seconds?: number; paused?: boolean } = {},
  ) => {
    const taskId = crypto.randomUUID();
    s.tasks.submitAction(id, { task_id: taskId, action, ...extra });
    const task = (await s.tasks.wait(taskId))!;
    assertEquals(task.status, "succeeded", JSON.stringify(task.error));
    assertEquals(task.op, `vm.${action}`);
    return task;
  };
  const refused = (action: VmAction, phase: VmPhase) => {
    let err: unknown;
    try {
      s.tasks.submitAction(id, { task_id: crypto.randomUUID(), action });
    } catch (e) {
      err = e;
    }
    assert(err instanceof ApiError, `${action} in ${phase} was accepted`);
    assertEquals([err.code, err.status, err.details?.phase], ["vm_invalid_state", 409, phase]);
  };
  try {
    let pid = 0;
    await t.step("create → running, QEMU daemonized with its pidfile, timings", async () => {
      const pending = s.tasks.submitCreate(req);
      assertEquals(pending.status, "pending");
      assertEquals(pending.timings, {});
      const task = (await s.tasks.wait(req.task_id))!;
      assertEquals(task.status, "succeeded", JSON.stringify(task.error));
      assertEquals(task.result, {
        phase: "running",
        accelerator: "tcg",
        image: "tiny.img",
        image_cache_hit: false,
        image_format: "raw",
      });
      const steps = ["image", "overlay", "seed", "spawn", "qmp_ready"];
      assertEquals(Object.keys(task.timings).sort(), [...steps].sort());
      for (let i = 1; i < steps.length; i++) {
        assert(task.timings[steps[i]] >= task.timings[steps[i - 1]], JSON.stringify(task.timings));
      }
      console.log(
        `vm.create (download + disk + seed + QEMU) timings ms: ${JSON.stringify(task.timings)}`,
      );
      assert(Date.parse(task.updated_at) >= Date.parse(task.created_at));
      const vm = s.vms.get(id)!;
      assertEquals([vm.phase, vm.exit], ["running", null]);
      pid = vm.pid!;
      assertEquals(await parentPid(pid), 1);
      const files = s.vms.files(id);
      assertEquals(await lockedPidOf(files.pidFile), pid);
      assertEquals(await listDir(files.vmDir), [
        "disk.qcow2",
        "seed.iso",
        "serial.log",
        "state.json",
        "vm.json",
      ]);
      assertEquals(await listDir(files.sockDir), [
        "qemu.pid",
        "qga.sock",
        "qmp.sock",
        "serial.sock",
      ]);
      const manifest = JSON.parse(await Deno.readTextFile(files.vmJson));
      assertEquals([manifest.user_data, manifest.image, manifest.image_format], [
        req.vm.user_data,
        "tiny.img",
        "raw",
      ]);
      assertEquals(JSON.parse(await Deno.readTextFile(files.stateJson)), {
        running: true,
        exit: null,
      });
      assertEquals((await Deno.stat(files.vmDir)).mode! & 0o777, 0o750);
      assertEquals(
        await Deno.readTextFile(`${s.pool}/images/tiny.img.sha256`),
        sha256Hex(s.image) + "\n",
      );
      assertStringIncludes(
        s.lines.find((l) => l.includes("qemu: starting (tcg)")) ?? "",
        "-machine q35,accel=tcg",
      );
      assertEquals(seen.phases(), ["creating", "running"]);
    });

    await t.step(
      "create is idempotent: same task id, or a new task for the running VM",
      async () => {
        assertEquals(s.tasks.submitCreate(req).status, "succeeded");
        const again = createReq(s.http.base, s.pool, req.vm);
        s.tasks.submitCreate(again);
        const t2 = (await s.tasks.wait(again.task_id))!;
        assertEquals([t2.status, t2.result?.image_cache_hit], ["succeeded", true]);
        assertEquals(s.vms.get(id)?.pid, pid);
        assertEquals(s.http.hits.get("/images/tiny.img"), 1);
        assertEquals(await qemuPidsMentioning(id), [pid]);
      },
    );

    await t.step("running: start and resume are refused before a task exists", () => {
      refused("start", "running");
      refused("resume", "running");
      const unknown = crypto.randomUUID();
      let code = "";
      try {
        s.tasks.submitAction(unknown, { task_id: crypto.randomUUID(), action: "pause" });
      } catch (e) {
        code = (e as ApiError).code;
      }
      assertEquals(code, "vm_not_found");
    });

    await t.step("pause → paused; resume → running; reset keeps it running", async () => {
      const pause = await act("pause");
      assertEquals(pause.result, { phase: "paused" });
      assert(pause.timings.qmp_command <= pause.timings.done);
      console.log(`vm.pause: QMP command issued ${pause.timings.qmp_command} ms after accept`);
      refused("pause", "paused");
      refused("start", "paused");
      assertEquals((await act("resume")).result, { phase: "running" });
      assertEquals((await act("reset")).result, { phase: "running" });
      assertEquals(seen.phases(), ["paused", "running"]);
      assertEquals(s.vms.get(id)?.pid, pid);
    });

    await t.step("reboot of a guest deaf to ACPI resets it after the timeout", async () => {
      const t0 = performance.now();
      const task = await act("reboot", { timeout_seconds: 1 });
      assert(performance.now() - t0 >= 1000);
      assertEquals(task.result, { phase: "running" });
      assertEquals(task.progress, "timeout: reset");
      assertEquals(s.vms.get(id)?.pid, pid);
    });

    await t.step(
      "stop of a guest deaf to ACPI is forced after the timeout → requested",
      async () => {
        const task = await act("stop", { timeout_seconds: 1 });
        assertEquals(task.result, { phase: "stopped" });
        assertEquals(seen.phases(), ["stopping", "stopped"]);
        const vm = s.vms.get(id)!;
        assertEquals([vm.phase, vm.pid, vm.exit?.reason], ["stopped", null, "requested"]);
        assertEquals(vm.exit?.detail, "stop: forced after 1 s (the guest did not shut down)");
        await waitGone(pid);
        const state = JSON.parse(await Deno.readTextFile(s.vms.files(id).stateJson));
        assertEquals(state, { running: false, exit: vm.exit });
        let code = "";
        try {
          s.vms.consoleTarget(id);
        } catch (e) {
          code = (e as ApiError).code;
        }
        assertEquals(code, "vm_invalid_state");
      },
    );

    await t.step("stopped: only start (and delete) are allowed", () => {
      for (const a of ["stop", "poweroff", "reboot", "pause", "resume", "reset"] as const) {
        refused(a, "stopped");
      }
    });

    await t.step("start paused → paused (-S); resume → running; poweroff → requested", async () => {
      const start = await act("start", { paused: true });
      assertEquals(start.result, { phase: "paused", accelerator: "tcg" });
      assert(start.timings.spawn <= start.timings.qmp_ready);
      const paused = s.vms.get(id)!;
      assert(paused.pid !== null && paused.pid !== pid);
      assertStringIncludes(
        s.lines.findLast((l) => l.includes("qemu: starting (tcg)")) ?? "",
        " -S",
      );
      assertEquals(s.vms.consoleTarget(id), { serialSock: s.vms.files(id).serialSock });
      assertEquals((await act("resume")).result, { phase: "running" });
      const off = await act("poweroff");
      assertEquals(off.result, { phase: "stopped" });
      assertEquals(s.vms.get(id)?.exit?.reason, "requested");
      assertEquals(s.vms.get(id)?.exit?.detail, "poweroff");
      assertEquals(seen.phases(), ["starting", "paused", "running", "stopping", "stopped"]);
      await waitGone(paused.pid!);
    });

    await t.step("QEMU killed behind the agent's back → stopped, exit crashed", async () => {
      await act("start");
      const running = s.vms.get(id)!;
      assertEquals(running.phase, "running");
      seen.phases();
      Deno.kill(running.pid!, "SIGKILL");
      await waitUntil(() => s.vms.get(id)?.phase === "stopped", 10_000, "the crash to be seen");
      const vm = s.vms.get(id)!;
      assertEquals([vm.pid, vm.exit?.reason], [null, "crashed"]);
      assertEquals(vm.exit?.detail, `QEMU pid ${running.pid} exited unexpectedly`);
      assertEquals(seen.phases(), ["stopped"]);
      await waitUntil(
        async () =>
          JSON.parse(await Deno.readTextFile(s.vms.files(id).stateJson)).exit?.reason === "crashed",
        5000,
        "state.json to record the crash",
      );
    });

    await t.step("delete → no process, no files, announced as removed", async () => {
      await act("start");
      const pid2 = s.vms.get(id)!.pid!;
      const delId = crypto.randomUUID();
      s.tasks.submitDelete(id, delId);
      const del = (await s.tasks.wait(delId))!;
      assertEquals(del.status, "succeeded", JSON.stringify(del.error));
      assert("done" in del.timings);
      await waitGone(pid2);
      assertEquals(await listDir(s.paths.vmsDir), []);
      assertEquals(await listDir(s.paths.vmSocketsDir), []);
      assertEquals(s.vms.list(), []);
      assert(seen.removed);
      // The image cache survives VM deletion.
      assertEquals(await listDir(`${s.pool}/images`), [
        "tiny.img",
        "tiny.img.sha256",
        "tiny.img.source",
      ]);
      // Actions on a deleted VM: 404.
      let code = "";
      try {
        s.tasks.submitAction(id, { task_id: crypto.randomUUID(), action: "start" });
      } catch (e) {
        code = (e as ApiError).code;
      }
      assertEquals(code, "vm_not_found");
    });

    await t.step("deleting an unknown id succeeds, removing leftovers", async () => {
      const ghost = crypto.randomUUID();
      await Deno.mkdir(`${s.paths.vmsDir}/${ghost}`);
      await Deno.writeTextFile(`${s.paths.vmsDir}/${ghost}/disk.qcow2`, "junk");
      const del2 = crypto.randomUUID();
      s.tasks.submitDelete(ghost, del2);
      assertEquals((await s.tasks.wait(del2))?.status, "succeeded");
      assertEquals(await listDir(s.paths.vmsDir), []);
    });
  } finally {
    await s.done();
  }
});

Deno.test("vms: QEMU failing to start → qemu_spawn_failed with stderr, VM dir cleaned", async () => {
  const s = await setup(["-machine", "otherix-no-such-machine"]);
  try {
    const req = createReq(s.http.base, s.pool);
    s.tasks.submitCreate(req);
    const task = await s.tasks.wait(req.task_id);
    assertEquals(task?.status, "failed");
    assertEquals(task?.error?.code, "qemu_spawn_failed");
    assertStringIncludes(task?.error?.message ?? "", "exited during startup (exit code 1)");
    assertStringIncludes(
      task?.error?.message ?? "",
      "qemu-system-x86_64: unsupported machine type",
    );
    assertEquals(await listDir(s.paths.vmsDir), []);
    assertEquals(await listDir(s.paths.vmSocketsDir), []);
    assertEquals(s.vms.list(), []);
  } finally {
    await s.done();
  }
});

Deno.test("vms: download and pool failures map to catalogue codes, no files left", async () => {
  const s = await setup();
  try {
    const cases: [AgentVmCreateRequest, string][] = [
      [
        createReq(s.http.base, s.pool, { image_url: `${s.http.base}/images/missing.img` }),
        "download_failed",
      ],
      [createReq(s.http.base, s.pool, { image_sha256: "f".repeat(64) }), "checksum_mismatch"],
      [createReq(s.http.base, `${s.t.root}/elsewhere`), "path_not_allowed"],
      [createReq(s.http.base, `${s.paths.poolsDir}-evil/x`), "path_not_allowed"],
    ];
    for (const [req, code] of cases) {
      s.tasks.submitCreate(req);
      const task = await s.tasks.wait(req.task_id);
      assertEquals([task?.status, task?.error?.code], ["failed", code], task?.error?.message);
    }
    assertEquals(await listDir(s.paths.vmsDir), []);
    assertEquals(await listDir(`${s.t.root}`), ["etc", "run", "state"]);
    // Reusing a task id for another VM is a conflict.
    const req = cases[0][0];
    let code = "";
    try {
      s.tasks.submitDelete(crypto.randomUUID(), req.task_id);
    } catch (e) {
      code = (e as { code: string }).code;
    }
    assertEquals(code, "conflict");
  } finally {
    await s.done();
  }
});

/** An HTTP server that sends `size` bytes' headers, then one byte every `everyMs`. */
function tricklingServer(size: number, everyMs: number) {
  let streams = 0;
  let cancelled = 0;
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, () => {
    streams++;
    let timer: ReturnType<typeof setInterval>;
    const body = new ReadableStream<Uint8Array>({
      start(ctrl) {
        ctrl.enqueue(new Uint8Array(1024));
        timer = setInterval(() => ctrl.enqueue(new Uint8Array(1)), everyMs);
      },
      cancel() {
        cancelled++;
        clearInterval(timer);
      },
    });
    return new Response(body, { headers: { "content-length": String(size) } });
  });
  return {
    base: `http://127.0.0.1:${server.addr.port}`,
    get streams() {
      return streams;
    },
    get cancelled() {
      return cancelled;
    },
    close: () => server.shutdown(),
  };
}

Deno.test("vms: delete during a slow download cancels the create → task_cancelled, nothing left", async () => {
  const s = await setup();
  const slow = tricklingServer(64 * 1024 * 1024, 50);
  try {
    const req = createReq(s.http.base, s.pool, { image_url: `${slow.base}/slow.img` });
    const id = req.vm.id;
    // A second create of the same VM queued behind the first (a re-dispatch).
    const queued = createReq(s.http.base, s.pool, req.vm);
    s.tasks.submitCreate(req);
    s.tasks.submitCreate(queued);
    await waitUntil(
      () => (s.tasks.get(req.task_id)?.progress ?? "").startsWith("downloading image"),
      10_000,
      "the download to start",
    );
    assertEquals(s.vms.get(id)?.phase, "creating");
    const delId = crypto.randomUUID();
    s.tasks.submitDelete(id, delId);
    const [create, second, del] = await Promise.all([
      s.tasks.wait(req.task_id),
      s.tasks.wait(queued.task_id),
      s.tasks.wait(delId),
    ]);
    assertEquals([create?.status, create?.error?.code], ["failed", "task_cancelled"]);
    assertEquals([second?.status, second?.error?.code], ["failed", "task_cancelled"]);
    assertEquals(del?.status, "succeeded", JSON.stringify(del?.error));
    assertEquals(slow.streams, 1);
    await waitUntil(() => slow.cancelled === 1, 5000, "the download to be cancelled");
    assertEquals(await listDir(s.paths.vmsDir), []);
    assertEquals(await listDir(s.paths.vmSocketsDir), []);
    assertEquals(await listDir(`${s.pool}/images`), []); // no partial download left
    assertEquals(s.vms.list(), []);
  } finally {
    await slow.close();
    await s.done();
  }
});

Deno.test("vms: a new manager (agent restart) re-adopts live QEMUs and explains dead ones", async (t) => {
  const s = await setup();
  try {
    const create = async (name: string) => {
      const req = createReq(s.http.base, s.pool, { name });
      const res = await s.vms.create(req);
      assertEquals(res.phase, "running");
      return { id: req.vm.id, pid: s.vms.get(req.vm.id)!.pid! };
    };
    const alive = await create("alive");
    const pausedVm = await create("paused");
    const crashed = await create("crashed");
    const rebooted = await create("rebooted");
    const stopped = await create("stopped");
    await s.vms.action(pausedVm.id, { action: "pause" });
    await s.vms.action(stopped.id, { action: "poweroff" });
    const stoppedExit = s.vms.get(stopped.id)!.exit!;

    // The agent goes away; QEMUs stay.
    await s.vms.close();
    for (const v of [alive, pausedVm, crashed, rebooted]) assert(await pidAlive(v.pid));
    // Meanwhile: one QEMU is killed, another disappears with its run dir (host reboot).
    Deno.kill(crashed.pid, "SIGKILL");
    Deno.kill(rebooted.pid, "SIGKILL");
    await waitGone(crashed.pid);
    await waitGone(rebooted.pid);
    await Deno.remove(`${s.paths.vmSocketsDir}/${rebooted.id}`, { recursive: true });
    // And a run dir whose VM no longer exists holds a live QEMU: an orphan.
    const orphanDir = `${s.paths.vmSocketsDir}/${crypto.randomUUID()}`;
    await Deno.mkdir(orphanDir);
    const orphan = await new Deno.Command("qemu-system-x86_64", {
      args: [
        "-machine",
        "q35,accel=tcg",
        "-m",
        "64",
        "-nodefaults",
        "-display",
        "none",
        "-S",
        "-daemonize",
        "-pidfile",
        `${orphanDir}/qemu.pid`,
      ],
    }).output();
    assert(orphan.success);
    const orphanPid = (await lockedPidOf(`${orphanDir}/qemu.pid`))!;

    const vms2 = s.manager();
    const seen: string[] = [];
    vms2.subscribe((vm) => seen.push(`${vm.name}:${vm.phase}`));
    await vms2.recover();
    try {
      await t.step("a live QEMU is adopted: same pid, phase from QMP, no second QEMU", async () => {
        assertEquals(vms2.get(alive.id)?.phase, "running");
        assertEquals(vms2.get(alive.id)?.pid, alive.pid);
        assertEquals(vms2.get(pausedVm.id)?.phase, "paused");
        assertEquals(vms2.get(pausedVm.id)?.pid, pausedVm.pid);
        assertEquals(await qemuPidsMentioning(alive.id), [alive.pid]);
        // The adopted session works: resume the paused one.
        assertEquals(await vms2.action(pausedVm.id, { action: "resume" }), { phase: "running" });
      });
      await t.step("a QEMU that died meanwhile → crashed; a cleared run dir → host-reboot", () => {
        const c = vms2.get(crashed.id)!;
        assertEquals([c.phase, c.pid, c.exit?.reason], ["stopped", null, "crashed"]);
        assertStringIncludes(c.exit?.detail ?? "", "pidfile is stale");
        const r = vms2.get(rebooted.id)!;
        assertEquals([r.phase, r.pid, r.exit?.reason], ["stopped", null, "host-reboot"]);
        const st = vms2.get(stopped.id)!;
        assertEquals([st.phase, st.exit], ["stopped", stoppedExit]);
        assert(seen.includes("crashed:stopped") && seen.includes("rebooted:stopped"));
      });
      await t.step("an orphan QEMU in a run dir without a VM is killed", async () => {
        await waitGone(orphanPid);
        assertEquals((await listDir(s.paths.vmSocketsDir)).sort(), [alive.id, pausedVm.id].sort());
      });
      await t.step("exits are persisted: a third manager reports the same ones", async () => {
        await vms2.close();
        const vms3 = s.manager();
        await vms3.recover();
        try {
          assertEquals(vms3.get(crashed.id)?.exit, vms2.get(crashed.id)?.exit);
          assertEquals(vms3.get(rebooted.id)?.exit, vms2.get(rebooted.id)?.exit);
          assertEquals(vms3.get(alive.id)?.pid, alive.pid);
          // start works on a VM whose QEMU crashed while the agent was away.
          assertEquals((await vms3.action(crashed.id, { action: "start" })).phase, "running");
        } finally {
          await vms3.close();
        }
      });
    } finally {
      await vms2.close();
    }
  } finally {
    await s.done();
  }
});

Deno.test("vms: a guest that powers itself off → guest-shutdown, also while the agent is away", async (t) => {
  const s = await setup();
  const off = serveFiles(new Map([["/images/poweroff.img", poweroffBootImage()]]));
  try {
    const req = createReq(off.base, s.pool, { image_url: `${off.base}/images/poweroff.img` });
    const id = req.vm.id;
    const seen = recordChanges(s.vms, id);

    await t.step("attached: SHUTDOWN (guest) → the agent quits QEMU → guest-shutdown", async () => {
      await s.vms.create(req);
      const pid = s.vms.get(id)!.pid!;
      await waitUntil(() => s.vms.get(id)?.phase === "stopped", 30_000, "the guest to power off");
      const vm = s.vms.get(id)!;
      assertEquals([vm.pid, vm.exit?.reason, vm.exit?.detail], [
        null,
        "guest-shutdown",
        "QMP SHUTDOWN reason guest-shutdown",
      ]);
      assertEquals(seen.phases().slice(-2), ["stopping", "stopped"]);
      await waitGone(pid);
    });

    await t.step("away: the next agent finds QEMU waiting in `shutdown` and quits it", async () => {
      assertEquals(await s.vms.action(id, { action: "start", paused: true }), {
        phase: "paused",
        accelerator: "tcg",
      });
      const pid = s.vms.get(id)!.pid!;
      await s.vms.close();
      // While no agent runs, the guest gets its vCPUs and powers off; an observer's own QMP
      // session sees it happen (QEMU serves one session at a time: the agent's is closed).
      const observer = await QmpClient.connect(s.vms.files(id).qmpSock, Date.now() + 5000);
      const shutdown = new Promise<void>((resolve) =>
        observer.onEvent((e) => e.event === "SHUTDOWN" && resolve())
      );
      await observer.execute("cont");
      await shutdown;
      assertEquals(
        (await observer.execute("query-status") as { status: string }).status,
        "shutdown",
      );
      observer.close();

      const vms2 = s.manager();
      try {
        await vms2.recover();
        await waitUntil(() => vms2.get(id)?.phase === "stopped", 10_000, "QEMU to be quit");
        const vm = vms2.get(id)!;
        assertEquals([vm.pid, vm.exit?.reason, vm.exit?.detail], [
          null,
          "guest-shutdown",
          "the guest powered off while the agent was down",
        ]);
        await waitGone(pid);
      } finally {
        await vms2.close();
      }
    });
  } finally {
    await off.server.shutdown();
    await s.done();
  }
});

Deno.test("vms: ids that are not UUIDs are refused before any path is built", async () => {
  const t = await tempRoot();
  try {
    const paths = agentPaths(t.cfg);
    const vms = new VmManager({
      paths,
      qemu: t.cfg.qemu,
      accelerator: "tcg",
      hostArch: "amd64",
      images: new ImageCache({ idleTimeoutMs: 5000 }),
      log: memoryLogger().log,
    });
    await vms.recover();
    // `<state>/vms/../../etc` is the agent's config root.
    await Deno.writeTextFile(`${t.root}/etc/agent.yaml`, "keep: me\n");
    for (const id of ["../../etc", "..", ""]) {
      const del = await assertRejects(() => vms.delete(id));
      assertEquals((del as ApiError).code, "validation_failed", id);
      const log = await assertRejects(() => vms.consoleLog(id, 10));
      assertEquals((log as ApiError).code, "validation_failed", id);
      const act = await assertRejects(() => vms.action(id, { action: "start" }));
      assertEquals((act as ApiError).code, "validation_failed", id);
    }
    assertEquals(await listDir(`${t.root}/etc`), ["agent.yaml"]);
    assertEquals(await Deno.readTextFile(`${t.root}/etc/agent.yaml`), "keep: me\n");
    assertEquals(await listDir(t.root), ["etc", "run", "state"]);
  } finally {
    await t.cleanup();
  }
});
