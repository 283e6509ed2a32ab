/**
 * The real `agent/main.ts` process under its exact sandbox (`denoRunArgs` from
 * scripts/permissions.ts), against a fake control plane: bootstrap, heartbeats, pool
 * reconciliation, the mTLS API (authz, validation, create/poll/console/delete), graceful
 * SIGTERM stopping QEMU, restart with existing cert material.
 */
import { assert, assertEquals, assertStringIncludes } from "../assert.ts";
import { denoRunArgs } from "../../scripts/permissions.ts";
import { createTlsClient } from "../../shared/tls.ts";
import { AgentTaskSchema, AgentVmListSchema } from "../../shared/api/agent.ts";
import { type FakeCp, startFakeCp } from "./fake_cp.ts";
import { listDir, pidAlive, serveFiles, tinyRawImage } from "./helpers.ts";

interface AgentProc {
  child: Deno.ChildProcess;
  lines: string[];
  waitLine(pred: (l: string) => boolean, ms?: number): Promise<string>;
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
    waitLine(pred, ms = 60_000) {
      const found = lines.find(pred);
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

Deno.test("agent process: bootstrap, heartbeat, pools, mTLS API, VM lifecycle, SIGTERM", async () => {
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
  try {
    await writeAgentFiles(root, cp);
    agent = spawnAgent(root);
    await agent.waitLine((l) => l.includes("agent: bootstrap complete"));
    await agent.waitLine((l) =>
      l.includes("accelerator: tcg (kvm unusable:") || l.includes("accelerator: kvm")
    );
    const serving = JSON.parse(await agent.waitLine((l) => l.includes("agent: serving mTLS API")));
    const port = Number(String(serving.listen).split(":").pop());
    const base = `https://127.0.0.1:${port}`;
    assertEquals(serving.endpoint, `https://${Deno.hostname()}:${port}`);

    // Heartbeats arrive and the pools get reconciled.
    const hb = await waitFor(() =>
      cp.heartbeats.find((h) => h.pools.some((p) => p.name === "default" && p.status === "ready"))
    );
    assertEquals(hb.node_name, "node-a");
    assertEquals(cp.heartbeatPeers[0], "node-a");
    assertEquals(hb.pools_dir, `${root}/state/pools`);
    assert(hb.resources.memory_total_mib > 0 && hb.resources.cpu_cores_total > 0);
    assert(hb.resources.system_disk_total_bytes > 0);
    const def = hb.pools.find((p) => p.name === "default")!;
    assert(def.total_bytes > 0);
    const evil = hb.pools.find((p) => p.name === "evil")!;
    assertEquals(evil.status, "failed");
    assertStringIncludes(evil.message ?? "", "not under the agent's pools directory");
    assertEquals((await Deno.stat(poolPath)).mode! & 0o777, 0o750);
    assertEquals(await listDir(poolPath), ["images"]);

    // Authz: the CP's certificate passes, another agent's gets 403.
    const health = await fetch(`${base}/healthz`, { client });
    assertEquals([health.status, await health.json()], [200, { status: "ok" }]);
    const denied = await fetch(`${base}/v1/vms`, { client: otherAgent });
    assertEquals(denied.status, 403);
    assertEquals((await denied.json()).error.code, "permission_denied");

    // Validation.
    const bad = await fetch(`${base}/v1/vms`, {
      method: "POST",
      client,
      body: JSON.stringify({ task_id: "nope" }),
    });
    assertEquals(bad.status, 400);
    assertEquals((await bad.json()).error.code, "validation_failed");
    const badTask = await fetch(`${base}/v1/tasks/not-a-uuid`, { client });
    assertEquals(badTask.status, 400);
    await badTask.body?.cancel();
    const unknownTask = await fetch(`${base}/v1/tasks/${crypto.randomUUID()}`, { client });
    assertEquals([unknownTask.status, (await unknownTask.json()).error.code], [
      404,
      "task_not_found",
    ]);

    // Create.
    const vmId = crypto.randomUUID();
    const taskId = crypto.randomUUID();
    const body = JSON.stringify({
      task_id: taskId,
      vm: {
        id: vmId,
        name: "tiny",
        image_url: `${http.base}/img/tiny.img`,
        architecture: "amd64",
        vcpus: 1,
        memory_mb: 128,
        disk_gib: 1,
      },
      pool: { name: "default", path: poolPath },
    });
    const created = await fetch(`${base}/v1/vms`, { method: "POST", client, body });
    assertEquals(created.status, 202);
    assertEquals(AgentTaskSchema.parse(await created.json()).id, taskId);
    const t0 = performance.now();
    const task = await waitFor(async () => {
      const r = await fetch(`${base}/v1/tasks/${taskId}`, { client });
      const t = AgentTaskSchema.parse(await r.json());
      return t.status === "succeeded" || t.status === "failed" ? t : undefined;
    });
    console.log(
      `agent process: vm.create task finished in ~${Math.round(performance.now() - t0)} ms`,
    );
    assertEquals(task.status, "succeeded", JSON.stringify(task.error));
    assertEquals(task.result, {
      phase: "running",
      accelerator: "tcg",
      image: "tiny.img",
      image_cache_hit: false,
    });
    // Repeat with the same task id: the same task.
    const again = await fetch(`${base}/v1/vms`, { method: "POST", client, body });
    assertEquals([again.status, (await again.json()).status], [202, "succeeded"]);
    const list = AgentVmListSchema.parse(await (await fetch(`${base}/v1/vms`, { client })).json());
    assertEquals(list.items.length, 1);
    const pid = list.items[0].pid!;
    assertEquals(list.items[0].phase, "running");
    assert(await pidAlive(pid));
    const logRes = await fetch(`${base}/v1/vms/${vmId}/console-log?tail_bytes=64`, { client });
    assertEquals(logRes.status, 200);
    assertStringIncludes(logRes.headers.get("content-type") ?? "", "text/plain");
    await logRes.text();
    const nolog = await fetch(`${base}/v1/vms/${crypto.randomUUID()}/console-log`, { client });
    assertEquals([nolog.status, (await nolog.json()).error.code], [404, "vm_not_found"]);
    await waitFor(() =>
      cp.heartbeats.find((h) => h.vms.some((v) => v.id === vmId && v.phase === "running"))
    );
    await waitFor(() =>
      cp.heartbeats.find((h) =>
        h.pools.some((p) => p.name === "default" && p.images.some((i) => i.basename === "tiny.img"))
      )
    );

    // SIGTERM: QEMU is stopped cleanly, the agent exits 0.
    agent.child.kill("SIGTERM");
    const st = await agent.exited;
    assertEquals(st.code, 0, agent.lines.join("\n"));
    assert(agent.lines.some((l) => l.includes("qemu: stopped for agent shutdown")));
    if (Deno.env.get("OTHERIX_TEST_VERBOSE")) console.log(agent.lines.join("\n"));
    assertEquals(await pidAlive(pid), false);

    // Restart: existing cert material, the VM is reported stopped; delete it over the API.
    const hbBefore = cp.heartbeats.length;
    agent = spawnAgent(root);
    await agent.waitLine((l) => l.includes("agent: using existing cert material"));
    const serving2 = JSON.parse(await agent.waitLine((l) => l.includes("agent: serving mTLS API")));
    const base2 = `https://127.0.0.1:${String(serving2.listen).split(":").pop()}`;
    await waitFor(() =>
      cp.heartbeats.slice(hbBefore).find((h) =>
        h.vms.some((v) => v.id === vmId && v.phase === "stopped")
      )
    );
    assertEquals(cp.bootstrapCalls, 1);
    const delTask = crypto.randomUUID();
    const del = await fetch(`${base2}/v1/vms/${vmId}?task_id=${delTask}`, {
      method: "DELETE",
      client,
    });
    assertEquals(del.status, 202);
    await del.body?.cancel();
    const delDone = await waitFor(async () => {
      const t = AgentTaskSchema.parse(
        await (await fetch(`${base2}/v1/tasks/${delTask}`, { client })).json(),
      );
      return t.status === "succeeded" || t.status === "failed" ? t : undefined;
    });
    assertEquals(delDone.status, "succeeded", JSON.stringify(delDone.error));
    assertEquals(await listDir(`${root}/state/vms`), []);
    assertEquals(await listDir(`${root}/run/vms`), []);
    agent.child.kill("SIGTERM");
    assertEquals((await agent.exited).code, 0);
    agent = null;
  } finally {
    if (agent) {
      try {
        agent.child.kill("SIGKILL");
      } catch { /* already exited */ }
      await agent.exited;
    }
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
