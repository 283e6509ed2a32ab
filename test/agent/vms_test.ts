import { assert, assertEquals, assertRejects, assertStringIncludes } from "../assert.ts";
import type { ApiError } from "../../shared/errors.ts";
import type { AgentVmCreateRequest } from "../../shared/api/agent.ts";
import { agentPaths } from "../../agent/config.ts";
import { ImageCache } from "../../agent/images.ts";
import { TaskManager } from "../../agent/tasks.ts";
import { VmManager } from "../../agent/vms.ts";
import { buildQemuArgs, startQemu } from "../../agent/qemu.ts";
import {
  listDir,
  memoryLogger,
  pidAlive,
  serveFiles,
  sha256Hex,
  tempRoot,
  tinyRawImage,
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
  const vms = new VmManager({
    paths,
    qemu: t.cfg.qemu,
    accelerator: "tcg",
    hostArch: "amd64",
    images: new ImageCache({ idleTimeoutMs: 5000 }),
    log,
    extraQemuArgs,
  });
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
    async done() {
      await vms.shutdown();
      await http.server.shutdown();
      await t.cleanup();
    },
  };
}

Deno.test("vms: create under TCG → running; idempotent; delete leaves no process and no files", async () => {
  const s = await setup();
  try {
    const req = createReq(s.http.base, s.pool);
    const t0 = performance.now();
    const pending = s.tasks.submitCreate(req);
    assertEquals(pending.status, "pending");
    const task = await s.tasks.wait(req.task_id);
    console.log(
      `vm.create (download + disk + seed + QEMU running) took ${
        Math.round(performance.now() - t0)
      } ms`,
    );
    assertEquals(task?.status, "succeeded", JSON.stringify(task?.error));
    assertEquals(task?.result, {
      phase: "running",
      accelerator: "tcg",
      image: "tiny.img",
      image_cache_hit: false,
    });
    const vm = s.vms.get(req.vm.id)!;
    assertEquals(vm.phase, "running");
    assert(vm.pid !== null && await pidAlive(vm.pid));
    const files = s.vms.files(req.vm.id);
    assertEquals(await listDir(files.vmDir), ["disk.qcow2", "seed.iso", "serial.log", "vm.json"]);
    assertEquals(await listDir(files.sockDir), ["qmp.sock", "serial.sock"]);
    const manifest = JSON.parse(await Deno.readTextFile(files.vmJson));
    assertEquals(manifest.user_data, req.vm.user_data);
    assertEquals(manifest.image, "tiny.img");
    assertEquals((await Deno.stat(files.vmDir)).mode! & 0o777, 0o750);
    assertEquals(
      await Deno.readTextFile(`${s.pool}/images/tiny.img.sha256`),
      sha256Hex(s.image) + "\n",
    );
    assertEquals(typeof await s.vms.consoleLog(req.vm.id, 100), "string");
    const qemuLine = s.lines.find((l) => l.includes("qemu: starting (tcg)"));
    assertStringIncludes(qemuLine ?? "", "-machine q35,accel=tcg");

    // Same task id → same task; a new task for the running VM succeeds at once.
    assertEquals(s.tasks.submitCreate(req).status, "succeeded");
    const again = createReq(s.http.base, s.pool, req.vm);
    s.tasks.submitCreate(again);
    const t2 = await s.tasks.wait(again.task_id);
    assertEquals(t2?.status, "succeeded");
    assertEquals(t2?.result?.image_cache_hit, true);
    assertEquals(s.vms.get(req.vm.id)?.pid, vm.pid);
    assertEquals(s.http.hits.get("/images/tiny.img"), 1);

    // Delete.
    const delId = crypto.randomUUID();
    s.tasks.submitDelete(req.vm.id, delId);
    const del = await s.tasks.wait(delId);
    assertEquals(del?.status, "succeeded", JSON.stringify(del?.error));
    assertEquals(await pidAlive(vm.pid!), false);
    assertEquals(await listDir(s.paths.vmsDir), []);
    assertEquals(await listDir(s.paths.vmSocketsDir), []);
    assertEquals(s.vms.list(), []);
    // The image cache survives VM deletion.
    assertEquals(await listDir(`${s.pool}/images`), ["tiny.img", "tiny.img.sha256"]);

    // Deleting an unknown id succeeds (idempotent), removing leftovers.
    const ghost = crypto.randomUUID();
    await Deno.mkdir(`${s.paths.vmsDir}/${ghost}`);
    await Deno.writeTextFile(`${s.paths.vmsDir}/${ghost}/disk.qcow2`, "junk");
    const del2 = crypto.randomUUID();
    s.tasks.submitDelete(ghost, del2);
    assertEquals((await s.tasks.wait(del2))?.status, "succeeded");
    assertEquals(await listDir(s.paths.vmsDir), []);
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

Deno.test("vms: unexpected QEMU death → failed; restart after agent restart reuses the disk", async () => {
  const s = await setup();
  try {
    const req = createReq(s.http.base, s.pool);
    s.tasks.submitCreate(req);
    assertEquals((await s.tasks.wait(req.task_id))?.status, "succeeded");
    const pid = s.vms.get(req.vm.id)!.pid!;
    Deno.kill(pid, "SIGKILL");
    for (let i = 0; i < 50 && s.vms.get(req.vm.id)?.phase === "running"; i++) {
      await new Promise((r) => setTimeout(r, 50));
    }
    assertEquals(s.vms.get(req.vm.id), { id: req.vm.id, name: "tiny", phase: "failed", pid: null });

    // A new agent process: the prepared VM is known as stopped; create starts it again.
    const { log } = memoryLogger();
    const vms2 = new VmManager({
      paths: s.paths,
      qemu: s.t.cfg.qemu,
      accelerator: "tcg",
      hostArch: "amd64",
      images: new ImageCache({ idleTimeoutMs: 5000 }),
      log,
    });
    await vms2.recover();
    assertEquals(vms2.list(), [{ id: req.vm.id, name: "tiny", phase: "stopped", pid: null }]);
    const diskBefore = await Deno.stat(s.vms.files(req.vm.id).disk);
    const res = await vms2.create({ ...req, task_id: crypto.randomUUID() });
    assertEquals(res.phase, "running");
    assertEquals(res.image_cache_hit, true);
    assertEquals((await Deno.stat(s.vms.files(req.vm.id).disk)).birthtime, diskBefore.birthtime);
    const pid2 = vms2.get(req.vm.id)!.pid!;
    assert(await pidAlive(pid2));
    // Agent shutdown stops QEMU cleanly (QMP quit) and keeps the files.
    await vms2.shutdown();
    assertEquals(await pidAlive(pid2), false);
    assertEquals(vms2.get(req.vm.id)?.phase, "stopped");
    assertEquals(await listDir(s.paths.vmsDir), [req.vm.id]);
  } finally {
    await s.done();
  }
});

Deno.test("vms: recovery quits a QEMU left running by a previous agent process", async () => {
  const s = await setup();
  try {
    const req = createReq(s.http.base, s.pool);
    await s.vms.create(req);
    await s.vms.shutdown();
    // A QEMU whose agent crashed: running, nobody holds its QMP session.
    const files = s.vms.files(req.vm.id);
    const orphan = await startQemu({
      binary: "qemu-system-x86_64",
      args: buildQemuArgs({
        name: "tiny",
        architecture: "amd64",
        accelerator: "tcg",
        vcpus: 1,
        memoryMb: 128,
        files,
      }),
      qmpSock: files.qmpSock,
      startTimeoutMs: 30_000,
    });
    orphan.qmp!.close();
    assert(await pidAlive(orphan.pid));
    const { log, lines } = memoryLogger();
    const vms2 = new VmManager({
      paths: s.paths,
      qemu: s.t.cfg.qemu,
      accelerator: "tcg",
      hostArch: "amd64",
      images: new ImageCache({ idleTimeoutMs: 5000 }),
      log,
    });
    await vms2.recover();
    assertEquals((await orphan.status).code, 0);
    assertEquals(await pidAlive(orphan.pid), false);
    assert(lines.some((l) => l.includes("stopped QEMU left running by a previous agent process")));
    assertEquals(vms2.list(), [{ id: req.vm.id, name: "tiny", phase: "stopped", pid: null }]);
    assertEquals(await listDir(s.paths.vmSocketsDir), []);
  } finally {
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
    }
    assertEquals(await Deno.readTextFile(`${t.root}/etc/agent.yaml`), "keep: me\n");
    assertEquals(await listDir(t.root), ["etc", "run", "state"]);
  } finally {
    await t.cleanup();
  }
});
