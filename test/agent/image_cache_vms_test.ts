/**
 * The image cache behind real VM creates (VmManager + TaskManager, QEMU under TCG on blank
 * disks, images made by `qemu-img` and served by loopback HTTP servers):
 * - issue 7's cross-user case: two servers publish different `img.qcow2`; each VM's overlay
 *   is backed by its own server's bytes (read back with `qemu-img info --backing-chain`);
 * - new content at a URL gets a new file while a running VM's backing file stays as it was;
 * - qcow2 and raw images, with `image_format` detected and reported;
 * - byte progress (`progress_bytes`) in the agent task during a download, throttled, and
 *   cleared afterwards.
 */
import { assert, assertEquals } from "../assert.ts";
import type { AgentTask, AgentVmCreateRequest } from "../../shared/api/agent.ts";
import { agentPaths } from "../../agent/config.ts";
import { ImageCache } from "../../agent/images.ts";
import { TaskManager } from "../../agent/tasks.ts";
import { VmManager } from "../../agent/vms.ts";
import { PROGRESS_MIN_INTERVAL_MS, PROGRESS_STEP_PERCENT } from "../../shared/progress_throttle.ts";
import { killQemus, memoryLogger, serveFiles, sha256Hex, tempRoot, waitUntil } from "./helpers.ts";

/** Bytes of a blank image made by `qemu-img create -f <format> <size>`. */
async function blankImage(format: "qcow2" | "raw", size: string): Promise<Uint8Array<ArrayBuffer>> {
  const dir = await Deno.makeTempDir();
  try {
    const out = await new Deno.Command("qemu-img", {
      args: ["create", "-f", format, `${dir}/img`, size],
      stdout: "null",
    }).output();
    if (!out.success) throw new Error("qemu-img create failed");
    return await Deno.readFile(`${dir}/img`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** `qemu-img info --backing-chain --output=json` of a VM disk: [overlay, backing, …]. */
async function backingChain(disk: string): Promise<Record<string, unknown>[]> {
  const out = await new Deno.Command("qemu-img", {
    args: ["info", "--backing-chain", "--output=json", "--force-share", disk],
    stdout: "piped",
  }).output();
  assert(out.success, "qemu-img info failed");
  return JSON.parse(new TextDecoder().decode(out.stdout));
}

async function setup() {
  const t = await tempRoot("qemu:\n  accelerator: tcg\n");
  const paths = agentPaths(t.cfg);
  const { log } = memoryLogger();
  const vms = new VmManager({
    paths,
    qemu: t.cfg.qemu,
    accelerator: "tcg",
    hostArch: "amd64",
    images: new ImageCache({ idleTimeoutMs: 10_000 }),
    log,
    stopGraceMs: 3000,
  });
  await vms.recover();
  const tasks = new TaskManager(vms, log);
  const pool = `${paths.poolsDir}/default`;
  return {
    vms,
    tasks,
    pool,
    /** Creates a VM from `imageUrl` and returns its succeeded task. */
    async create(name: string, imageUrl: string, sha?: string): Promise<AgentTask> {
      const req: AgentVmCreateRequest = {
        task_id: crypto.randomUUID(),
        vm: {
          id: crypto.randomUUID(),
          name,
          image_url: imageUrl,
          ...(sha ? { image_sha256: sha } : {}),
          architecture: "amd64",
          vcpus: 1,
          memory_mb: 64,
          disk_gib: 1,
        },
        pool: { name: "default", path: pool },
      };
      tasks.submitCreate(req);
      const done = (await tasks.wait(req.task_id))!;
      assertEquals(done.status, "succeeded", JSON.stringify(done.error));
      return done;
    },
    /** Deletes a VM (its QEMU stops: two blank-disk VMs at most run at once here). */
    async remove(task: AgentTask): Promise<void> {
      const id = crypto.randomUUID();
      tasks.submitDelete(task.vm_id, id);
      assertEquals((await tasks.wait(id))?.status, "succeeded");
    },
    /** The file a VM's disk is backed by, and that file's SHA-256. */
    async backing(task: AgentTask): Promise<{ path: string; format: string; sha: string }> {
      const chain = await backingChain(vms.files(task.vm_id).disk);
      assertEquals(chain.length, 2, JSON.stringify(chain));
      const path = String(chain[0]["full-backing-filename"]);
      return {
        path,
        format: String(chain[0]["backing-filename-format"]),
        sha: sha256Hex(await Deno.readFile(path)),
      };
    },
    /**
     * Ends the scenario whatever state a failed step left: lets every task settle, deletes
     * the VMs still there through the agent (QEMU stopped, files removed), then closes the
     * manager and removes the temp root. Nothing writes under the root after that.
     */
    async done() {
      for (const task of tasks.recent()) await tasks.wait(task.id);
      for (const vm of vms.list()) await vms.delete(vm.id).catch(() => {});
      await vms.close();
      await killQemus(paths.runDir);
      await t.cleanup();
    },
  };
}

Deno.test("image cache × VMs: two users' img.qcow2, new content, qcow2 and raw", async (t) => {
  const s = await setup();
  const bytesA = await blankImage("qcow2", "1M");
  const bytesB = await blankImage("qcow2", "2M");
  const bytesA2 = await blankImage("qcow2", "3M");
  const raw = await blankImage("raw", "1M");
  assert(sha256Hex(bytesA) !== sha256Hex(bytesB));
  const filesA = new Map([["/img.qcow2", bytesA]]);
  const userA = serveFiles(filesA);
  const userB = serveFiles(new Map([["/img.qcow2", bytesB], ["/disk.raw", raw]]));
  try {
    let vmA!: AgentTask;
    await t.step("user A's VM is backed by A's bytes", async () => {
      vmA = await s.create("vm-a", `${userA.base}/img.qcow2`);
      assertEquals(vmA.result?.image, "img.qcow2");
      assertEquals(vmA.result?.image_format, "qcow2");
      assertEquals(await s.backing(vmA), {
        path: `${s.pool}/images/img.qcow2`,
        format: "qcow2",
        sha: sha256Hex(bytesA),
      });
    });

    await t.step("user B's VM from another server's img.qcow2 gets B's bytes", async () => {
      const vmB = await s.create("vm-b", `${userB.base}/img.qcow2`);
      const name = `img-${sha256Hex(bytesB).slice(0, 12)}.qcow2`;
      assertEquals([vmB.result?.image, vmB.result?.image_cache_hit], [name, false]);
      assertEquals(userB.hits.get("/img.qcow2"), 1);
      assertEquals(await s.backing(vmB), {
        path: `${s.pool}/images/${name}`,
        format: "qcow2",
        sha: sha256Hex(bytesB),
      });
      assertEquals((await s.backing(vmA)).sha, sha256Hex(bytesA));
      await s.remove(vmB);
    });

    await t.step("A republishes new bytes: a new file; A's running VM reads the old", async () => {
      const before = await Deno.stat(`${s.pool}/images/img.qcow2`);
      filesA.set("/img.qcow2", bytesA2);
      const vmC = await s.create("vm-c", `${userA.base}/img.qcow2`, sha256Hex(bytesA2));
      const name = `img-${sha256Hex(bytesA2).slice(0, 12)}.qcow2`;
      assertEquals(vmC.result?.image, name);
      assertEquals((await s.backing(vmC)).sha, sha256Hex(bytesA2));
      assertEquals(await s.backing(vmA), {
        path: `${s.pool}/images/img.qcow2`,
        format: "qcow2",
        sha: sha256Hex(bytesA),
      });
      assertEquals((await Deno.stat(`${s.pool}/images/img.qcow2`)).ino, before.ino);
      assertEquals(s.vms.get(vmA.vm_id)?.phase, "running");
      await s.remove(vmC);
      await s.remove(vmA);
    });

    await t.step("a raw image: detected, reported, backing format raw", async () => {
      const vmD = await s.create("vm-d", `${userB.base}/disk.raw`, sha256Hex(raw));
      assertEquals([vmD.result?.image, vmD.result?.image_format], ["disk.raw", "raw"]);
      assertEquals(await s.backing(vmD), {
        path: `${s.pool}/images/disk.raw`,
        format: "raw",
        sha: sha256Hex(raw),
      });
      await s.remove(vmD);
    });
  } finally {
    await userA.server.shutdown();
    await userB.server.shutdown();
    await s.done();
  }
});

Deno.test("image cache × VMs: byte progress in the agent task while downloading", async () => {
  const s = await setup();
  const image = await blankImage("raw", "8M");
  const half = 4 * 1024 * 1024;
  let release!: () => void;
  const released = new Promise<void>((r) => (release = r));
  // Sends the first half in 64 KiB chunks, then waits for the test, then the rest.
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, () => {
    const body = new ReadableStream<Uint8Array>({
      async start(c) {
        for (let off = 0; off < image.length; off += 65536) {
          if (off === half) await released;
          c.enqueue(image.slice(off, off + 65536));
        }
        c.close();
      },
    });
    return new Response(body, { headers: { "content-length": String(image.length) } });
  });
  const updates: (AgentTask["progress_bytes"])[] = [];
  const off = s.tasks.subscribe((task) => {
    if (task.progress_bytes) updates.push(task.progress_bytes);
  });
  try {
    const t0 = performance.now();
    const req: AgentVmCreateRequest = {
      task_id: crypto.randomUUID(),
      vm: {
        id: crypto.randomUUID(),
        name: "vm-p",
        image_url: `http://127.0.0.1:${server.addr.port}/big.raw`,
        architecture: "amd64",
        vcpus: 1,
        memory_mb: 64,
        disk_gib: 1,
      },
      pool: { name: "default", path: s.pool },
    };
    s.tasks.submitCreate(req);
    // The first half arrived: its figures are published (a 5 % step boundary at 50 %).
    await waitUntil(
      () => s.tasks.get(req.task_id)?.progress_bytes?.done_bytes === half,
      10_000,
      "progress at half",
    );
    const mid = s.tasks.get(req.task_id)!;
    assertEquals(mid.progress_bytes, { done_bytes: half, total_bytes: image.length });
    assertEquals(mid.progress, "downloading image (4.0 MiB of 8.0 MiB)");
    release();
    const done = (await s.tasks.wait(req.task_id))!;
    const elapsedS = (performance.now() - t0) / 1000;
    assertEquals(done.status, "succeeded", JSON.stringify(done.error));
    assertEquals(done.progress_bytes, null);
    assertEquals(updates.at(-1), { done_bytes: image.length, total_bytes: image.length });
    // 128 chunks arrived; the throttle lets through at most the first, the last, one per
    // 5 % step and ~4 a second.
    const bound = 2 + 100 / PROGRESS_STEP_PERCENT +
      Math.ceil((elapsedS * 1000) / PROGRESS_MIN_INTERVAL_MS);
    assert(updates.length <= bound, `${updates.length} updates > ${bound}`);
    assert(updates.length < 128, `${updates.length} updates for 128 chunks`);
    await s.remove(done);
  } finally {
    off();
    release();
    await server.shutdown();
    await s.done();
  }
});
