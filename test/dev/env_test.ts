/**
 * dev/scripts/env.ts: where the Linux-native agent lives per scope, when systemd is used, the
 * URLs, and the refusals of bad settings.
 *
 * @module
 */
import { assertEquals, assertStringIncludes } from "../assert.ts";
import { resolveEnv, type ResolveOptions } from "../../dev/scripts/env.ts";

function opts(vars: Record<string, string>, more: Partial<ResolveOptions> = {}): ResolveOptions {
  return {
    env: (n) => vars[n],
    os: "linux",
    uid: 0,
    systemdRunning: () => Promise.resolve(true),
    ...more,
  };
}

Deno.test("dev env: Linux-native layouts", async (t) => {
  await t.step("root: the standard paths and systemd when it runs", async () => {
    const e = await resolveEnv(opts({ HOME: "/root" }));
    assertEquals(e.mode, "native");
    assertEquals(e.native, {
      scope: "system",
      configDir: "/etc/otherix",
      stateDir: "/var/lib/otherix",
      runDir: "/run/otherix",
      unitDir: "/etc/systemd/system",
      systemd: true,
      agentPort: 9443,
    });
    assertEquals(e.cpUrl, "https://127.0.0.1:8443");
    assertEquals([e.nodeName, e.clusterName, e.nodeTimeoutSeconds], ["node-dev", "dev", 60]);
  });

  await t.step("root with a prefix: under it, and never through systemd", async () => {
    const e = await resolveEnv(opts({ HOME: "/root", OTHERIX_DEV_PREFIX: "/tmp/p/" }));
    assertEquals(
      [e.native!.configDir, e.native!.stateDir, e.native!.runDir, e.native!.systemd],
      ["/tmp/p/etc/otherix", "/tmp/p/var/lib/otherix", "/tmp/p/run/otherix", false],
    );
  });

  await t.step(
    "a user: ~/.config/otherix for config and certificates, systemctl --user",
    async () => {
      const e = await resolveEnv(
        opts({ HOME: "/home/ada", XDG_RUNTIME_DIR: "/run/user/1000" }, { uid: 1000 }),
      );
      assertEquals(e.native, {
        scope: "user",
        configDir: "/home/ada/.config/otherix",
        stateDir: "/home/ada/.config/otherix",
        runDir: "/run/user/1000/otherix",
        unitDir: "/home/ada/.config/systemd/user",
        systemd: true,
        agentPort: 9443,
      });
    },
  );

  await t.step("no systemd: the daemons run directly", async () => {
    const e = await resolveEnv(
      opts({ HOME: "/root" }, { systemdRunning: () => Promise.resolve(false) }),
    );
    assertEquals(e.native!.systemd, false);
  });
});

Deno.test("dev env: bad settings are refused with the variable's name", async () => {
  const bad: [Record<string, string>, string][] = [
    [{ OTHERIX_DEV_MODE: "docker" }, 'OTHERIX_DEV_MODE must be lima or native, got "docker"'],
    [{ OTHERIX_DEV_SCOPE: "global" }, 'OTHERIX_DEV_SCOPE must be system or user, got "global"'],
    [{ OTHERIX_DEV_SCOPE: "user", OTHERIX_DEV_PREFIX: "/x" }, "needs the system scope"],
    [{ OTHERIX_DEV_PREFIX: "relative" }, "OTHERIX_DEV_PREFIX must be an absolute path"],
    [{ OTHERIX_DEV_SYSTEMD: "maybe" }, "OTHERIX_DEV_SYSTEMD must be auto, yes or no"],
    [
      { OTHERIX_DEV_AGENT_PORT: "nine" },
      'OTHERIX_DEV_AGENT_PORT must be a positive integer up to 65535, got "nine"',
    ],
    [
      { OTHERIX_DEV_API_CONFIG: "/nonexistent/api.yaml" },
      "/nonexistent/api.yaml: cannot read config",
    ],
  ];
  for (const [vars, msg] of bad) {
    const err = await resolveEnv(opts({ HOME: "/root", ...vars })).catch((e) => e);
    assertStringIncludes(String(err), msg);
  }
});
