import { assert, assertEquals, assertStringIncludes } from "../assert.ts";
import { PoolManager } from "../../agent/pools.ts";
import { isWithin } from "../../agent/fsutil.ts";
import { memoryLogger } from "./helpers.ts";

Deno.test("pools: isWithin is boundary-safe", () => {
  assert(isWithin("/var/lib/otherix/pools", "/var/lib/otherix/pools/default"));
  assert(isWithin("/var/lib/otherix/pools/", "/var/lib/otherix/pools/a/b"));
  assert(!isWithin("/var/lib/otherix/pools", "/var/lib/otherix/pools-evil/x"));
  assert(!isWithin("/var/lib/otherix/pools", "/var/lib/otherix/pools"));
  assert(isWithin("/var/lib/otherix/pools", "/var/lib/otherix/pools", true));
  assert(!isWithin("/var/lib/otherix/pools", "/var/lib/otherix/pools/../etc"));
  assert(!isWithin("/var/lib/otherix/pools", "/var/lib/otherix/pools/a/../../x"));
});

Deno.test("pools: reconcile creates dirs, reports ready/failed, persists the desired set", async () => {
  const root = await Deno.makeTempDir({ prefix: "otx-pools-" });
  try {
    const poolsDir = `${root}/state/pools`;
    const stateFile = `${root}/state/desired-pools.json`;
    await Deno.mkdir(`${root}/state`);
    await Deno.mkdir(`${root}/outside`);
    const { log } = memoryLogger();
    const pm = new PoolManager(poolsDir, stateFile, log);
    await pm.load();
    assertEquals(await pm.observe(), []);
    await Deno.mkdir(poolsDir);
    await Deno.symlink(`${root}/outside`, `${poolsDir}/sneaky`);
    const changed = await pm.setDesired([
      { name: "default", path: `${poolsDir}/default` },
      { name: "evil", path: `${root}/state/pools-evil` },
      { name: "sneaky", path: `${poolsDir}/sneaky` },
      { name: "rel", path: "pools/x" },
    ]);
    assert(changed);
    assertEquals(
      await pm.setDesired([...pm.desired()].reverse()),
      false,
      "same set in another order is no change",
    );
    const obs = await pm.observe();
    const by = Object.fromEntries(obs.map((o) => [o.name, o]));
    assertEquals(by.default.status, "ready");
    assertEquals(by.default.message, null);
    assert(by.default.total_bytes > 0 && by.default.available_bytes > 0);
    assertEquals(by.default.images, []);
    assertEquals((await Deno.stat(`${poolsDir}/default`)).mode! & 0o777, 0o750);
    assert((await Deno.stat(`${poolsDir}/default/images`)).isDirectory);
    assertEquals(by.evil.status, "failed");
    assertStringIncludes(by.evil.message!, "not under the agent's pools directory");
    assertEquals(by.sneaky.status, "failed");
    assertStringIncludes(by.sneaky.message!, "is a symlink");
    assertEquals(await Deno.stat(`${root}/outside/images`).then(() => true, () => false), false);
    assertEquals(by.rel.status, "failed");
    assertEquals(await Deno.stat(`${root}/state/pools-evil`).then(() => true, () => false), false);

    // Cached images show up.
    await Deno.writeTextFile(`${poolsDir}/default/images/a.img`, "abc");
    await Deno.writeTextFile(`${poolsDir}/default/images/a.img.sha256`, "a".repeat(64) + "\n");
    await Deno.writeTextFile(`${poolsDir}/default/images/.a.img.1234.part`, "partial");
    await Deno.writeTextFile(`${poolsDir}/default/images/nosidecar.img`, "x");
    const again = (await pm.observe()).find((o) => o.name === "default")!;
    assertEquals(again.images, [{ basename: "a.img", sha256: "a".repeat(64), size_bytes: 3 }]);

    // Startup cleanup removes interrupted downloads only, and never through a symlink
    // (the "sneaky" pool links to a directory outside the pools directory).
    await Deno.mkdir(`${root}/outside/images`);
    await Deno.writeTextFile(`${root}/outside/images/.victim.tmp`, "not ours");
    await pm.cleanTemp();
    assertEquals(await Deno.readTextFile(`${root}/outside/images/.victim.tmp`), "not ours");
    assertEquals(
      (await Array.fromAsync(Deno.readDir(`${poolsDir}/default/images`))).map((e) => e.name)
        .sort(),
      ["a.img", "a.img.sha256", "nosidecar.img"],
    );

    // A new manager (agent restart) starts from the persisted set.
    const pm2 = new PoolManager(poolsDir, stateFile, log);
    await pm2.load();
    assertEquals(pm2.desired().map((p) => p.name), ["default", "evil", "sneaky", "rel"]);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});
