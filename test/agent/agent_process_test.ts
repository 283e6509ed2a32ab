/**
 * The real `agent/main.ts` process under its exact sandbox (`denoRunArgs` from
 * scripts/permissions.ts), against a fake control plane: bootstrap, heartbeats, pools (from
 * heartbeats and `PUT /v1/pools`), the mTLS API (authz, validation, create, verbs, console
 * WebSocket, delete), reports pushed as things change, and VMs that outlive the agent (SIGTERM
 * and SIGKILL, then re-adoption by the next agent process), one tiny QEMU guest throughout.
 */
import { AGENT_VERSION } from "../../agent/version.ts";
import { assert, assertEquals, assertStringIncludes } from "../assert.ts";
import { denoRunArgs } from "../../scripts/permissions.ts";
import { createTlsClient } from "../../shared/tls.ts";
import {
  type AgentTask,
  AgentTaskSchema,
  AgentVmListSchema,
  type NodeReport,
} from "../../shared/api/agent.ts";
import { isTerminal } from "../../shared/api/tasks.ts";
import { type FakeCp, startFakeCp } from "./fake_cp.ts";
import {
  killQemus,
  listDir,
  pidAlive,
  qemuPidsMentioning,
  serveFiles,
  tinyRawImage,
  waitGone,
} from "./helpers.ts";

interface AgentProc {
  child: Deno.ChildProcess;
  lines: string[];
  /** The first line (at index ≥ `from`, default 0) matching `pred`, waiting up to `ms`. */
  waitLine(pred: (l: string) => boolean, ms?: number, from?: number): Promise<string>;
  exited: Promise<Deno.CommandStatus>;
}

function spawnAgent(root: string): AgentProc {
  const roots = { config: `${root}/etc`, state: `${root}/state`, run: `${root}/run` };
  const env: Record<string, string> = { PATH: Deno.env.get("PATH") ?? "/usr/bin:/bin" };
  for (const k of ["HOME", "DENO_DIR"]) {
    const v = Deno.env.get(k);
    if (v) env[k] = v;
  }
  const child = new Deno.Command(Deno.execPath(), {
    args: denoRunArgs("otherix-agent", roots, ["--config", `${root}/etc/agent.yaml`]),
    clearEnv: true,
    env,
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const lines: string[] = [];
  const waiters: { pred: (l: string) => boolean; resolve: (l: string) => void }[] = [];
  const reading = (async () => {
    let buf = "";
    const dec = new TextDecoder();
    for await (const chunk of child.stderr) {
      buf += dec.decode(chunk, { stream: true });
      let nl;
      while ((nl = buf.indexOf("\n")) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        lines.push(line);
        for (const w of [...waiters]) {
          if (w.pred(line)) {
            waiters.splice(waiters.indexOf(w), 1);
            w.resolve(line);
          }
        }
      }
    }
  })();
  return {
    child,
    lines,
    exited: child.status.then(async (s) => {
      await reading;
      return s;
    }),
    waitLine(pred, ms = 60_000, from = 0) {
      const found = lines.slice(from).find(pred);
      if (found) return Promise.resolve(found);
      return new Promise((resolve, reject) => {
        const t = setTimeout(
          () => reject(new Error(`timed out waiting for a log line; got:\n${lines.join("\n")}`)),
          ms,
        );
        waiters.push({
          pred,
          resolve: (l) => {
            clearTimeout(t);
            resolve(l);
          },
        });
      });
    },
  };
}

async function writeAgentFiles(root: string, cp: FakeCp, fingerprint = cp.fingerprint) {
  for (const d of ["etc", "state", "run"]) await Deno.mkdir(`${root}/${d}`, { recursive: true });
  await Deno.writeTextFile(
    `${root}/etc/agent.yaml`,
    [
      "paths:",
      `  config_dir: ${root}/etc`,
      `  state_dir: ${root}/state`,
      `  run_dir: ${root}/run`,
      "server:",
      '  listen: "127.0.0.1:0"',
      "heartbeat:",
      "  interval_seconds: 1",
      "images:", // images come from loopback: opt in (refused by default)
      "  url_policy: {allow_loopback: true}",
      "log:",
      "  level: debug",
    ].join("\n") + "\n",
  );
  await Deno.writeTextFile(
    `${root}/etc/bootstrap.env`,
    `OTHERIX_BOOTSTRAP__CP_URL=${cp.url}\nOTHERIX_BOOTSTRAP__CA_FINGERPRINT=${fingerprint}\n` +
      "OTHERIX_BOOTSTRAP__NODE_NAME=node-a\n",
  );
  await Deno.writeTextFile(`${root}/etc/bootstrap-token`, cp.token + "\n", { mode: 0o600 });
}

async function waitFor<T>(
  fn: () => T | undefined | Promise<T | undefined>,
  ms = 30_000,
): Promise<T> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    const v = await fn();
    if (v !== undefined) return v;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error("timed out");
}

/** The agent's mTLS API as the control plane calls it. */
function agentApi(base: () => string, client: Deno.HttpClient) {
  const call = async (method: string, path: string, body?: unknown) => {
    const res = await fetch(`${base()}${path}`, {
      method,
      client,
      headers: body === undefined ? {} : { "content-type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.text();
    return { status: res.status, json: text ? JSON.parse(text) : null };
  };
  return {
    call,
    async task(id: string): Promise<AgentTask> {
      return AgentTaskSchema.parse((await call("GET", `/v1/tasks/${id}`)).json);
    },
    /** Polls a task until terminal (the reports are checked separately). */
    async settled(id: string): Promise<AgentTask> {
      return await waitFor(async () => {
        const t = await this.task(id);
        return isTerminal(t.status) ? t : undefined;
      });
    },
    async vms() {
      return AgentVmListSchema.parse((await call("GET", "/v1/vms")).json).items;
    },
    async action(vmId: string, action: string, extra: Record<string, unknown> = {}) {
      return await call("POST", `/v1/vms/${vmId}/actions`, {
        task_id: crypto.randomUUID(),
        action,
        ...extra,
      });
    },
  };
}

/** The port from the agent's `agent: serving mTLS API` log line. */
async function servingBase(agent: AgentProc, from = 0): Promise<string> {
  const line = await agent.waitLine((l) => l.includes("agent: serving mTLS API"), 60_000, from);
  return `https://127.0.0.1:${String(JSON.parse(line).listen).split(":").pop()}`;
}

Deno.test("agent process: bootstrap, pools, mTLS API, verbs, reports, VMs outlive restarts", async (t) => {
  const root = await Deno.makeTempDir({ prefix: "otx-agentp-" });
  const cp = await startFakeCp();
  const image = await tinyRawImage();
  const http = serveFiles(new Map([["/img/tiny.img", image]]));
  const poolPath = `${root}/state/pools/default`;
  cp.desiredPools = [
    { name: "default", path: poolPath },
    { name: "evil", path: `${root}/state/pools-evil/x` },
  ];
  let agent: AgentProc | null = null;
  const cpCert = await cp.cpClient();
  const agentCert = await cp.agentClient("node-b");
  const client = createTlsClient({ caPem: cp.ca.certPem, ...cpCert });
  const otherAgent = createTlsClient({ caPem: cp.ca.certPem, ...agentCert });
  let base = "";
  const api = agentApi(() => base, client);
  const vmId = crypto.randomUUID();
  const createBody = (taskId: string, id = vmId, name = "tiny") => ({
    task_id: taskId,
    vm: {
      id,
      name,
      image_url: `${http.base}/img/tiny.img`,
      architecture: "amd64",
      vcpus: 1,
      memory_mb: 128,
      disk_gib: 1,
    },
    pool: { name: "default", path: poolPath },
  });
  const running = (r: NodeReport, id = vmId) =>
    r.vms.some((v) => v.id === id && v.phase === "running");
  try {
    await writeAgentFiles(root, cp);
    agent = spawnAgent(root);

    await t.step("bootstrap, accelerator, serving, heartbeats, pools reconciled", async () => {
      await agent!.waitLine((l) => l.includes("agent: bootstrap complete"));
      await agent!.waitLine((l) =>
        l.includes("accelerator: tcg (kvm unusable:") || l.includes("accelerator: kvm")
      );
      const serving = JSON.parse(
        await agent!.waitLine((l) => l.includes("agent: serving mTLS API")),
      );
      base = await servingBase(agent!);
      assertEquals(serving.endpoint, `https://${Deno.hostname()}:${new URL(base).port}`);
      const hb = await waitFor(() =>
        cp.heartbeats.find((h) => h.pools.some((p) => p.name === "default" && p.status === "ready"))
      );
      assertEquals(hb.node_name, "node-a");
      assertEquals(cp.heartbeatPeers[0], "node-a");
      assertEquals(hb.pools_dir, `${root}/state/pools`);
      assert(hb.resources.memory_total_mib > 0 && hb.resources.cpu_cores_total > 0);
      assert(hb.resources.system_disk_total_bytes > 0);
      assert(hb.pools.find((p) => p.name === "default")!.total_bytes > 0);
      const evil = hb.pools.find((p) => p.name === "evil")!;
      assertEquals(evil.status, "failed");
      assertStringIncludes(evil.message ?? "", "not under the agent's pools directory");
      assertEquals((await Deno.stat(poolPath)).mode! & 0o777, 0o750);
      assertEquals(await listDir(poolPath), ["images"]);
      // The first report (the empty VM list) was pushed by the node's certificate.
      const first = await cp.waitReport(() => true, { from: 0 });
      assertEquals([first.peer, first.report.vms], ["node-a", []]);
    });

    await t.step("PUT /v1/pools applies the desired pools at once", async () => {
      const extra = `${root}/state/pools/extra`;
      const res = await api.call("PUT", "/v1/pools", {
        pools: [...cp.desiredPools, { name: "extra", path: extra }],
      });
      assertEquals(res.status, 204);
      assertEquals(await listDir(extra), ["images"]); // created before the answer
      const bad = await api.call("PUT", "/v1/pools", { pools: [{ name: "x" }] });
      assertEquals([bad.status, bad.json.error.code], [400, "validation_failed"]);
    });

    await t.step("authz and validation", async () => {
      const health = await api.call("GET", "/healthz");
      assertEquals([health.status, health.json], [200, { status: "ok", version: AGENT_VERSION }]);
      const denied = await fetch(`${base}/v1/vms`, { client: otherAgent });
      assertEquals(denied.status, 403);
      assertEquals((await denied.json()).error.code, "permission_denied");
      const bad = await api.call("POST", "/v1/vms", { task_id: "nope" });
      assertEquals([bad.status, bad.json.error.code], [400, "validation_failed"]);
      const badTask = await api.call("GET", "/v1/tasks/not-a-uuid");
      assertEquals(badTask.status, 400);
      const unknownTask = await api.call("GET", `/v1/tasks/${crypto.randomUUID()}`);
      assertEquals([unknownTask.status, unknownTask.json.error.code], [404, "task_not_found"]);
      const noVm = await api.action(crypto.randomUUID(), "start");
      assertEquals([noVm.status, noVm.json.error.code], [404, "vm_not_found"]);
      const badAction = await api.action(vmId, "explode");
      assertEquals([badAction.status, badAction.json.error.code], [400, "validation_failed"]);
    });

    let pid = 0;
    await t.step(
      "create: 202, the report carrying running is pushed, task acknowledged",
      async () => {
        const taskId = crypto.randomUUID();
        const from = cp.reports.length;
        const created = await api.call("POST", "/v1/vms", createBody(taskId));
        assertEquals(created.status, 202);
        assertEquals(AgentTaskSchema.parse(created.json).id, taskId);
        const pushed = await cp.waitReport((r) => running(r), { from });
        const done = await cp.waitReport(
          (r) => r.tasks.some((x) => x.id === taskId && x.status === "succeeded"),
          { from },
        );
        const task = done.report.tasks.find((x) => x.id === taskId)!;
        assertEquals(task.result, {
          phase: "running",
          accelerator: "tcg",
          image: "tiny.img",
          image_cache_hit: false,
          image_format: "raw",
        });
        // Reports arrive in the order of the changes: running before (or with) the task's end.
        assert(cp.reports.indexOf(pushed) <= cp.reports.indexOf(done));
        pid = pushed.report.vms.find((v) => v.id === vmId)!.pid!;
        assertEquals((await api.task(taskId)).status, "succeeded");
        // Same task id again: the same task.
        const again = await api.call("POST", "/v1/vms", createBody(taskId));
        assertEquals([again.status, again.json.status], [202, "succeeded"]);
        const list = await api.vms();
        assertEquals(list.map((v) => [v.id, v.phase, v.pid]), [[vmId, "running", pid]]);
        assert(await pidAlive(pid));
        const log = await fetch(`${base}/v1/vms/${vmId}/console-log?tail_bytes=64`, { client });
        assertEquals(log.status, 200);
        assertStringIncludes(log.headers.get("content-type") ?? "", "text/plain");
        await log.text();
        const nolog = await api.call("GET", `/v1/vms/${crypto.randomUUID()}/console-log`);
        assertEquals([nolog.status, nolog.json.error.code], [404, "vm_not_found"]);
        // Heartbeats carry the recent task and the image cache.
        await waitFor(() =>
          cp.heartbeats.find((h) =>
            h.tasks.some((x) => x.id === taskId && x.status === "succeeded") &&
            h.pools.some((p) => p.images.some((i) => i.basename === "tiny.img"))
          )
        );
      },
    );

    await t.step("a cached-image create: accepted → report carrying running", async () => {
      const id = crypto.randomUUID();
      const taskId = crypto.randomUUID();
      const from = cp.reports.length;
      const t0 = Date.now();
      const created = await api.call("POST", "/v1/vms", createBody(taskId, id, "cached"));
      assertEquals(created.status, 202);
      const pushed = await cp.waitReport((r) => running(r, id), { from });
      const done = await cp.waitReport(
        (r) => r.tasks.some((x) => x.id === taskId && isTerminal(x.status)),
        { from },
      );
      const task = done.report.tasks.find((x) => x.id === taskId)!;
      assertEquals([task.status, task.result?.image_cache_hit], ["succeeded", true]);
      const accepted = Date.parse(task.created_at);
      // Reports go one at a time and none failed: the n-th accepted one is the n-th sent.
      const sentLines = agent!.lines.filter((l) => l.includes('"report: sent"'));
      const sentLine = JSON.parse(sentLines[cp.reports.indexOf(pushed)]);
      assert(sentLine.phases.filter((p: string) => p === "running").length === 2);
      console.log(
        `cached create: timings ${JSON.stringify(task.timings)} ms; the report carrying ` +
          `running left ${sentLine.waited_ms} ms after the change and was received ` +
          `${pushed.at - accepted} ms after the agent accepted the task ` +
          `(${pushed.at - t0} ms after the POST was sent)`,
      );
      // Delete it over the API: its QEMU and files go.
      const vmPid = pushed.report.vms.find((v) => v.id === id)!.pid!;
      const del = await api.call("DELETE", `/v1/vms/${id}?task_id=${crypto.randomUUID()}`);
      assertEquals((await api.settled(del.json.id)).status, "succeeded");
      await waitGone(vmPid);
      assertEquals(await listDir(`${root}/state/vms`), [vmId]);
      await cp.waitReport((r) => !r.vms.some((v) => v.id === id), { from });
    });

    await t.step("verbs over HTTP: refused at once when the phase says so", async () => {
      const start = await api.action(vmId, "start");
      assertEquals([start.status, start.json.error.code], [409, "vm_invalid_state"]);
      assertEquals(start.json.error.details.phase, "running");
      const pause = await api.action(vmId, "pause");
      assertEquals(pause.status, 202);
      const paused = await api.settled(pause.json.id);
      assertEquals([paused.status, paused.result], ["succeeded", { phase: "paused" }]);
      console.log(`pause: QMP command issued ${paused.timings.qmp_command} ms after accept`);
      await cp.waitReport((r) => r.vms.some((v) => v.id === vmId && v.phase === "paused"), {
        from: 0,
      });
      const resume = await api.action(vmId, "resume");
      assertEquals((await api.settled(resume.json.id)).result, { phase: "running" });
      const resumeAgain = await api.action(vmId, "resume");
      assertEquals([resumeAgain.status, resumeAgain.json.error.details.phase], [409, "running"]);
    });

    await t.step(
      "the console WebSocket is served, and closes with 1000 when QEMU exits",
      async () => {
        const ws = new WebSocket(`${base.replace("https", "wss")}/v1/vms/${vmId}/console`, {
          client,
        } as unknown as string[]);
        const opened = new Promise((resolve, reject) => {
          ws.onopen = resolve;
          ws.onerror = (e) => reject(new Error(`console: ${(e as ErrorEvent).message}`));
        });
        const closed = new Promise<number>((resolve) => (ws.onclose = (e) => resolve(e.code)));
        await opened;
        const from = cp.reports.length;
        const off = await api.action(vmId, "poweroff");
        const task = await api.settled(off.json.id);
        assertEquals([task.status, task.result], ["succeeded", { phase: "stopped" }]);
        assertEquals(await closed, 1000);
        const r = await cp.waitReport(
          (r) => r.vms.some((v) => v.id === vmId && v.phase === "stopped"),
          { from },
        );
        assertEquals(r.report.vms.find((v) => v.id === vmId)?.exit?.reason, "requested");
        await waitGone(pid);
        const startRes = await api.action(vmId, "start");
        assertEquals((await api.settled(startRes.json.id)).result?.phase, "running");
        pid = (await api.vms())[0].pid!;
      },
    );

    for (const signal of ["SIGTERM", "SIGKILL"] as const) {
      await t.step(
        `${signal} of the agent leaves QEMU running; a new agent re-adopts it`,
        async () => {
          agent!.child.kill(signal);
          const st = await agent!.exited;
          if (signal === "SIGTERM") assertEquals(st.code, 0, agent!.lines.join("\n"));
          assert(await pidAlive(pid), "QEMU died with the agent");
          const from = cp.reports.length;
          agent = spawnAgent(root);
          await agent.waitLine((l) => l.includes("agent: using existing cert material"));
          const readopted = await agent.waitLine((l) => l.includes("vm: re-adopted running QEMU"));
          assertEquals(JSON.parse(readopted).pid, pid);
          base = await servingBase(agent);
          const r = await cp.waitReport((r) => running(r), { from });
          assertEquals(r.report.vms.find((v) => v.id === vmId)?.pid, pid);
          assertEquals(await qemuPidsMentioning(vmId), [pid]);
          assertEquals((await api.vms()).map((v) => [v.phase, v.pid]), [["running", pid]]);
        },
      );
    }
    assertEquals(cp.bootstrapCalls, 1);

    await t.step("QEMU killed behind the agent's back → a report with exit crashed", async () => {
      const from = cp.reports.length;
      Deno.kill(pid, "SIGKILL");
      const r = await cp.waitReport(
        (r) => r.vms.some((v) => v.id === vmId && v.phase === "stopped"),
        { from },
      );
      const vm = r.report.vms.find((v) => v.id === vmId)!;
      assertEquals([vm.pid, vm.exit?.reason], [null, "crashed"]);
      assertEquals(vm.exit?.detail, `QEMU pid ${pid} exited unexpectedly`);
    });

    await t.step("delete over the API removes everything; SIGTERM exits 0", async () => {
      const del = await api.call("DELETE", `/v1/vms/${vmId}?task_id=${crypto.randomUUID()}`);
      assertEquals(del.status, 202);
      const done = await api.settled(del.json.id);
      assertEquals(done.status, "succeeded", JSON.stringify(done.error));
      assertEquals(await listDir(`${root}/state/vms`), []);
      assertEquals(await listDir(`${root}/run/vms`), []);
      agent!.child.kill("SIGTERM");
      assertEquals((await agent!.exited).code, 0);
      if (Deno.env.get("OTHERIX_TEST_VERBOSE")) console.log(agent!.lines.join("\n"));
      agent = null;
    });
  } finally {
    if (agent) {
      try {
        agent.child.kill("SIGKILL");
      } catch { /* already exited */ }
      await agent.exited;
    }
    await killQemus(`${root}/run`);
    client.close();
    otherAgent.close();
    await http.server.shutdown();
    await cp.close();
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("agent process: CA fingerprint mismatch exits 1 with the message on stderr", async () => {
  const root = await Deno.makeTempDir({ prefix: "otx-agentp-" });
  const cp = await startFakeCp();
  try {
    const wrong = "sha256:" + "12".repeat(32);
    await writeAgentFiles(root, cp, wrong);
    const agent = spawnAgent(root);
    const st = await agent.exited;
    assertEquals(st.code, 1);
    const text = agent.lines.join("\n");
    assertStringIncludes(
      text,
      `bootstrap: CA fingerprint mismatch (expected ${wrong} got ${cp.fingerprint})`,
    );
    assertEquals(await listDir(`${root}/state/certs`), []);
  } finally {
    await cp.close();
    await Deno.remove(root, { recursive: true });
  }
});
