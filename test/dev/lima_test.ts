/**
 * The Lima side of the dev pipeline (spec 001 "Running Otherix on macOS for development",
 * dev/scripts/lima.ts, dev/scripts/dev.ts) run here with stand-ins for `limactl`, `sysctl` and
 * `sw_vers` on PATH: the exact `limactl` invocations for capable and incapable Macs of both
 * architectures, and seed-dev against a real control plane with a real agent the `limactl`
 * stand-in starts for `systemctl restart otherix-agent`.
 *
 * @module
 */
import { join } from "node:path";
import { assert, assertEquals, assertMatch, assertStringIncludes } from "../assert.ts";
import { parseMacHost } from "../../dev/scripts/lima.ts";
import { resolveEnv } from "../../dev/scripts/env.ts";
import { REPO_ROOT } from "../../scripts/permissions.ts";
import { freePort, startApi, tempRoot, TEST_ADMIN, waitFor } from "../harness.ts";
import { invocations, killPidFile, runTask, SEED_SUMMARY, show } from "./helpers.ts";

const TEMPLATE = join(REPO_ROOT, "dev/lima/otherix-dev.yaml");

/** The Macs of the spec's table: who gets nested virtualization. */
const HOSTS = [
  { brand: "Apple M3 Pro", arm64: "1", macos: "15.1.1", arch: "arm64", nested: true },
  { brand: "Apple M4", arm64: "1", macos: "26.0", arch: "arm64", nested: true },
  { brand: "Apple M3 Max", arm64: "1", macos: "14.6", arch: "arm64", nested: false },
  { brand: "Apple M2", arm64: "1", macos: "15.2", arch: "arm64", nested: false },
  { brand: "Apple M1 Ultra", arm64: "1", macos: "13.6.1", arch: "arm64", nested: false },
  {
    brand: "Intel(R) Core(TM) i9-9980HK CPU @ 2.40GHz",
    arm64: null,
    macos: "15.0",
    arch: "amd64",
    nested: false,
  },
] as const;

Deno.test("lima: nested virtualization needs Apple M3 or later and macOS 15 or later", () => {
  for (const h of HOSTS) {
    const got = parseMacHost(h.brand + "\n", h.arm64 ? h.arm64 + "\n" : null, h.macos + "\n");
    assertEquals(
      [got.arch, got.nestedVirtualization],
      [h.arch, h.nested],
      `${h.brand} / macOS ${h.macos}`,
    );
  }
  // Rosetta: an x86_64 process on Apple silicon still sees hw.optional.arm64 = 1.
  assertEquals(parseMacHost("Apple M3", "1", "15.0").arch, "arm64");
});

/** Env of a Lima-mode target with stand-ins for host `h`. */
function limaEnv(
  root: string,
  h: (typeof HOSTS)[number],
  extra: Record<string, string> = {},
): Record<string, string> & { STANDIN_LOG: string; STANDIN_VM_ROOT: string } {
  return {
    OTHERIX_DEV_MODE: "lima",
    STANDIN_LOG: join(root, "calls.log"),
    STANDIN_VM_ROOT: join(root, "vm"),
    STANDIN_CPU_BRAND: h.brand,
    ...(h.arm64 ? { STANDIN_ARM64: h.arm64 } : {}),
    STANDIN_MACOS_VERSION: h.macos,
    OTHERIX_DEV_RUN_DIR: join(root, "run"),
    ...extra,
  };
}

Deno.test("lima: lima-ensure-one creates the VM with --set .nestedVirtualization=true only on a capable Mac", async (t) => {
  for (const h of HOSTS) {
    await t.step(`${h.brand}, macOS ${h.macos}`, async () => {
      const root = await tempRoot("otx-lima");
      try {
        const env = limaEnv(root, h);
        const r = await runTask("lima-ensure-one", env, { standins: true });
        assertEquals(r.code, 0, show(r));
        assertEquals(await invocations(env.STANDIN_LOG, "limactl"), [
          "limactl list --json",
          `limactl create --name=otherix-dev --tty=false ${
            h.nested ? "--set .nestedVirtualization=true " : ""
          }${TEMPLATE}`,
          "limactl start --tty=false otherix-dev",
        ]);
        assertStringIncludes(
          r.stdout,
          h.nested ? "nested virtualization available" : "no nested virtualization",
        );
        assertStringIncludes(r.stdout, h.nested ? "KVM inside the VM" : "under TCG");
        assertStringIncludes(r.stdout, `Ubuntu 24.04, ${h.arch}`);
        // The host was asked, in full.
        assertEquals(await invocations(env.STANDIN_LOG, "sw_vers"), ["sw_vers -productVersion"]);
        assertEquals(await invocations(env.STANDIN_LOG, "sysctl"), [
          "sysctl -n machdep.cpu.brand_string",
          "sysctl -n hw.optional.arm64",
        ]);
      } finally {
        await Deno.remove(root, { recursive: true });
      }
    });
  }
});

Deno.test("lima: lima-ensure-one keeps exactly one VM: starts a stopped one, leaves a running one", async (t) => {
  const h = HOSTS[0];
  const cases = [
    { status: "Stopped", calls: ["limactl list --json", "limactl start --tty=false otherix-dev"] },
    { status: "Running", calls: ["limactl list --json"] },
  ];
  for (const c of cases) {
    await t.step(c.status, async () => {
      const root = await tempRoot("otx-lima");
      try {
        const env = limaEnv(root, h, { STANDIN_LIMA_STATUS: c.status });
        const r = await runTask("lima-ensure-one", env, { standins: true });
        assertEquals(r.code, 0, show(r));
        assertEquals(await invocations(env.STANDIN_LOG, "limactl"), c.calls);
      } finally {
        await Deno.remove(root, { recursive: true });
      }
    });
  }
  await t.step("Broken: refused with the way out", async () => {
    const root = await tempRoot("otx-lima");
    try {
      const env = limaEnv(root, h, { STANDIN_LIMA_STATUS: "Broken" });
      const r = await runTask("lima-ensure-one", env, { standins: true });
      assertEquals(r.code, 1, show(r));
      assertStringIncludes(r.stderr, "dev: lima-ensure-one: Lima VM otherix-dev is Broken");
      assertStringIncludes(r.stderr, "make clean-dev");
      assertEquals(await invocations(env.STANDIN_LOG, "limactl"), ["limactl list --json"]);
    } finally {
      await Deno.remove(root, { recursive: true });
    }
  });
});

Deno.test("lima: bootstrap-dev, deploy-dev and clean-dev drive limactl exactly", async (t) => {
  const root = await tempRoot("otx-lima");
  const agentBin = join(root, "otherix-agent");
  await Deno.writeTextFile(agentBin, "#!/bin/sh\necho fake agent\n", { mode: 0o755 });
  const h = HOSTS[3]; // M2: no nested virtualization
  const env = limaEnv(root, h, { OTHERIX_DEV_AGENT_BINARY: agentBin });
  const vm = (p: string) => join(env.STANDIN_VM_ROOT, p);
  const copyIn = [
    `limactl copy ${agentBin} otherix-dev:/tmp/otherix-agent`,
    "limactl shell otherix-dev sudo install -m 0755 /tmp/otherix-agent /usr/local/bin/otherix-agent",
    `limactl copy ${join(REPO_ROOT, "dev/config/agent.yaml")} otherix-dev:/tmp/otherix-agent.yaml`,
    "limactl shell otherix-dev sudo install -D -m 0644 /tmp/otherix-agent.yaml /etc/otherix/agent.yaml",
    "limactl shell otherix-dev sudo systemctl daemon-reload",
  ];
  try {
    await t.step(
      "bootstrap-dev: VM, agent binary and config in; the agent is not started",
      async () => {
        const r = await runTask("bootstrap-dev", env, { standins: true });
        assertEquals(r.code, 0, show(r));
        assertEquals(await invocations(env.STANDIN_LOG, "limactl"), [
          "limactl list --json",
          `limactl create --name=otherix-dev --tty=false ${TEMPLATE}`,
          "limactl start --tty=false otherix-dev",
          ...copyIn,
        ]);
        assertEquals(
          await Deno.readTextFile(vm("usr/local/bin/otherix-agent")),
          "#!/bin/sh\necho fake agent\n",
        );
        assertEquals((await Deno.stat(vm("usr/local/bin/otherix-agent"))).mode! & 0o777, 0o755);
        assertEquals(
          await Deno.readTextFile(vm("etc/otherix/agent.yaml")),
          await Deno.readTextFile(join(REPO_ROOT, "dev/config/agent.yaml")),
        );
        assertStringIncludes(r.stdout, "using the prebuilt agent");
      },
    );

    await t.step("deploy-dev: copy and restart, VM kept", async () => {
      await Deno.remove(env.STANDIN_LOG);
      const r = await runTask("deploy-dev", env, { standins: true });
      assertEquals(r.code, 0, show(r));
      assertEquals(await invocations(env.STANDIN_LOG, "limactl"), [
        "limactl list --json",
        ...copyIn,
        "limactl shell otherix-dev sudo systemctl enable otherix-agent",
        "limactl shell otherix-dev sudo systemctl restart otherix-agent",
      ]);
    });

    await t.step("clean-dev: stop and delete the VM; twice is harmless", async () => {
      await Deno.remove(env.STANDIN_LOG);
      const r = await runTask("clean-dev", env, { standins: true });
      assertEquals(r.code, 0, show(r));
      assertEquals(await invocations(env.STANDIN_LOG, "limactl"), [
        "limactl list --json",
        "limactl stop otherix-dev",
        "limactl delete otherix-dev",
      ]);
      const again = await runTask("clean-dev", env, { standins: true });
      assertEquals(again.code, 0, show(again));
      assertStringIncludes(again.stdout, "no Lima VM otherix-dev");
    });
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("lima: the agent's URL of the control plane: host.lima.internal unless OTHERIX_CP_URL", async () => {
  const base = { OTHERIX_DEV_MODE: "lima", HOME: "/home/dev" };
  const env = await resolveEnv({ env: (n) => (base as Record<string, string>)[n], os: "darwin" });
  assertEquals(env.mode, "lima");
  assertEquals(env.cpUrl, "https://host.lima.internal:8443");
  assertEquals(env.serverUrl, "http://127.0.0.1:8080");
  assertEquals(env.native, null);
  const remote = { ...base, OTHERIX_CP_URL: "https://cp.example:8443" };
  const env2 = await resolveEnv({
    env: (n) => (remote as Record<string, string>)[n],
    os: "darwin",
  });
  assertEquals(env2.cpUrl, "https://cp.example:8443");
  // macOS defaults to Lima; the native mode needs Linux.
  const mac = await resolveEnv({
    env: (n) => ({ HOME: "/h" } as Record<string, string>)[n],
    os: "darwin",
  });
  assertEquals(mac.mode, "lima");
  const err = await resolveEnv({
    env: (n) => ({ OTHERIX_DEV_MODE: "native" } as Record<string, string>)[n],
    os: "darwin",
  }).catch((e) => e);
  assertStringIncludes(String(err), "the native mode needs a Linux host");
});

Deno.test({
  name: "lima: seed-dev provisions the VM's agent through limactl and waits for the node",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async (t) => {
    const root = await tempRoot("otx-lima");
    const api = await startApi({ root: join(root, "cp") });
    const agentPort = freePort();
    const h = HOSTS[0];
    const env = limaEnv(root, h, {
      STANDIN_LIMA_STATUS: "Running",
      STANDIN_REPO: REPO_ROOT,
      STANDIN_AGENT_PORT: String(agentPort),
      OTHERIX_DEV_API_CONFIG: api.configFile,
      OTHERIX_CP_URL: api.agentUrl,
      OTHERIX_CONFIG: join(root, "cli-config"),
      OTHERIX_BOOTSTRAP_ADMIN_EMAIL: TEST_ADMIN.email,
      OTHERIX_BOOTSTRAP_ADMIN_PASSWORD: TEST_ADMIN.password,
    });
    const vm = (p: string) => join(env.STANDIN_VM_ROOT, p);
    try {
      // What bootstrap-dev put in the VM: the dev agent config.
      await Deno.mkdir(vm("etc/otherix"), { recursive: true });
      await Deno.copyFile(join(REPO_ROOT, "dev/config/agent.yaml"), vm("etc/otherix/agent.yaml"));

      let firstId = "";
      await t.step(
        "first run: join files written in the VM, agent started, node registered",
        async () => {
          const r = await runTask("seed-dev", env, { standins: true });
          assertEquals(r.code, 0, show(r));
          const m = SEED_SUMMARY.exec(r.stdout);
          assert(m, show(r));
          assertEquals([m.groups!.node, m.groups!.pool], ["node-dev", "default"]);
          firstId = m.groups!.id;
          assertEquals(await invocations(env.STANDIN_LOG, "limactl"), [
            "limactl shell otherix-dev sudo cat /var/lib/otherix/certs/ca.crt",
            "limactl shell otherix-dev sudo cat /var/lib/otherix/certs/agent.crt",
            "limactl shell otherix-dev sudo install -D -m 0600 /dev/stdin /etc/otherix/bootstrap-token",
            "limactl shell otherix-dev sudo install -D -m 0644 /dev/stdin /etc/otherix/bootstrap.env",
            "limactl shell otherix-dev sudo systemctl enable otherix-agent",
            "limactl shell otherix-dev sudo systemctl restart otherix-agent",
          ]);
          assertEquals((await Deno.stat(vm("etc/otherix/bootstrap-token"))).mode! & 0o777, 0o600);
          assertEquals((await Deno.stat(vm("etc/otherix/bootstrap.env"))).mode! & 0o777, 0o644);
          assertMatch(
            await Deno.readTextFile(vm("etc/otherix/bootstrap-token")),
            /^otxjoin_\S+\n$/,
          );
          const benv = await Deno.readTextFile(vm("etc/otherix/bootstrap.env"));
          assertStringIncludes(benv, `\nOTHERIX_BOOTSTRAP__CP_URL=${api.agentUrl}\n`);
          assertMatch(benv, /\nOTHERIX_BOOTSTRAP__CA_FINGERPRINT=sha256:[0-9a-f]{64}\n/);
          assertStringIncludes(benv, "\nOTHERIX_BOOTSTRAP__NODE_NAME=node-dev\n");
          // The agent in the "VM" bootstrapped with them (the control plane registers the node
          // when it redeems the CSR, a moment before the agent writes its certificate).
          await waitFor(
            "the agent's certificate on disk",
            () =>
              Deno.stat(vm("var/lib/otherix/certs/agent.crt")).then((s) => s.isFile, () => false),
            15_000,
            100,
          );
        },
      );

      await t.step("re-run: previous CLI token revoked, certificates kept, same node", async () => {
        const cli = await Deno.readTextFile(join(root, "cli-config"));
        const oldToken = /token: (otx_\S+)/.exec(cli)![1];
        await Deno.remove(env.STANDIN_LOG);
        const r = await runTask("seed-dev", env, { standins: true });
        assertEquals(r.code, 0, show(r));
        assertStringIncludes(
          r.stdout,
          ">> seed-dev: revoked 1 previous CLI token(s) of cluster dev",
        );
        assertEquals(SEED_SUMMARY.exec(r.stdout)?.groups?.id, firstId);
        const me = await fetch(`${api.url}/v1/users/me`, {
          headers: { authorization: `Bearer ${oldToken}` },
        });
        await me.body?.cancel();
        assertEquals(me.status, 401, "the previous CLI token is revoked");
        const calls = await invocations(env.STANDIN_LOG, "limactl");
        assert(!calls.some((c) => c.includes(" rm ")), "certificates kept: " + calls.join("\n"));
      });
    } finally {
      await killPidFile(join(env.STANDIN_VM_ROOT, "agent.pid"));
      await api.proc.stop();
      await Deno.remove(root, { recursive: true }).catch(() => {});
    }
  },
});
