/**
 * In-process control plane against a scripted mTLS agent: heartbeats, pool provisioning,
 * scheduling, task dispatch/polling/projection, agent error codes, re-dispatch, unreachable
 * agents, node monitor, resumption after restart, heartbeat reconciliation, console log.
 */
import { assert, assertEquals } from "../assert.ts";
import type { ControlPlane } from "../../cp/app.ts";
import { keys, type NodeRecord, type TaskRecord, type VmRecord } from "../../cp/repo/records.ts";
import { enqueueOps, newTask } from "../../cp/tasks/queue.ts";
import { openKvStore } from "../../cp/store/kv.ts";
import type { Task } from "../../shared/api/tasks.ts";
import { createCa, issueServerCert, splitSans } from "../../shared/pki.ts";
import { createTlsClient } from "../../shared/tls.ts";
import { type Api, apiFor, FakeAgent, LogCapture, startTestCp, until } from "./fixtures.ts";

const VM = (name: string, over: Record<string, unknown> = {}) => ({
  name,
  image_url: "http://127.0.0.1:1/images/img.raw",
  architecture: "amd64",
  vcpus: 1,
  memory_mb: 128,
  ...over,
});

async function waitTask(api: Api, id: string): Promise<Task> {
  return await until(`task ${id} terminal`, async () => {
    const r = await api("GET", `/v1/tasks/${id}`);
    return r.json.status === "succeeded" || r.json.status === "failed" ? r.json as Task : null;
  });
}

async function withCp(
  fn: (
    cp: ControlPlane,
    agent: FakeAgent,
    api: Api,
    logs: LogCapture,
    dir: string,
  ) => Promise<void>,
) {
  const dir = await Deno.makeTempDir({ prefix: "otx-cp-" });
  const logs = new LogCapture();
  const cp = await startTestCp(dir, logs);
  const agent = new FakeAgent(cp, "node-a");
  try {
    await agent.bootstrap();
    const api = await apiFor(cp);
    await fn(cp, agent, api, logs, dir);
  } finally {
    await agent.close();
    await cp.stop();
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("cp: heartbeat readies the node, provisions the default pool, VM create→running→delete", async () => {
  await withCp(async (_cp, agent, api, logs, dir) => {
    assertEquals((await api("GET", "/v1/nodes/node-a")).json.status, "pending");
    // The default pool setting is seeded on boot, but no node hosts the pool yet.
    assertEquals(
      (await api("POST", "/v1/vms", VM("early"))).json.error.code,
      "pool_not_found",
    );

    const hb1 = await agent.heartbeat();
    assertEquals(hb1.status, 200);
    assertEquals(hb1.body.node_status, "ready");
    assertEquals(hb1.body.heartbeat_interval_seconds, 1);
    assertEquals(hb1.body.desired_pools, [{ name: "default", path: `${dir}/agent-pools/default` }]);
    assert(logs.has("node ready", { node: "node-a", from: "pending" }));
    let pools = (await api("GET", "/v1/pools?node=node-a")).json.items;
    assertEquals(pools.length, 1);
    assertEquals([pools[0].status, pools[0].is_default], ["ready", true]);
    assertEquals((await api("GET", "/v1/pools?node=node-b")).json.items, []);

    const created = await api("POST", "/v1/vms", VM("vm-1", { user_data: "#cloud-config\n" }));
    assertEquals(created.status, 202);
    assertEquals([created.json.type, created.json.status], ["vm.create", "pending"]);
    const vm0 = (await api("GET", "/v1/vms/vm-1")).json;
    assertEquals([vm0.node, vm0.pool, vm0.image, vm0.desired_phase], [
      "node-a",
      "default",
      "img.raw",
      "running",
    ]);
    assert(!("user_data" in vm0), "user-data is not served");

    const done = await waitTask(api, created.json.id);
    assertEquals(done.status, "succeeded");
    const req = agent.creates[0];
    assertEquals(req.task_id, created.json.id);
    assertEquals(req.vm.id, vm0.id);
    assertEquals(req.pool, { name: "default", path: `${dir}/agent-pools/default` });
    assertEquals(req.vm.user_data, "#cloud-config\n");
    const vm1 = (await api("GET", "/v1/vms/vm-1")).json;
    assertEquals([vm1.status, vm1.error], ["running", null]);
    assertEquals((await api("GET", "/v1/nodes/node-a")).json.vm_count, 1);

    // console log proxied from the agent
    const log = await api("GET", "/v1/vms/vm-1/console-log?tail_bytes=7");
    assertEquals([log.status, log.text], [200, "login: "]);

    // Duplicate name
    assertEquals((await api("POST", "/v1/vms", VM("vm-1"))).json.error.code, "vm_already_exists");

    const del = await api("DELETE", "/v1/vms/vm-1");
    assertEquals([del.status, del.json.type], [202, "vm.delete"]);
    assertEquals((await waitTask(api, del.json.id)).status, "succeeded");
    assertEquals(agent.deletes[0], { vmId: vm0.id, taskId: del.json.id });
    assertEquals((await api("GET", "/v1/vms/vm-1")).json.error.code, "vm_not_found");
    pools = (await api("GET", "/v1/pools")).json.items;
    assertEquals(pools.length, 1);
  });
});

Deno.test("cp: image URLs the agent would refuse are refused first: 400, nothing stored or sent", async () => {
  await withCp(async (_cp, agent, api) => {
    await agent.heartbeat();
    for (const url of ["not-a-url", "http://h/.hidden.img", "http://h/x.img.sha256", "ftp://h/x"]) {
      const res = await api("POST", "/v1/vms", VM("refused", { image_url: url }));
      assertEquals([res.status, res.json.error.code], [400, "validation_failed"], url);
      assertEquals(res.json.error.details.fields[0].path, "image_url", url);
    }
    assertEquals((await api("GET", "/v1/vms/refused")).json.error.code, "vm_not_found");
    assertEquals((await api("GET", "/v1/vms")).json.items, []);
    assertEquals(agent.creates.length, 0);
  });
});

Deno.test("cp: agent task errors are kept verbatim; lost agent tasks are re-dispatched", async () => {
  await withCp(async (_cp, agent, api) => {
    await agent.heartbeat();
    agent.scripts.set("bad-sum", {
      kind: "fail",
      error: { code: "checksum_mismatch", message: "sha256 abc != def" },
    });
    agent.scripts.set("lost", { kind: "lose-once" });
    agent.scripts.set("refused", {
      kind: "reject",
      status: 500,
      error: { code: "qemu_spawn_failed", message: "qemu exploded" },
    });
    const t1 = (await api("POST", "/v1/vms", VM("bad-sum"))).json;
    const t2 = (await api("POST", "/v1/vms", VM("lost"))).json;
    const t3 = (await api("POST", "/v1/vms", VM("refused"))).json;
    const d1 = await waitTask(api, t1.id);
    assertEquals(d1.error, { code: "checksum_mismatch", message: "sha256 abc != def" });
    const vm = (await api("GET", "/v1/vms/bad-sum")).json;
    assertEquals([vm.status, vm.error.code], ["failed", "checksum_mismatch"]);
    assertEquals((await waitTask(api, t2.id)).status, "succeeded");
    assertEquals(agent.creates.filter((c) => c.vm.name === "lost").length, 2, "re-dispatched once");
    const d3 = await waitTask(api, t3.id);
    assertEquals([d3.error?.code, d3.error?.message], ["qemu_spawn_failed", "qemu exploded"]);

    // A failed VM can be deleted (the agent does not know it: already gone).
    const del = (await api("DELETE", "/v1/vms/refused")).json;
    assertEquals((await waitTask(api, del.id)).status, "succeeded");
    assertEquals((await api("GET", "/v1/vms/refused")).status, 404);
  });
});

Deno.test("cp: delete during an in-flight create cancels it; repeated delete returns the same task", async () => {
  await withCp(async (cp, agent, api) => {
    await agent.heartbeat();
    agent.scripts.set("slow", { kind: "succeed", polls: 1_000_000 });
    const t = (await api("POST", "/v1/vms", VM("slow"))).json;
    await until(
      "creating",
      async () => (await api("GET", "/v1/vms/slow")).json.status === "creating",
    );
    const d1 = await api("DELETE", "/v1/vms/slow");
    assertEquals(d1.status, 202);
    assertEquals(d1.json.type, "vm.delete");
    const d2 = (await api("DELETE", "/v1/vms/slow")).json;
    assertEquals(d2.id, d1.json.id, "a second delete returns the same task");
    const create = await waitTask(api, t.id);
    assertEquals([create.status, create.error?.code], ["failed", "task_cancelled"]);
    assertEquals((await waitTask(api, d1.json.id)).status, "succeeded");
    assertEquals((await api("GET", "/v1/vms/slow")).status, 404);
    const vmId = agent.creates.find((c) => c.vm.name === "slow")!.vm.id;
    assert(agent.deletes.some((d) => d.vmId === vmId), "the agent was told to delete the VM");
    assertEquals(await cp.ctx.store.get(keys.activeTask(t.id)), null);
  });
});

Deno.test("cp: unreachable agent → agent_unreachable; node not ready at dispatch → node_not_ready", async () => {
  await withCp(async (cp, agent, api) => {
    await agent.heartbeat();
    await agent.server!.close();
    const t = (await api("POST", "/v1/vms", VM("vm-x"))).json;
    const done = await waitTask(api, t.id);
    assertEquals(done.error?.code, "agent_unreachable");
    assertEquals((await api("GET", "/v1/vms/vm-x")).json.status, "failed");

    // A queued task whose node is not ready fails at dispatch.
    await cp.ctx.store.put(keys.node("node-a"), {
      ...(await cp.ctx.store.get<NodeRecord>(keys.node("node-a")))!.value,
      status: "unreachable",
    });
    const vm = (await cp.ctx.store.get<VmRecord>(keys.vm("vm-x")))!.value;
    const task = newTask("vm.delete", vm, new Date());
    await cp.ctx.store.txn({
      compare: [],
      success: [
        { type: "put", key: keys.vm("vm-x"), value: { ...vm, active_task_id: task.id } },
        ...enqueueOps(task),
      ],
    });
    const d = await waitTask(api, task.id);
    assertEquals(d.error?.code, "node_not_ready");
  });
});

Deno.test("cp: node monitor flips ready→unreachable; heartbeat brings it back; VM state reconciled", async () => {
  await withCp(async (cp, agent, api, logs) => {
    await agent.heartbeat();
    const t = (await api("POST", "/v1/vms", VM("vm-r"))).json;
    await waitTask(api, t.id);
    await until(
      "unreachable",
      async () => (await api("GET", "/v1/nodes/node-a")).json.status === "unreachable",
      6000,
    );
    assert(logs.has("node unreachable", { node: "node-a" }));
    // No eligible node while unreachable.
    const e = await api("POST", "/v1/vms", VM("vm-s"));
    assertEquals([e.status, e.json.error.code], [409, "no_eligible_nodes"]);
    assertEquals(e.json.error.details.candidates[0].reasons, ["node is unreachable"]);
    assertEquals((await api("GET", "/v1/vms")).json.items.map((v: VmRecord) => v.name), ["vm-r"]);

    assertEquals((await api("GET", "/v1/vms/vm-r")).json.status, "unknown");

    // The agent reports the guest shut itself down: the VM controller records it (the
    // restart policy on-failure keeps it stopped).
    const vm = (await cp.ctx.store.get<VmRecord>(keys.vm("vm-r")))!.value;
    const exit = { reason: "guest-shutdown" as const, at: new Date().toISOString(), detail: null };
    agent.vms.set(vm.id, { id: vm.id, name: "vm-r", phase: "stopped", pid: null, exit });
    const hb = await agent.heartbeat();
    assertEquals(hb.body.node_status, "ready");
    // Logged by the node controller when it sees the change (not by the heartbeat handler).
    await until(
      "node ready logged",
      () => logs.has("node ready", { node: "node-a", from: "unreachable" }),
    );
    const after = await until("vm-r stopped", async () => {
      const v = (await api("GET", "/v1/vms/vm-r")).json;
      return v.status === "stopped" ? v : null;
    });
    assertEquals([after.desired_phase, after.last_exit?.reason], ["stopped", "guest-shutdown"]);
  });
});

Deno.test("cp: a task runner that fails unexpectedly is re-run, not stranded", async () => {
  await withCp(async (cp, agent, api, logs) => {
    await agent.heartbeat();
    // The first dispatch blows up outside the agent protocol (as a store error would).
    const agents = cp.ctx.agents;
    const createVm = agents.createVm.bind(agents);
    let failures = 0;
    agents.createVm = (...args) => {
      if (failures++ === 0) return Promise.reject(new TypeError("boom"));
      return createVm(...args);
    };
    const t = (await api("POST", "/v1/vms", VM("vm-retry"))).json;
    assertEquals((await waitTask(api, t.id)).status, "succeeded");
    assert(logs.has("task handler failed; releasing the claim and retrying", { task_id: t.id }));
    assertEquals((await api("GET", "/v1/vms/vm-retry")).json.status, "running");
  });
});

Deno.test("cp: heartbeat identity checks", async () => {
  await withCp(async (_cp, agent) => {
    const other = await agent.heartbeat({ node_name: "node-b" });
    assertEquals([other.status, other.body.error?.code], [403, "permission_denied"]);
    const bad = await agent.heartbeat({ pools_dir: "relative" });
    assertEquals([bad.status, bad.body.error?.code], [400, "validation_failed"]);
  });
});

Deno.test("cp: a task in flight at shutdown resumes after restart", async () => {
  const dir = await Deno.makeTempDir({ prefix: "otx-cp-" });
  const logs = new LogCapture();
  let cp = await startTestCp(dir, logs);
  const agent = new FakeAgent(cp, "node-a");
  try {
    await agent.bootstrap();
    await agent.heartbeat();
    agent.scripts.set("vm-z", { kind: "succeed", polls: 1_000_000 });
    let api = await apiFor(cp);
    const t = (await api("POST", "/v1/vms", VM("vm-z"))).json;
    await until("dispatched", () => agent.creates.length === 1);
    await cp.stop();
    assertEquals(
      await (async () => {
        const s = await openKvStore(`${dir}/store.kv`);
        try {
          return (await s.get<TaskRecord>(keys.task(t.id)))!.value.status;
        } finally {
          await s.close();
        }
      })(),
      "running",
    );
    // Let the agent finish on the next poll, then restart the CP on the same data dir.
    agent.tasks.get(t.id)!.script = { kind: "succeed", polls: 0 };
    cp = await startTestCp(dir, logs);
    api = await apiFor(cp);
    assertEquals((await waitTask(api, t.id)).status, "succeeded");
    // Resumed by a new claim; the re-dispatch carries the same task id, so the agent runs one
    // operation (dispatches are idempotent by task id).
    assert(agent.creates.every((c) => c.task_id === t.id), "same agent task");
    assertEquals((await waitTask(api, t.id)).attempts, 2);
    assertEquals((await api("GET", "/v1/vms/vm-z")).json.status, "running");
    assert(logs.has("resuming queued tasks"));
  } finally {
    await agent.close();
    await cp.stop();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("cp: public API over TLS when configured; /readyz 503 store_unavailable without a store", async () => {
  const dir = await Deno.makeTempDir({ prefix: "otx-cp-" });
  const logs = new LogCapture();
  const ca = await createCa("test public CA");
  const cert = await issueServerCert(ca, "api", "test", splitSans(["127.0.0.1"]));
  await Deno.writeTextFile(`${dir}/public.crt`, cert.certPem);
  await Deno.writeTextFile(`${dir}/public.key`, cert.keyPem);
  const cp = await startTestCp(
    dir,
    logs,
    `  tls_cert_file: ${dir}/public.crt\n  tls_key_file: ${dir}/public.key\n`,
  );
  const client = createTlsClient({ caPem: ca.certPem });
  try {
    const res = await fetch(`https://127.0.0.1:${cp.publicPort}/readyz`, { client });
    assertEquals([res.status, await res.json()], [200, { status: "ok" }]);
    assert(logs.has("otherix-api started", { public_tls: true }));
    await cp.ctx.store.close();
    const down = await fetch(`https://127.0.0.1:${cp.publicPort}/readyz`, { client });
    assertEquals(down.status, 503);
    assertEquals((await down.json()).error.code, "store_unavailable");
    const live = await fetch(`https://127.0.0.1:${cp.publicPort}/healthz`, { client });
    assertEquals(live.status, 200);
    await live.body?.cancel();
  } finally {
    client.close();
    await cp.stop();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("cp: node pressure from heartbeats: set after 3 low ones (warn), cleared by a healthy one (info); placement skips it", async () => {
  await withCp(async (_cp, agent, api, logs) => {
    await agent.heartbeat();
    const resources = (memFree: number) => ({
      cpu_cores_total: 2,
      load_average_1m: 0.1,
      memory_total_mib: 4096,
      memory_available_mib: memFree,
      system_disk_total_bytes: 1e10,
      system_disk_available_bytes: 5e9,
    });
    for (let i = 0; i < 2; i++) await agent.heartbeat({ resources: resources(100) });
    assertEquals((await api("GET", "/v1/nodes/node-a")).json.pressure.memory.consecutive, 2);
    assert(!logs.has("node under memory pressure"));
    await agent.heartbeat({ resources: resources(100) });
    const n = (await api("GET", "/v1/nodes/node-a")).json;
    assertEquals([n.status, n.pressure.memory.under_pressure], ["ready", true]);
    await until("warn logged", () => logs.has("node under memory pressure", { node: "node-a" }));
    const refused = await api("POST", "/v1/vms", VM("vm-p"));
    assertEquals([refused.status, refused.json.error.code], [409, "no_eligible_nodes"]);
    assertEquals(refused.json.error.details.candidates[0].reasons, [
      "node is under memory pressure",
    ]);
    await agent.heartbeat({ resources: resources(3000) });
    assertEquals((await api("GET", "/v1/nodes/node-a")).json.pressure.memory.under_pressure, false);
    await until("info logged", () => logs.has("node memory pressure cleared", { node: "node-a" }));
    assertEquals((await api("POST", "/v1/vms", VM("vm-p"))).status, 202);
  });
});

Deno.test("cp: a heartbeat advertising a non-https endpoint is refused and changes nothing", async () => {
  await withCp(async (cp, agent) => {
    await agent.heartbeat();
    const before = (await cp.ctx.store.get(keys.node("node-a")))!.modRevision;
    const bad = await agent.heartbeat({ endpoint: "http://127.0.0.1:9443" });
    assertEquals([bad.status, bad.body.error?.code], [400, "validation_failed"]);
    assertEquals((await cp.ctx.store.get(keys.node("node-a")))!.modRevision, before);
  });
});
