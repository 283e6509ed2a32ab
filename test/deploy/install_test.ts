/**
 * scripts/install.sh staged into a temporary DESTDIR: the binaries, units, example configs and
 * directories with their modes; a second run changes nothing and keeps edited configs; another
 * prefix rewrites the units; missing binaries and a non-root real install are refused before
 * anything is written.
 *
 * @module
 */
import { join } from "node:path";
import { assert, assertEquals, assertMatch, assertStringIncludes } from "../assert.ts";
import { REPO_ROOT } from "../../scripts/permissions.ts";
import { tempRoot } from "../harness.ts";
import { fakeBinaries, install, parseUnit, sh, tree } from "./helpers.ts";

Deno.test("install.sh: lays out a host, idempotently", async (t) => {
  const root = await tempRoot("otx-inst");
  const bin = join(root, "build");
  const d = join(root, "dest");
  await fakeBinaries(bin);
  try {
    let first: string[] = [];
    await t.step("what it installs, with which modes", async () => {
      const r = await install(["--destdir", d, "--bin-dir", bin]);
      assertEquals(r.code, 0, r.stderr);
      first = await tree(d);
      const modes = first.map((l) => l.split(" ").slice(0, 2).join(" "));
      assertEquals(modes, [
        "0755 /etc/",
        "0755 /etc/otherix/",
        "0644 /etc/otherix/agent.yaml",
        "0640 /etc/otherix/api.yaml",
        "0755 /etc/systemd/",
        "0755 /etc/systemd/system/",
        "0644 /etc/systemd/system/otherix-agent.service",
        "0644 /etc/systemd/system/otherix-api.service",
        "0755 /usr/",
        "0755 /usr/local/",
        "0755 /usr/local/bin/",
        "0755 /usr/local/bin/otherix",
        "0755 /usr/local/bin/otherix-agent",
        "0755 /usr/local/bin/otherix-api",
        "0755 /usr/local/share/",
        "0755 /usr/local/share/doc/",
        "0755 /usr/local/share/doc/otherix/",
        "0644 /usr/local/share/doc/otherix/README.md",
        "0755 /usr/local/share/doc/otherix/examples/",
        "0644 /usr/local/share/doc/otherix/examples/agent.example.yaml",
        "0644 /usr/local/share/doc/otherix/examples/api.example.yaml",
        "0755 /var/",
        "0755 /var/lib/",
        "0755 /var/lib/otherix/",
        "0700 /var/lib/otherix/api/",
        "0750 /var/lib/otherix/pools/",
      ]);
      assertEquals(
        await Deno.readTextFile(join(d, "etc/otherix/api.yaml")),
        await Deno.readTextFile(join(REPO_ROOT, "deploy/config/api.example.yaml")),
      );
      assertEquals(
        await Deno.readTextFile(join(d, "etc/systemd/system/otherix-agent.service")),
        await Deno.readTextFile(join(REPO_ROOT, "deploy/systemd/otherix-agent.service")),
      );
      const out = await sh([join(d, "usr/local/bin/otherix-api")]);
      assertEquals(out.stdout, "otherix-api\n", "the binary itself");
      assertStringIncludes(r.stdout, ">> install: done (staged under");
    });

    await t.step("a second run: the same tree; edited configs are kept", async () => {
      const r = await install(["--destdir", d, "--bin-dir", bin]);
      assertEquals(r.code, 0, r.stderr);
      assertEquals(await tree(d), first);
      await Deno.writeTextFile(join(d, "etc/otherix/api.yaml"), "log:\n  level: debug\n");
      const r2 = await install(["--destdir", d, "--bin-dir", bin]);
      assertEquals(r2.code, 0, r2.stderr);
      assertEquals(
        await Deno.readTextFile(join(d, "etc/otherix/api.yaml")),
        "log:\n  level: debug\n",
      );
      assertEquals(
        (await Deno.stat(join(d, "etc/otherix/api.yaml"))).mode! & 0o777,
        0o640,
      );
    });

    await t.step("another prefix: binaries there, units point there", async () => {
      const d2 = join(root, "dest2");
      const r = await install(["--destdir", d2, "--bin-dir", bin, "--prefix", "/opt/otherix"]);
      assertEquals(r.code, 0, r.stderr);
      assert((await Deno.stat(join(d2, "opt/otherix/bin/otherix-agent"))).isFile);
      for (const u of ["otherix-api", "otherix-agent"]) {
        const unit = parseUnit(
          await Deno.readTextFile(join(d2, `etc/systemd/system/${u}.service`)),
        );
        const exec = unit.get("Service")!.get("ExecStart")![0];
        assert(exec.startsWith(`/opt/otherix/bin/${u} `), exec);
        assertEquals(
          unit.get("Unit")!.get("Documentation"),
          ["file:///opt/otherix/share/doc/otherix/README.md"],
        );
      }
    });
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("install.sh: a real install as root creates the user and gives it the data dir", async () => {
  // In a private mount namespace over copies of /etc, /usr/local and /var/lib/otherix, so this
  // host is untouched; systemd does not run here, so no systemctl call is made.
  const root = await tempRoot("otx-inst");
  const bin = join(root, "build");
  await fakeBinaries(bin);
  const out = join(root, "out");
  await Deno.mkdir(out);
  try {
    const script = [
      "set -e",
      `cp -a /etc ${root}/etc && mount --bind ${root}/etc /etc`,
      "mount -t tmpfs tmpfs /usr/local",
      "mkdir -p /var/lib/otherix && mount -t tmpfs tmpfs /var/lib/otherix",
      `bash ${join(REPO_ROOT, "scripts/install.sh")} --bin-dir ${bin} >${out}/log 2>&1`,
      `bash ${join(REPO_ROOT, "scripts/install.sh")} --bin-dir ${bin} >>${out}/log 2>&1`,
      `getent passwd otherix >${out}/passwd`,
      `stat -c '%a %U:%G %n' /var/lib/otherix /var/lib/otherix/api /var/lib/otherix/pools ` +
      `/etc/otherix/api.yaml /etc/otherix/agent.yaml /usr/local/bin/otherix-api >${out}/stat`,
    ].join("\n");
    const r = await sh(["unshare", "--mount", "--propagation", "private", "bash", "-c", script]);
    assertEquals(r.code, 0, r.stderr + (await Deno.readTextFile(join(out, "log")).catch(() => "")));
    const log = await Deno.readTextFile(join(out, "log"));
    assertEquals(log.match(/creating system user otherix/g)?.length, 1, "created once: " + log);
    assertMatch(
      await Deno.readTextFile(join(out, "passwd")),
      /^otherix:x:\d+:\d+:.*:\/var\/lib\/otherix\/api:\/usr\/sbin\/nologin$/m,
    );
    assertEquals((await Deno.readTextFile(join(out, "stat"))).trim().split("\n"), [
      "755 root:root /var/lib/otherix",
      "700 otherix:otherix /var/lib/otherix/api",
      "750 root:root /var/lib/otherix/pools",
      "640 root:otherix /etc/otherix/api.yaml",
      "644 root:root /etc/otherix/agent.yaml",
      "755 root:root /usr/local/bin/otherix-api",
    ]);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("install.sh: refusals change nothing", async (t) => {
  const root = await tempRoot("otx-inst");
  try {
    await t.step("no compiled binaries: names the build step", async () => {
      const d = join(root, "dest");
      const r = await install(["--destdir", d, "--bin-dir", join(root, "empty")]);
      assertEquals(r.code, 1);
      assertStringIncludes(r.stderr, "run `deno task compile` first");
      assertStringIncludes(r.stderr, "DENORT_BIN");
      assert(!(await Deno.stat(d).then(() => true, () => false)), "nothing written");
    });

    await t.step("a real install needs root", async () => {
      const r = await sh([
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "bash",
        join(REPO_ROOT, "scripts/install.sh"),
      ]);
      assertEquals(r.code, 1);
      assertStringIncludes(
        r.stderr,
        "install: run as root (or stage into a directory with --destdir)",
      );
    });

    await t.step("unknown arguments", async () => {
      const r = await install(["--frobnicate"]);
      assertEquals(r.code, 1);
      assertStringIncludes(r.stderr, "unknown argument: --frobnicate");
    });
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});
