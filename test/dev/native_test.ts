/**
 * The Linux-native dev pipeline run for real (spec 001 "Phase D"; dev/scripts/dev.ts): as root
 * in a temporary prefix, where systemd does not run, the targets run the control plane and the
 * agent as daemons from source (`.local/run`-style logs and pid files); and the user scope
 * (`~/.config/otherix`, `systemctl --user`) with a `systemctl` stand-in that runs the unit's
 * ExecStart.
 *
 * @module
 */
import { join } from "node:path";
import { assert, assertEquals, assertMatch, assertStringIncludes } from "../assert.ts";
import { freePort, tempRoot, TEST_ADMIN, waitFor } from "../harness.ts";
import { invocations, killPidFile, runTask, SEED_SUMMARY, show } from "./helpers.ts";
import { stringify } from "yaml";

/** Waits (up to 15 s) for `path` to be a file. */
function waitFile(path: string): Promise<boolean> {
  return waitFor(path, () => Deno.stat(path).then((s) => s.isFile, () => false), 15_000, 100);
}

/** A dev api config for `root` on free ports (the shape of dev/config/api.yaml). */
async function apiConfig(root: string): Promise<{ file: string; url: string; agentUrl: string }> {
  const port = freePort();
  const agentPort = freePort();
  const file = join(root, "api.yaml");
  await Deno.writeTextFile(
    file,
    stringify({
      server: { listen: `127.0.0.1:${port}`, agent_listen: `127.0.0.1:${agentPort}` },
      store: { data_dir: join(root, "var/lib/otherix/api") },
      agent_client: { enabled: true },
      nodes: { heartbeat_interval_seconds: 2, stale_threshold_seconds: 10 },
      workers: { enabled: true, poll_interval_ms: 250 },
    }),
  );
  return { file, url: `http://127.0.0.1:${port}`, agentUrl: `https://127.0.0.1:${agentPort}` };
}

async function pidOf(file: string): Promise<number | null> {
  try {
    const pid = Number((await Deno.readTextFile(file)).trim());
    Deno.kill(pid, "SIGCONT"); // throws when gone
    return pid;
  } catch {
    return null;
  }
}

async function api(url: string, path: string, token: string) {
  const res = await fetch(url + path, { headers: { authorization: `Bearer ${token}` } });
  return { status: res.status, json: await res.json().catch(() => null) };
}

function tokenOf(cliConfig: string): string {
  return /token: (otx_\S+)/.exec(Deno.readTextFileSync(cliConfig))![1];
}

function mode(path: string): number {
  return Deno.statSync(path).mode! & 0o777;
}

Deno.test({
  name:
    "native (root, temp prefix, no systemd): local-dev-start, seed-dev, deploy-dev, etcd-reset, clean-dev",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async (t) => {
    const root = await tempRoot("otx-ndev");
    const cfg = await apiConfig(root);
    const runDir = join(root, "dev-run");
    const env = {
      OTHERIX_DEV_MODE: "native",
      OTHERIX_DEV_PREFIX: root,
      OTHERIX_DEV_API_CONFIG: cfg.file,
      OTHERIX_DEV_RUN_DIR: runDir,
      OTHERIX_DEV_AGENT_PORT: String(freePort()),
      OTHERIX_CONFIG: join(root, "cli-config"),
      OTHERIX_BOOTSTRAP_ADMIN_EMAIL: TEST_ADMIN.email,
      OTHERIX_BOOTSTRAP_ADMIN_PASSWORD: TEST_ADMIN.password,
      HOME: root,
    };
    const etc = join(root, "etc/otherix");
    const dataDir = join(root, "var/lib/otherix/api");
    try {
      let nodeId = "";
      await t.step("local-dev-start: control plane, agent, CLI; the spec's summary", async () => {
        const r = await runTask("local-dev-start", env);
        assertEquals(r.code, 0, show(r));
        const m = SEED_SUMMARY.exec(r.stdout);
        assert(m, show(r));
        assertEquals([m.groups!.node, m.groups!.pool], ["node-dev", "default"]);
        nodeId = m.groups!.id;
        assertEquals(mode(join(etc, "bootstrap-token")), 0o600);
        assertEquals(mode(join(etc, "bootstrap.env")), 0o644);
        const benv = await Deno.readTextFile(join(etc, "bootstrap.env"));
        assertStringIncludes(benv, `OTHERIX_BOOTSTRAP__CP_URL=${cfg.agentUrl}\n`);
        assertStringIncludes(benv, "OTHERIX_BOOTSTRAP__NODE_NAME=node-dev\n");
        assert(await pidOf(join(runDir, "otherix-api.pid")), "otherix-api runs as a daemon");
        assert(await pidOf(join(runDir, "otherix-agent.pid")), "otherix-agent runs as a daemon");
        assertStringIncludes(
          await Deno.readTextFile(join(runDir, "otherix-api.log")),
          "otherix-api started",
        );
        // The agent keeps its certificates in the prefix's /var/lib/otherix (written a moment
        // after the control plane registers the node).
        await waitFile(join(root, "var/lib/otherix/certs/agent.crt"));
      });

      await t.step("the node turns ready and gets the default pool in the prefix", async () => {
        const token = tokenOf(env.OTHERIX_CONFIG);
        await waitFor("node-dev ready with its default pool", async () => {
          const n = await api(cfg.url, "/v1/nodes/node-dev", token);
          const p = await api(cfg.url, "/v1/pools", token);
          return n.json?.status === "ready" &&
            p.json?.items?.some((x: { path: string; status: string }) =>
              x.status === "ready" && x.path === join(root, "var/lib/otherix/pools/default")
            );
        }, 60_000);
      });

      await t.step(
        "seed-dev again: the previous CLI token is revoked, the node stays",
        async () => {
          const oldToken = tokenOf(env.OTHERIX_CONFIG);
          const agentBefore = await pidOf(join(runDir, "otherix-agent.pid"));
          const r = await runTask("seed-dev", env);
          assertEquals(r.code, 0, show(r));
          assertStringIncludes(r.stdout, "revoked 1 previous CLI token(s) of cluster dev");
          assertEquals(SEED_SUMMARY.exec(r.stdout)?.groups?.id, nodeId);
          assertEquals((await api(cfg.url, "/v1/users/me", oldToken)).status, 401);
          const newToken = tokenOf(env.OTHERIX_CONFIG);
          assertEquals((await api(cfg.url, "/v1/users/me", newToken)).status, 200);
          const tokens = (await api(cfg.url, "/v1/users/me/api-tokens", newToken)).json.items;
          assertEquals(tokens.length, 1, "one CLI token left");
          assert(
            (await pidOf(join(runDir, "otherix-agent.pid"))) !== agentBefore,
            "agent restarted",
          );
        },
      );

      await t.step("deploy-dev restarts the agent, which heartbeats again", async () => {
        const before = await pidOf(join(runDir, "otherix-agent.pid"));
        const since = Date.now();
        const r = await runTask("deploy-dev", env);
        assertEquals(r.code, 0, show(r));
        const after = await pidOf(join(runDir, "otherix-agent.pid"));
        assert(after && after !== before, `new agent pid (${before} -> ${after})`);
        const token = tokenOf(env.OTHERIX_CONFIG);
        await waitFor("a heartbeat from the redeployed agent", async () => {
          const n = await api(cfg.url, "/v1/nodes/node-dev", token);
          return Date.parse(n.json?.last_heartbeat_at ?? "0") >= since;
        }, 30_000);
      });

      await t.step("etcd-reset refuses while the control plane runs", async () => {
        const r = await runTask("etcd-reset", env);
        assertEquals(r.code, 1, show(r));
        assertStringIncludes(r.stderr, `dev: etcd-reset: otherix-api is running at ${cfg.url}`);
        assert(Deno.statSync(join(dataDir, "store.kv")).isFile, "nothing wiped");
      });

      await t.step(
        "a reset control plane: seed-dev drops the agent's stale certificates and rejoins",
        async () => {
          await killPidFile(join(runDir, "otherix-api.pid"));
          await waitFor(
            "otherix-api gone",
            async () => (await pidOf(join(runDir, "otherix-api.pid"))) === null,
          );
          const reset = await runTask("etcd-reset", env);
          assertEquals(reset.code, 0, show(reset));
          assertMatch(
            reset.stdout,
            /^>> etcd-reset: wiped .*\/var\/lib\/otherix\/api \(store and cluster CA: pki, store\.kv[^)]*\)$/m,
          );
          assertEquals([...Deno.readDirSync(dataDir)], []);
          const r = await runTask("local-dev-start", env);
          assertEquals(r.code, 0, show(r));
          assertStringIncludes(r.stdout, "its certificates are from another cluster CA");
          const m = SEED_SUMMARY.exec(r.stdout);
          assert(m, show(r));
          assert(m.groups!.id !== nodeId, "a new cluster, a new node record");
        },
      );

      await t.step(
        "clean-dev stops both daemons and removes the agent's files, not the store",
        async () => {
          const r = await runTask("clean-dev", env);
          assertEquals(r.code, 0, show(r));
          assertEquals(await pidOf(join(runDir, "otherix-agent.pid")), null);
          assertEquals(await pidOf(join(runDir, "otherix-api.pid")), null);
          assertStringIncludes(r.stdout, "stopped otherix-api");
          assertEquals([...Deno.readDirSync(etc)], []);
          assertEquals([...Deno.readDirSync(join(root, "var/lib/otherix"))].map((e) => e.name), [
            "api",
          ]);
          assert(
            Deno.statSync(join(dataDir, "store.kv")).isFile,
            "the store stays until etcd-reset",
          );
          const again = await runTask("clean-dev", env);
          assertEquals(again.code, 0, show(again));
        },
      );
    } finally {
      await killPidFile(join(runDir, "otherix-agent.pid"));
      await killPidFile(join(runDir, "otherix-api.pid"));
      await Deno.remove(root, { recursive: true }).catch(() => {});
    }
  },
});

Deno.test({
  name: "native (user scope): ~/.config/otherix and systemctl --user",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async (t) => {
    const root = await tempRoot("otx-udev");
    const home = join(root, "home");
    await Deno.mkdir(home);
    const cfg = await apiConfig(root);
    const runDir = join(root, "dev-run");
    const env = {
      OTHERIX_DEV_MODE: "native",
      OTHERIX_DEV_SCOPE: "user",
      OTHERIX_DEV_SYSTEMD: "yes",
      OTHERIX_DEV_API_CONFIG: cfg.file,
      OTHERIX_DEV_RUN_DIR: runDir,
      OTHERIX_DEV_AGENT_PORT: String(freePort()),
      OTHERIX_BOOTSTRAP_ADMIN_EMAIL: TEST_ADMIN.email,
      OTHERIX_BOOTSTRAP_ADMIN_PASSWORD: TEST_ADMIN.password,
      XDG_RUNTIME_DIR: join(root, "xdg-run"),
      HOME: home,
      STANDIN_LOG: join(root, "calls.log"),
      STANDIN_STATE: join(root, "systemd"),
    };
    const conf = join(home, ".config/otherix");
    const unit = join(home, ".config/systemd/user/otherix-agent.service");
    try {
      await t.step(
        "local-dev-start: the agent's files and certificates under ~/.config/otherix",
        async () => {
          const r = await runTask("local-dev-start", env, { standins: true });
          assertEquals(r.code, 0, show(r));
          assert(SEED_SUMMARY.test(r.stdout), show(r));
          assertEquals(mode(join(conf, "bootstrap-token")), 0o600);
          assertEquals(mode(join(conf, "bootstrap.env")), 0o644);
          await waitFile(join(conf, "certs/agent.crt")); // certs in ~/.config/otherix/certs
          assert(
            Deno.statSync(join(home, ".otherix/config")).isFile,
            "the CLI config in ~/.otherix",
          );
          assertEquals(await invocations(env.STANDIN_LOG, "systemctl"), [
            "systemctl --user daemon-reload",
            "systemctl --user restart otherix-agent",
          ]);
          const text = await Deno.readTextFile(unit);
          assertStringIncludes(text, "\nKillMode=process\n");
          assertStringIncludes(
            text,
            `scripts/run.ts otherix-agent --config ${join(conf, "agent.yaml")}`,
          );
          assertStringIncludes(text, "\nWantedBy=default.target\n");
          const yaml = await Deno.readTextFile(join(conf, "agent.yaml"));
          assertStringIncludes(yaml, `run_dir: "${join(root, "xdg-run/otherix")}"`);
        },
      );

      await t.step("the unit verifies with systemd-analyze", async () => {
        const out = await new Deno.Command("systemd-analyze", {
          args: ["verify", unit],
          stdout: "piped",
          stderr: "piped",
        }).output();
        const err = new TextDecoder().decode(out.stderr);
        assertEquals([out.code, err], [0, ""]);
      });

      await t.step("clean-dev: stop, disable, unit removed, files gone", async () => {
        await Deno.remove(env.STANDIN_LOG);
        const r = await runTask("clean-dev", env, { standins: true });
        assertEquals(r.code, 0, show(r));
        assertEquals(await invocations(env.STANDIN_LOG, "systemctl"), [
          "systemctl --user stop otherix-agent",
          "systemctl --user disable otherix-agent",
          "systemctl --user daemon-reload",
        ]);
        assertEquals([...Deno.readDirSync(conf)], []);
        assert(!(await Deno.stat(unit).then(() => true, () => false)), "unit removed");
      });
    } finally {
      await killPidFile(join(env.STANDIN_STATE, "otherix-agent.pid"));
      await killPidFile(join(runDir, "otherix-api.pid"));
      await Deno.remove(root, { recursive: true }).catch(() => {});
    }
  },
});
