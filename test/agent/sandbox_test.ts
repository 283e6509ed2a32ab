import { assert, assertEquals, assertMatch } from "../assert.ts";
import { waitGone } from "./helpers.ts";
import { permissionFlags } from "../../scripts/permissions.ts";
import { statfsSync } from "node:fs";

Deno.test("sandbox: the agent's exact permission flags confine it to its roots", async () => {
  const base = await Deno.makeTempDir({ prefix: "otx-sandbox-" });
  try {
    const roots = { config: `${base}/etc`, state: `${base}/state`, run: `${base}/run` };
    for (const d of Object.values(roots)) await Deno.mkdir(d);
    const outside = `${base}/outside.txt`;
    await Deno.writeTextFile(outside, "secret");
    const probe = new URL("./sandbox_probe.ts", import.meta.url).pathname;
    const out = await new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        ...permissionFlags("otherix-agent", roots),
        probe,
        roots.state,
        roots.config,
        outside,
      ],
      env: { OTHERIX_PROBE: "yes" },
      stdout: "piped",
      stderr: "piped",
    }).output();
    const stderr = new TextDecoder().decode(out.stderr);
    assertEquals(out.code, 0, stderr);
    const r: Record<string, string> = JSON.parse(new TextDecoder().decode(out.stdout));
    const denied = /^NotCapable: /;
    // Refused.
    assertMatch(r["read /etc/passwd"], denied);
    assertMatch(r["read outside file"], denied);
    assertMatch(r["spawn /bin/sh"], denied);
    assertMatch(r["spawn sh"], denied);
    assertMatch(r["env HOME"], denied);
    assertMatch(r["write config"], denied);
    assertMatch(r["Deno.kill"], denied);
    assertMatch(r["spawn kill"], denied);
    // Allowed.
    assertEquals(r["env OTHERIX_PROBE"], "ok");
    assertEquals(r["write+read state"], "ok");
    assertEquals(r["read config"], "ok");
    assertEquals(r["spawn qemu-img --version"], "ok");
    assertEquals(r["sys figures"], "ok");
    assertEquals(r["statfs state"], "ok");
    assertEquals(r["pool free space"], "ok");
    assertEquals(r["trim serial log"], "ok");
    // QEMU outlives the agent: launched as a daemon, found and force-stopped only through its
    // locked pidfile with pgrep / pkill (the only other tools the agent may run).
    assertEquals(r["daemonized qemu: launch, find by pidfile, pkill"], "ok");
    const qemuPid = Number(r["daemonized qemu pid"]);
    assert(qemuPid > 0);
    await waitGone(qemuPid, 5000);
    // Deno grants /sys and /dev only with --allow-all, which the agent never has: accelerator
    // detection goes through qemu-img / a QEMU smoke test. statfs("/") needs read access to
    // all of `/`: the root filesystem's figures come from `df` instead, and are statfs("/")'s.
    assertMatch(r["stat /sys/module"], denied);
    assertMatch(r["open /dev/kvm rw"], denied);
    assertMatch(r["statfs /"], denied);
    const disk = JSON.parse(r["system disk"]);
    const root = statfsSync("/");
    assertEquals(disk.total_bytes, root.blocks * root.bsize, "the size of /, not of the state dir");
    assert(
      Math.abs(disk.available_bytes - root.bavail * root.bsize) < 256 * 1024 ** 2,
      `free bytes of / (${disk.available_bytes} vs ${root.bavail * root.bsize})`,
    );
    assertEquals(r["accelerator detection"], "ok");
    const exists = (p: string) => Deno.stat(p).then(() => true, () => false);
    if (!(await exists("/dev/kvm"))) {
      assertEquals(r["accelerator"], "accelerator: tcg (kvm unusable: /dev/kvm does not exist)");
    } else if (await exists("/sys/module/kvm_pvm")) {
      assertEquals(
        r["accelerator"],
        "accelerator: tcg (kvm unusable: /dev/kvm is PVM-only nested KVM (/sys/module/kvm_pvm))",
      );
    }
  } finally {
    await Deno.remove(base, { recursive: true });
  }
});
