/**
 * The agent side of pools (agent/pools.ts): the path checks repeated before a directory is
 * made (`path_not_allowed`, symlink escapes by the real path of the deepest existing
 * ancestor), and scans (figures, cached images, the VM disks whose manifest names the pool),
 * on real directories under a temp root.
 */
import { assert, assertEquals, assertRejects, assertStringIncludes } from "../assert.ts";
import { PoolManager, type VmDiskFiles } from "../../agent/pools.ts";
import { ApiError } from "../../shared/errors.ts";
import { memoryLogger } from "./helpers.ts";

async function exists(path: string): Promise<boolean> {
  return await Deno.lstat(path).then(() => true, () => false);
}

/** A pool manager on `<root>/state/pools` (created), and `<root>/outside`. */
async function setup(root: string): Promise<{ pm: PoolManager; poolsDir: string }> {
  const poolsDir = `${root}/state/pools`;
  await Deno.mkdir(poolsDir, { recursive: true });
  await Deno.mkdir(`${root}/outside`);
  const pm = new PoolManager(poolsDir, `${root}/state/desired-pools.json`, memoryLogger().log);
  await pm.load();
  return { pm, poolsDir };
}

async function withRoot(fn: (root: string) => Promise<void>): Promise<void> {
  const root = await Deno.makeTempDir({ prefix: "otx-pscan-" });
  try {
    await fn(root);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
}

Deno.test("agent pools: refused paths report failed with path_not_allowed and create nothing", async (t) => {
  await withRoot(async (root) => {
    const { pm, poolsDir } = await setup(root);
    // A symlink inside the pools directory leading out of it, one level up the path.
    await Deno.symlink(`${root}/outside`, `${poolsDir}/escape`);
    // A symlink that stays inside: not an escape, but no directory is made through it.
    await Deno.mkdir(`${poolsDir}/real`);
    await Deno.symlink(`${poolsDir}/real`, `${poolsDir}/alias`);
    await pm.setDesired([
      { name: "escape", path: `${poolsDir}/escape/deep/pool` },
      { name: "dotdot", path: `${poolsDir}/a/../b` },
      { name: "outside", path: `${root}/outside/p` },
      { name: "alias", path: `${poolsDir}/alias/p` },
      { name: "ok", path: `${poolsDir}/ok` },
    ]);
    const by = Object.fromEntries((await pm.observe()).map((o) => [o.name, o]));

    await t.step("a symlinked ancestor leading out: path_not_allowed, nothing made", () => {
      assertEquals(by.escape.status, "failed");
      assertStringIncludes(by.escape.message!, "path_not_allowed: ");
      assertStringIncludes(by.escape.message!, `${poolsDir}/escape is a symlink`);
      assertEquals([...Deno.readDirSync(`${root}/outside`)], []);
    });

    await t.step("'..' segments and paths outside the pools directory", () => {
      assertEquals(by.dotdot.status, "failed");
      assertStringIncludes(by.dotdot.message!, "path_not_allowed: ");
      assertStringIncludes(by.dotdot.message!, "not normalized");
      assertEquals(by.outside.status, "failed");
      assertStringIncludes(by.outside.message!, "not under the agent's pools directory");
    });

    await t.step("an inner symlink is no escape, but no directory is made through it", async () => {
      assertEquals(by.alias.status, "failed");
      assert(!by.alias.message!.startsWith("path_not_allowed"), by.alias.message!);
      assertStringIncludes(by.alias.message!, "is a symlink");
      assertEquals(await exists(`${poolsDir}/real/p`), false);
    });

    await t.step("a valid path is made and ready", () => {
      assertEquals(by.ok.status, "ready");
      assert(Deno.statSync(`${poolsDir}/ok/images`).isDirectory);
    });

    await t.step("scans refuse them with the matching code", async () => {
      const code = async (name: string, path: string) => {
        const e = await assertRejects(() => pm.scan({ name, path }, []));
        return (e as ApiError).code;
      };
      assertEquals(await code("escape", `${poolsDir}/escape/deep/pool`), "path_not_allowed");
      assertEquals(await code("dotdot", `${poolsDir}/a/../b`), "path_not_allowed");
      assertEquals(await code("alias", `${poolsDir}/alias/p`), "pool_scan_failed");
      // Not desired (or desired at another path): this node does not provide it.
      assertEquals(await code("nope", `${poolsDir}/nope`), "pool_not_found");
      assertEquals(await code("ok", `${poolsDir}/ok2`), "pool_not_found");
      assertEquals(await exists(`${poolsDir}/nope`), false);
    });
  });
});

Deno.test("agent pools: a scan reports figures, cached images and the disks of the pool's VMs", async () => {
  await withRoot(async (root) => {
    const { pm, poolsDir } = await setup(root);
    const fast = { name: "fast", path: `${poolsDir}/fast` };
    const slow = { name: "slow", path: `${poolsDir}/slow` };
    await pm.setDesired([fast, slow]);
    await pm.observe();
    // Two complete cache entries and one without its sidecar (not an entry).
    const images = `${fast.path}/images`;
    await Deno.writeFile(`${images}/a.img`, new Uint8Array(3000));
    await Deno.writeTextFile(`${images}/a.img.sha256`, "a".repeat(64) + "\n");
    await Deno.writeFile(`${images}/b.img`, new Uint8Array(5000));
    await Deno.writeTextFile(`${images}/b.img.sha256`, "b".repeat(64) + "\n");
    await Deno.writeFile(`${images}/partial.img`, new Uint8Array(100));

    // VMs: two in fast (one with its pool path written with a trailing slash), one in slow,
    // one still being created (no manifest), one whose disk is gone.
    const vms: VmDiskFiles[] = [];
    for (
      const [i, pool, disk, manifest] of [
        [1, fast.path, 1 << 20, true],
        [2, `${fast.path}/`, 2 << 20, true],
        [3, slow.path, 1 << 20, true],
        [4, fast.path, 1 << 20, false],
        [5, fast.path, 0, true],
      ] as const
    ) {
      const id = `00000000-0000-4000-8000-00000000000${i}`;
      const dir = `${root}/state/vms/${id}`;
      await Deno.mkdir(dir, { recursive: true });
      if (disk > 0) await Deno.writeFile(`${dir}/disk.qcow2`, new Uint8Array(disk).fill(1));
      if (manifest) {
        await Deno.writeTextFile(
          `${dir}/vm.json`,
          JSON.stringify({ id, pool: { name: "x", path: pool } }),
        );
      }
      vms.push({ id, vmJson: `${dir}/vm.json`, disk: `${dir}/disk.qcow2` });
    }

    const scan = await pm.scan(fast, vms);
    assertEquals([scan.name, scan.path], ["fast", fast.path]);
    assert(scan.total_bytes > 0 && scan.available_bytes > 0);
    assertEquals([scan.image_count, scan.image_bytes], [2, 8000]);
    assertEquals(scan.vm_disks.map((d) => d.vm_id), [vms[0].id, vms[1].id]);
    // Allocated bytes: the files are fully written, so at least their size.
    assert(scan.vm_disks[0].bytes >= 1 << 20 && scan.vm_disks[1].bytes >= 2 << 20);

    const other = await pm.scan(slow, vms);
    assertEquals(other.vm_disks.map((d) => d.vm_id), [vms[2].id]);
    assertEquals([other.image_count, other.image_bytes], [0, 0]);

    // A pool the control plane no longer lists is no longer scanned; its files stay.
    await pm.setDesired([slow]);
    const e = await assertRejects(() => pm.scan(fast, vms));
    assertEquals((e as ApiError).code, "pool_not_found");
    assert(await exists(`${images}/a.img`));
  });
});
