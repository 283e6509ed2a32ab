/**
 * The shipped configs (deploy/config/*.example.yaml, dev/config/*.yaml) load with the real
 * config loaders and say what the spec says; the spec's keys are accepted; the "Phase 2 lock"
 * refuses workers without the agent client, also in a real `otherix-api` process, while the
 * production example as shipped starts.
 *
 * @module
 */
import { join } from "node:path";
import { parse } from "yaml";
import { assert, assertEquals, assertStringIncludes, assertThrows } from "../assert.ts";
import { parseAgentConfig } from "../../agent/config.ts";
import { parseApiConfig, PHASE2_LOCK_MESSAGE } from "../../cp/config.ts";
import { denoRunArgs, REPO_ROOT, type SandboxRoots } from "../../scripts/permissions.ts";
import { ConfigError } from "../../shared/config.ts";
import { freePort, Proc, tempRoot, waitFor } from "../harness.ts";

const read = (p: string) => Deno.readTextFileSync(join(REPO_ROOT, p));

Deno.test("configs: the production example", async (t) => {
  const text = read("deploy/config/api.example.yaml");
  const cfg = parseApiConfig(text);

  await t.step("agent client and workers off until the mTLS material exists", () => {
    assertEquals(cfg.agent_client.enabled, false);
    assertEquals(cfg.workers.enabled, false);
  });

  await t.step("placement and overcommit annotated with safety notes, strict ratios", () => {
    assertEquals(cfg.placement.algorithm, "resource_aware");
    for (const r of ["cpu", "memory", "disk"] as const) {
      assertEquals(cfg.placement.resources[r], { enabled: true, overcommit_ratio: 1 });
    }
    assertEquals((text.match(/# SAFETY:/g) ?? []).length, 3, "one note per resource");
    assertStringIncludes(text, "docs/scheduler-configuration.md");
    assertStringIncludes(text, "OOM killer");
  });

  await t.step("enabling workers alone is refused with the Phase 2 lock", () => {
    const env = (n: string) => n === "OTHERIX_WORKERS__ENABLED" ? "true" : undefined;
    const e = assertThrows(() => parseApiConfig(text, env));
    assert(e instanceof ConfigError, String(e));
    assertStringIncludes(e.message, "workers.enabled (env OTHERIX_WORKERS__ENABLED): Phase 2 lock");
    // Both together are the production steady state.
    const both = (n: string) =>
      ({ OTHERIX_WORKERS__ENABLED: "true", OTHERIX_AGENT_CLIENT__ENABLED: "true" })[n];
    const ok = parseApiConfig(text, both);
    assertEquals([ok.workers.enabled, ok.agent_client.enabled], [true, true]);
  });

  await t.step("the agent example uses the standard roots", () => {
    const a = parseAgentConfig(read("deploy/config/agent.example.yaml"));
    assertEquals(a.paths, {
      config_dir: "/etc/otherix",
      state_dir: "/var/lib/otherix",
      run_dir: "/run/otherix",
    });
    assertEquals(a.server.listen, { hostname: "0.0.0.0", port: 9443 });
  });
});

Deno.test("configs: the dev configs", () => {
  const api = parseApiConfig(read("dev/config/api.yaml"));
  assertEquals(api.agent_client.enabled, true, "the dev config flips agent_client.enabled");
  assertEquals(api.workers.enabled, true);
  assertEquals(api.cp_cert.additional_sans, ["host.lima.internal"]);
  assertEquals(api.nodes.heartbeat_interval_seconds, 15);
  assertEquals(api.nodes.stale_threshold_seconds, 45);
  const agent = parseAgentConfig(read("dev/config/agent.yaml"));
  assertEquals(agent.server.advertise_url, "https://127.0.0.1:9443", "Lima's port forward");
  // Every key in the dev api config is one the schema knows (strict parsing would refuse
  // others); the raw document and the parsed one agree on them.
  const raw = parse(read("dev/config/api.yaml"));
  assertEquals(raw.agent_client, { enabled: true });
});

Deno.test("configs: the spec's keys keep their meaning", () => {
  const cfg = parseApiConfig(`
agent_client: { enabled: true }
cp_cert: { additional_sans: ["cp.lan", "10.0.0.5"] }
workers: { enabled: true, storage_pool_scan: { enabled: false, interval_seconds: 60 } }
placement:
  algorithm: least_vm_count
  resources: { memory: { enabled: true, overcommit_ratio: 1.5 } }
storage_pools: { allowed_path_prefixes: ["/srv/pools/"], default_pool_name: fast }
`);
  assertEquals(cfg.cp_cert.additional_sans, ["cp.lan", "10.0.0.5"]);
  assertEquals(cfg.workers.storage_pool_scan, { enabled: false, interval_seconds: 60 });
  assertEquals(cfg.placement.algorithm, "least_vm_count");
  assertEquals(cfg.placement.resources.memory.overcommit_ratio, 1.5);
  assertEquals(cfg.storage_pools.default_pool_name, "fast");
  // The default keeps the single-binary flow: workers on, the agent client on.
  const d = parseApiConfig("");
  assertEquals([d.workers.enabled, d.agent_client.enabled], [true, true]);
  // Off on both is allowed (a control plane that accepts tasks and runs none).
  const off = parseApiConfig("agent_client: { enabled: false }\nworkers: { enabled: false }\n");
  assertEquals([off.workers.enabled, off.agent_client.enabled], [false, false]);
  assertThrows(() => parseApiConfig("agent_client: { enabled: false, certs: 1 }\n"));
});

Deno.test({
  name: "configs: otherix-api refuses the Phase 2 lock at startup and starts the example",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async (t) => {
    const root = await tempRoot("otx-cfg");
    const dataDir = join(root, "data");
    const port = freePort();
    const example = read("deploy/config/api.example.yaml")
      .replace(`listen: "0.0.0.0:8080"`, `listen: "127.0.0.1:${port}"`)
      .replace(`agent_listen: "0.0.0.0:8443"`, `agent_listen: "127.0.0.1:${freePort()}"`)
      .replace("data_dir: /var/lib/otherix/api", `data_dir: ${dataDir}`);
    const file = join(root, "api.yaml");
    await Deno.writeTextFile(file, example);
    const roots: SandboxRoots = { config: file, state: dataDir, run: dataDir };
    const start = (env: Record<string, string>) =>
      new Proc(
        "api",
        new Deno.Command(Deno.execPath(), {
          args: denoRunArgs("otherix-api", roots, ["--config", file]),
          cwd: REPO_ROOT,
          env,
          stdin: "null",
          stdout: "piped",
          stderr: "piped",
        }),
      );
    try {
      await t.step("workers on, agent client off: exit 1 with the lock's message", async () => {
        const p = start({ OTHERIX_WORKERS__ENABLED: "true" });
        const st = await p.status();
        assertEquals(st.code, 1, p.output);
        assertStringIncludes(p.output, PHASE2_LOCK_MESSAGE);
        assert(!(await Deno.stat(join(dataDir, "store.kv")).then(() => true, () => false)));
      });

      await t.step("as shipped it starts, with its warning that tasks stay pending", async () => {
        const p = start({});
        try {
          await waitFor("readyz", async () => {
            const r = await fetch(`http://127.0.0.1:${port}/readyz`);
            await r.body?.cancel();
            return r.ok;
          }, 60_000);
          await p.waitForOutput((o) => o.includes("task workers disabled"));
        } finally {
          await p.stop();
        }
      });
    } finally {
      await Deno.remove(root, { recursive: true });
    }
  },
});
