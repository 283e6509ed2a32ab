/**
 * The systemd units (deploy/systemd/): they verify with `systemd-analyze verify` (no warning,
 * with their binaries in place), say what the issue asks (journald, restart on failure, VMs
 * survive an agent restart, descriptor limits), keep the hardening that does not break QEMU,
 * /dev/kvm and networking, and agree with the binaries' sandbox roots.
 *
 * @module
 */
import { join } from "node:path";
import { assert, assertEquals, assertStringIncludes } from "../assert.ts";
import { parseApiConfig } from "../../cp/config.ts";
import { REPO_ROOT } from "../../scripts/permissions.ts";
import { STANDARD_ROOTS } from "../../shared/constants.ts";
import { tempRoot } from "../harness.ts";
import { fakeBinaries, install, parseUnit, sh } from "./helpers.ts";

const UNITS = ["otherix-api.service", "otherix-agent.service"];

/** A staged install with the host's systemd units (targets) beside it, for `--root`. */
async function stagedRoot(): Promise<string> {
  const root = await tempRoot("otx-units");
  await fakeBinaries(join(root, "build"));
  const r = await install(["--destdir", join(root, "d"), "--bin-dir", join(root, "build")]);
  if (r.code !== 0) throw new Error(`install.sh: ${r.stderr}`);
  // sysinit.target, network-online.target, … are looked up under the root.
  await Deno.mkdir(join(root, "d/usr/lib/systemd"), { recursive: true });
  const cp = await sh(["cp", "-a", "/usr/lib/systemd/system", join(root, "d/usr/lib/systemd/")]);
  if (cp.code !== 0) throw new Error(cp.stderr);
  return root;
}

async function verify(root: string, files: string[]) {
  return await sh(["systemd-analyze", "verify", `--root=${root}`, ...files]);
}

Deno.test("systemd units: systemd-analyze verify, with the binaries installed", async (t) => {
  const root = await stagedRoot();
  const d = join(root, "d");
  const units = UNITS.map((u) => join(d, "etc/systemd/system", u));
  try {
    await t.step("both verify without a single warning", async () => {
      const r = await verify(d, units);
      assertEquals([r.code, r.stderr], [0, ""]);
    });

    await t.step(
      "the check can fail: a misspelt key and a missing binary are reported",
      async () => {
        const bad = join(d, "etc/systemd/system/otherix-typo.service");
        const text = await Deno.readTextFile(units[1]);
        await Deno.writeTextFile(bad, text.replace("KillMode=process", "KilMode=process"));
        const r = await verify(d, [bad]);
        assertStringIncludes(r.stderr, "Unknown key 'KilMode'");
        await Deno.remove(join(d, "usr/local/bin/otherix-agent"));
        const r2 = await verify(d, [units[1]]);
        assertStringIncludes(r2.stderr, "/usr/local/bin/otherix-agent is not executable");
      },
    );

    await t.step(
      "exposure: the control plane ≤ 2.0 (OK), the agent ≤ 5.5 (MEDIUM)",
      async () => {
        for (const [unit, max] of [[units[0], "2.0"], [units[1], "5.5"]]) {
          const r = await sh([
            "systemd-analyze",
            "security",
            "--offline=true",
            `--root=${d}`,
            `--threshold=${Number(max) * 10}`,
            unit,
          ]);
          assertEquals(r.code, 0, `${unit}: ${r.stdout.split("\n").slice(-3).join("\n")}`);
        }
      },
    );
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("systemd units: what the service needs", async (t) => {
  const api = parseUnit(await Deno.readTextFile(join(REPO_ROOT, "deploy/systemd", UNITS[0])));
  const agent = parseUnit(await Deno.readTextFile(join(REPO_ROOT, "deploy/systemd", UNITS[1])));
  const svc = (u: typeof api) => u.get("Service")!;
  const one = (u: typeof api, k: string) => {
    const v = svc(u).get(k);
    assert(v && v.length === 1, `${k}: ${v}`);
    return v[0];
  };

  await t.step("both: journald logs, restart on failure, started in multi-user.target", () => {
    for (const u of [api, agent]) {
      assertEquals(one(u, "StandardOutput"), "journal");
      assertEquals(one(u, "StandardError"), "journal");
      assertEquals(one(u, "Restart"), "on-failure");
      assertEquals(u.get("Install")!.get("WantedBy"), ["multi-user.target"]);
      assertEquals(u.get("Unit")!.get("After"), ["network-online.target"]);
      assertEquals(one(u, "NoNewPrivileges"), "yes");
    }
  });

  await t.step("the agent: VMs survive its restarts", () => {
    // Only the agent process is signalled; QEMU keeps running in the unit's cgroup ...
    assertEquals(one(agent, "KillMode"), "process");
    // ... with its sockets and pidfiles, which live in the run directory.
    assertEquals(one(agent, "RuntimeDirectory"), "otherix");
    assertEquals(one(agent, "RuntimeDirectoryPreserve"), "yes");
    assertEquals(one(agent, "TasksMax"), "infinity");
  });

  await t.step("the agent: hardening that keeps QEMU, /dev/kvm and networking", () => {
    const caps = svc(agent).get("CapabilityBoundingSet")!.join(" ").split(/\s+/);
    for (
      const c of [
        "CAP_NET_ADMIN",
        "CAP_NET_RAW",
        "CAP_NET_BIND_SERVICE",
        "CAP_SETUID",
        "CAP_SETGID",
      ]
    ) assert(caps.includes(c), `needs ${c}`);
    assertEquals(one(agent, "DevicePolicy"), "closed");
    const devices = svc(agent).get("DeviceAllow")!;
    for (const d of ["/dev/kvm rw", "/dev/net/tun rw", "/dev/vhost-net rw"]) {
      assert(devices.includes(d), `DeviceAllow=${d}`);
    }
    // Things that would break it are absent.
    for (const k of ["PrivateNetwork", "MemoryDenyWriteExecute", "PrivateDevices", "User"]) {
      assertEquals(svc(agent).get(k), undefined, `${k} must not be set`);
    }
    assertEquals(svc(agent).get("ProtectKernelTunables"), undefined, "ip_forward is written");
    assert(
      one(agent, "RestrictAddressFamilies").split(" ").includes("AF_NETLINK"),
      "ip/bridge talk netlink",
    );
  });

  await t.step("the control plane: unprivileged, thousands of connections", () => {
    assertEquals(one(api, "User"), "otherix");
    assertEquals(one(api, "CapabilityBoundingSet"), "");
    assertEquals(one(api, "ProtectSystem"), "strict");
    assert(Number(one(api, "LimitNOFILE")) >= 65536);
    assertEquals(one(api, "StateDirectoryMode"), "0700");
    assertEquals(svc(api).get("MemoryDenyWriteExecute"), undefined, "V8's JIT needs W+X");
  });

  await t.step("the paths agree with the binaries' sandbox roots and defaults", () => {
    assertEquals(
      one(agent, "ExecStart"),
      `/usr/local/bin/otherix-agent --config ${STANDARD_ROOTS.config}/agent.yaml`,
    );
    assertEquals(
      one(api, "ExecStart"),
      `/usr/local/bin/otherix-api --config ${STANDARD_ROOTS.config}/api.yaml`,
    );
    assertEquals(`/run/${one(agent, "RuntimeDirectory")}`, STANDARD_ROOTS.run);
    assertEquals(`/var/lib/${one(agent, "StateDirectory")}`, STANDARD_ROOTS.state);
    assertEquals(`/var/lib/${one(api, "StateDirectory")}`, parseApiConfig("").store.data_dir);
  });
});
