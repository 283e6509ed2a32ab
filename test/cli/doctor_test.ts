/**
 * `otherix doctor` against a real control plane (test/cp/fixtures.ts) with a scripted agent:
 * each check passes on a healthy cluster and fails when its failure is produced for real.
 */
import { assert, assertEquals, assertMatch } from "../assert.ts";
import { run } from "../../cli/main.ts";
import type { CheckResult } from "../../cli/doctor/report.ts";
import { parseApiConfig } from "../../cp/config.ts";
import { type ControlPlane, startControlPlane } from "../../cp/app.ts";
import { createCa, issueServerCert, splitSans } from "../../shared/pki.ts";
import { serveTls, type TlsServer } from "../../shared/tls.ts";
import { apiFor, FakeAgent, LogCapture, startTestCp, until } from "../cp/fixtures.ts";
import { closedPort, envelope, fakeIo, runCli, startFakeApi } from "./fixtures.ts";

interface Doctor {
  code: number;
  checks: CheckResult[];
  stderr: string;
}

/** Runs `otherix doctor -o json …args` in-process with the real clock unless `now` is given. */
async function doctor(args: string[], opts: { now?: number; env?: Record<string, string> } = {}) {
  const io = fakeIo({ env: opts.env });
  const clock = opts.now;
  const code = await run(["doctor", "-o", "json", ...args], {
    ...io,
    out: (t) => io.out(t),
    err: (t) => io.err(t),
    now: () => clock ?? Date.now(),
  });
  const checks = JSON.parse(io.stdout).checks as CheckResult[];
  return { code, checks, stderr: io.stderr } satisfies Doctor;
}

/** The statuses by `id` or `id[node]`. */
function statuses(d: Doctor): Record<string, string> {
  return Object.fromEntries(d.checks.map((c) => [c.node ? `${c.id}[${c.node}]` : c.id, c.status]));
}

function only(d: Doctor, id: string, node?: string): CheckResult {
  const found = d.checks.filter((c) => c.id === id && (node === undefined || c.node === node));
  assertEquals(found.length, 1, `one ${id} result in ${JSON.stringify(d.checks)}`);
  return found[0];
}

async function login(cp: ControlPlane): Promise<string> {
  const res = await fetch(`http://127.0.0.1:${cp.publicPort}/v1/auth/login`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ email: "admin@example.com", password: "admin-password" }),
  });
  return (await res.json()).access_token;
}

const VM = (name: string) => ({
  name,
  image_url: "http://127.0.0.1:1/images/img.raw",
  architecture: "amd64",
  vcpus: 1,
  memory_mb: 256,
  disk_gib: 1,
});

Deno.test("doctor: every check against a real control plane, and each one's failure", async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "otx-doctor-" });
  const cp = await startTestCp(dir, new LogCapture());
  const agent = new FakeAgent(cp, "node-a");
  const url = `http://127.0.0.1:${cp.publicPort}`;
  let health: TlsServer | undefined;
  try {
    const token = await login(cp);
    const api = await apiFor(cp);
    const target = ["--endpoint", url, "--token", token];
    await agent.bootstrap();
    assertEquals((await agent.heartbeat()).status, 200);
    // FakeAgent has no /healthz: a second mTLS server with the agent's real certificate
    // answers the control plane's ping while the node advertises it.
    health = await serveTls({
      hostname: "127.0.0.1",
      port: 0,
      certPem: agent.certPem,
      keyPem: agent.keyPem,
      caPem: agent.caPem,
      requireClientCert: true,
      fetch: (req) =>
        new URL(req.url).pathname === "/healthz"
          ? Response.json({ status: "ok", version: "9.9.9" })
          : new Response("not found", { status: 404 }),
    });
    const healthAt = `https://127.0.0.1:${health.port}`;
    assertEquals((await agent.heartbeat({ endpoint: healthAt })).status, 200);

    await t.step("healthy cluster: everything passes, TCG only warns, exit 0", async () => {
      const d = await doctor(target);
      assertEquals(statuses(d), {
        config: "pass",
        reachable: "pass",
        clock_skew: "pass",
        token: "pass",
        workers: "pass",
        "node_state[node-a]": "pass",
        "agent_ping[node-a]": "pass",
        "kvm[node-a]": "warn",
        "pool_space[node-a]": "pass",
        default_pool: "pass",
        failed_tasks: "pass",
      });
      assertEquals(d.code, 0);
      assertMatch(only(d, "kvm").symptom!, /slow/);
      assertMatch(only(d, "agent_ping").detail, /^https:.* answered in [\d.]+ ms, agent 9\.9\.9$/);
      assertEquals(only(d, "pool_space").symptom, undefined, "no guidance on pass");
    });

    await t.step("text output: symptom, cause and recovery under a failure", async () => {
      const io = fakeIo();
      const code = await run(["doctor", "--endpoint", url, "--token", "otx_bogus"], {
        ...io,
        out: (t) => io.out(t),
        err: (t) => io.err(t),
        now: () => Date.now(),
      });
      assertEquals(code, 1);
      assertMatch(io.stdout, /^FAIL {2}token +api_error: unauthenticated: /m);
      assertMatch(io.stdout, /symptom: api_error: unauthenticated from the CLI/);
      assertMatch(io.stdout, /recover: re-login, or use a long-lived otx_\* API token/);
      assertMatch(io.stdout, /\d+ passed, 0 warnings, 1 failed, 0 skipped\n$/);
      assertEquals(io.stderr, "error: doctor: 1 check(s) failed\n");
      assert(!io.stdout.includes("\x1b["), "no colour");
    });

    await t.step("config: nothing configured", async () => {
      const d = await doctor([], { env: { HOME: dir } });
      assertEquals(statuses(d), { config: "fail" });
      assertEquals(d.code, 1);
    });

    await t.step("reachable: connection refused", async () => {
      const d = await doctor(["--endpoint", `http://127.0.0.1:${closedPort()}`, "--token", "x"]);
      assertEquals(statuses(d), { config: "pass", reachable: "fail" });
      assertMatch(only(d, "reachable").detail, /cannot reach/);
    });

    await t.step("reachable: /readyz answers 503 store_unavailable", async () => {
      const fake = startFakeApi({
        "GET /readyz": () => envelope(503, "store_unavailable", "store unavailable: timeout"),
      });
      try {
        const d = await doctor(["--endpoint", fake.url, "--token", "x"]);
        assertEquals(statuses(d), { config: "pass", reachable: "fail" });
        assertMatch(only(d, "reachable").detail, /HTTP 503.*store_unavailable/);
      } finally {
        await fake.close();
      }
    });

    await t.step("clock_skew: local clock 10 minutes ahead", async () => {
      const d = await doctor(target, { now: Date.now() + 600_000 });
      assertEquals(only(d, "clock_skew").status, "fail");
      assertMatch(only(d, "clock_skew").detail, /^local clock \+(599|600|601)s/);
      assertEquals(d.code, 1);
    });

    await t.step("token: refused token", async () => {
      const d = await doctor(["--endpoint", url, "--token", "otx_bogus"]);
      assertEquals(only(d, "token").status, "fail");
      assertEquals(d.checks.at(-1)!.id, "token", "nothing authenticated runs after");
    });

    await t.step("kvm: passes once the agent reports KVM", async () => {
      assertEquals((await agent.heartbeat({ accelerator: "kvm" })).status, 200);
      const d = await doctor(target);
      assertEquals(only(d, "kvm", "node-a").status, "pass");
    });

    await t.step("pool_space: a failed pool instance and a nearly full one", async () => {
      const pools = (status: "ready" | "failed", available: number) => [{
        name: "default",
        path: `${dir}/agent-pools/default`,
        status,
        message: status === "failed" ? "mkdir: permission denied" : null,
        total_bytes: 1e12,
        available_bytes: available,
        images: [],
      }];
      assertEquals((await agent.heartbeat({ pools: pools("ready", 5e10) })).status, 200);
      let d = await doctor(target);
      assertEquals(only(d, "pool_space").status, "warn");
      assertMatch(only(d, "pool_space").detail, /default@node-a: low on space, .* \(5%\)/);
      assertEquals((await agent.heartbeat({ pools: pools("failed", 5e11) })).status, 200);
      d = await doctor(target);
      assertEquals(only(d, "pool_space").status, "fail");
      assertMatch(only(d, "pool_space").detail, /failed: mkdir: permission denied/);
      assertEquals((await agent.heartbeat({ pools: pools("ready", 5e11) })).status, 200);
      assertEquals(only(await doctor(target), "pool_space").status, "pass");
    });

    await t.step("default_pool: unset", async () => {
      assertEquals((await api("DELETE", "/v1/cluster/default-pool")).status, 200);
      const d = await doctor(target);
      assertEquals(only(d, "default_pool").status, "fail");
      assertEquals(
        only(d, "default_pool").recover,
        "otherix cluster set-default-pool NAME, " +
          "or pass --pool explicitly",
      );
      assertEquals((await api("PUT", "/v1/cluster/default-pool", { name: "default" })).status, 200);
      assertEquals(only(await doctor(target), "default_pool").status, "pass");
    });

    await t.step("failed_tasks: a create that failed with qemu_spawn_failed", async () => {
      agent.scripts.set("broken", {
        kind: "fail",
        error: { code: "qemu_spawn_failed", message: "qemu exploded" },
      });
      const created = await api("POST", "/v1/vms", { ...VM("broken"), pool: "default" });
      assertEquals(created.status, 202, created.text);
      await until(
        "the create failed",
        async () => (await api("GET", "/v1/vms/broken")).json.status === "failed",
      );
      const d = await doctor(target);
      assertEquals(only(d, "failed_tasks").status, "fail");
      assertEquals(
        only(d, "failed_tasks").detail,
        "failed in the last hour: broken: vm.create qemu_spawn_failed",
      );
      const later = await doctor(target, { now: Date.now() + 3700_000 });
      assertEquals(only(later, "failed_tasks").status, "pass", "an hour later it is history");
      assertEquals(
        (await doctor([...target, "--node", "node-b"])).checks
          .find((c) => c.id === "failed_tasks")?.status,
        "pass",
        "--node narrows VMs",
      );
    });

    await t.step("--node: unknown node", async () => {
      const d = await doctor([...target, "--node", "node-b"]);
      assertEquals(only(d, "node_state").status, "fail");
      assertEquals(only(d, "node_state").detail, `node "node-b" not found`);
      assertEquals(d.checks.filter((c) => c.node === "node-a"), [], "node-a not checked");
    });

    await t.step("agent_ping and node_state: the agent goes away", async () => {
      assertEquals((await agent.heartbeat({ endpoint: healthAt })).status, 200);
      assertEquals(only(await doctor(target), "agent_ping").status, "pass");
      await health!.close();
      let d = await doctor([...target, "--node", "node-a"]);
      assertEquals(only(d, "agent_ping", "node-a").status, "fail");
      assertMatch(only(d, "agent_ping").detail, /agent_unreachable: .*ECONNREFUSED/);
      await until(
        "node-a unreachable",
        async () => (await api("GET", "/v1/nodes/node-a")).json.status === "unreachable",
      );
      d = await doctor([...target, "--node", "node-a"]);
      assertEquals(only(d, "node_state", "node-a").status, "fail");
      assertMatch(only(d, "node_state").detail, /^unreachable, last heartbeat \d+s ago$/);
      assertMatch(only(d, "node_state").recover!, /journalctl -u otherix-agent/);
    });

    await t.step("the real CLI process: exit status 1 and the JSON report", async () => {
      const r = await runCli(["doctor", ...target, "-o", "json"], { home: dir });
      assertEquals(r.code, 1, r.stderr);
      const checks = JSON.parse(r.stdout).checks as CheckResult[];
      assertEquals(checks.find((c) => c.id === "node_state")?.status, "fail");
      assertMatch(r.stderr, /^error: doctor: 3 check\(s\) failed\n$/m); // node, ping, task
    });
  } finally {
    await health?.close().catch(() => {});
    await agent.close();
    await cp.stop();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("doctor workers: tasks stay pending when workers are disabled", async () => {
  const dir = await Deno.makeTempDir({ prefix: "otx-doctor-w-" });
  const cfg = parseApiConfig(
    `server:\n  listen: 127.0.0.1:0\n  agent_listen: 127.0.0.1:0\n` +
      `store:\n  data_dir: ${dir}\n` +
      `storage_pools:\n  allowed_path_prefixes: [${dir}/agent-pools/]\n` +
      `nodes:\n  heartbeat_interval_seconds: 1\n  stale_threshold_seconds: 30\n` +
      `workers:\n  enabled: false\n` +
      `images:\n  url_policy:\n    allow_loopback: true\n`,
  );
  const cp = await startControlPlane(cfg, new LogCapture().logger(), {
    getEnv: (n) =>
      ({
        OTHERIX_BOOTSTRAP_ADMIN_EMAIL: "admin@example.com",
        OTHERIX_BOOTSTRAP_ADMIN_PASSWORD: "admin-password",
      })[n],
    host: { hostname: "localhost", addresses: [] },
  });
  const agent = new FakeAgent(cp, "node-a");
  try {
    const token = await login(cp);
    const api = await apiFor(cp);
    await agent.bootstrap();
    assertEquals((await agent.heartbeat()).status, 200);
    const created = await api("POST", "/v1/vms", { ...VM("waiting"), pool: "default" });
    assertEquals(created.status, 202, created.text);
    const target = ["--endpoint", `http://127.0.0.1:${cp.publicPort}`, "--token", token];
    const now = await doctor(target);
    assertEquals(only(now, "workers").status, "pass", "a fresh pending task is normal");
    // Two minutes later (the task's age is measured on the local clock).
    const later = await doctor(target, { now: Date.now() + 120_000 });
    assertEquals(only(later, "workers").status, "fail");
    assertMatch(
      only(later, "workers").detail,
      /pending for over 60s: waiting \(vm\.create, 1\d\ds\)/,
    );
    assertMatch(only(later, "workers").recover!, /workers\.enabled: true/);
  } finally {
    await agent.close();
    await cp.stop();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("doctor tls_sans: the public API certificate must name the address used", async (t) => {
  const ca = await createCa("doctor test CA");
  const serve = async (sans: string[]) => {
    const cert = await issueServerCert(ca, "api", "otherix", splitSans(sans));
    return Deno.serve(
      { hostname: "127.0.0.1", port: 0, cert: cert.certPem, key: cert.keyPem, onListen() {} },
      () => new Response("ok"),
    );
  };
  for (
    const [sans, status] of [[["127.0.0.1"], "pass"], [["elsewhere.example"], "fail"]] as const
  ) {
    await t.step(`SANs ${sans.join(",")} → ${status}`, async () => {
      const server = await serve([...sans]);
      try {
        const d = await doctor([
          "--endpoint",
          `https://127.0.0.1:${server.addr.port}`,
          "--token",
          "x",
        ]);
        const r = only(d, "tls_sans");
        assertEquals(r.status, status, r.detail);
        if (status === "fail") {
          assertMatch(r.detail, /does not cover "127\.0\.0\.1": DNS:elsewhere\.example/);
          assertMatch(r.recover!, /cp_cert\.additional_sans/);
        }
      } finally {
        await server.shutdown();
      }
    });
  }
});
