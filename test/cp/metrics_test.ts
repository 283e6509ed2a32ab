/**
 * The control plane's Prometheus metrics (cp/metrics.ts), scraped from a real `otherix-api`
 * process (under its permission sandbox) with a real exposition-format parser, after real
 * requests, a real agent's heartbeats and a VM create carried out by a scripted agent.
 */
import { assert, assertEquals } from "../assert.ts";
import { createPhases } from "../../cp/metrics.ts";
import { apiFor, FakeAgent, LogCapture, startTestCp, until } from "./fixtures.ts";
import { runCli, startApi, tempRoot } from "../harness.ts";
import { type Family, parsePrometheus, sampleValue } from "../prometheus.ts";

async function scrape(url: string): Promise<Map<string, Family>> {
  const res = await fetch(`${url}/metrics`);
  assertEquals(res.status, 200);
  assert((res.headers.get("content-type") ?? "").startsWith("text/plain"), "exposition format");
  return await parsePrometheus(await res.text());
}

Deno.test("metrics: the otherix-api process serves Prometheus text under its sandbox", async () => {
  const root = await tempRoot("otx-metrics");
  const api = await startApi({ root });
  try {
    const r = await runCli(["vm", "list"], { OTHERIX_SERVER: api.url, OTHERIX_API_TOKEN: "bad" });
    assertEquals(r.code, 1);
    const m = await scrape(api.url);
    assertEquals(m.get("otherix_api_requests")!.type, "counter");
    const refused = sampleValue(
      m,
      "otherix_api_requests",
      { method: "GET", route: "/v1/vms", code: "401" },
      "otherix_api_requests_total",
    );
    assert(refused !== undefined && refused >= 1, JSON.stringify(m.get("otherix_api_requests")));
    assertEquals(m.get("otherix_api_request_duration_seconds")!.type, "histogram");
  } finally {
    await api.proc.stop();
    await Deno.remove(root, { recursive: true }).catch(() => {});
  }
});

Deno.test("metrics: nodes, pools, tasks and the VM-create phases", async () => {
  const dir = await Deno.makeTempDir({ prefix: "otx-metrics-" });
  const cp = await startTestCp(dir, new LogCapture(), "", 60);
  const agent = new FakeAgent(cp, "node-a");
  try {
    await agent.bootstrap();
    assertEquals((await agent.heartbeat()).status, 200);
    const api = await apiFor(cp);
    const created = await api("POST", "/v1/vms", {
      name: "web",
      image_url: "http://10.11.12.13/images/img.raw",
      architecture: "amd64",
      memory_mb: 256,
      disk_gib: 1,
    });
    assertEquals(created.status, 202, created.text);
    await until(
      "create succeeded",
      async () => (await api("GET", `/v1/tasks/${created.json.id}`)).json.status === "succeeded",
    );
    const url = `http://127.0.0.1:${cp.publicPort}`;
    const m = await scrape(url);
    const value = (family: string, labels: Record<string, string>, name = family) =>
      sampleValue(m, family, labels, name);
    assertEquals(value("otherix_node_status", { node: "node-a", status: "ready" }), 1);
    assertEquals(value("otherix_node_status", { node: "node-a", status: "gone" }), 0);
    const age = value("otherix_node_heartbeat_age_seconds", { node: "node-a" })!;
    assert(age >= 0 && age < 60, `heartbeat age ${age}`);
    assertEquals(value("otherix_pool_available_bytes", { pool: "default", node: "node-a" }), 5e11);
    assertEquals(
      value("otherix_tasks", { type: "vm.create", result: "succeeded" }, "otherix_tasks_total"),
      1,
    );
    const phases = (m.get("otherix_vm_create_phase_seconds") as Family).samples
      .filter((s) => s.name.endsWith("_count")).map((s) => s.labels.phase);
    for (const p of ["queue", "dispatch", "record", "total"]) {
      assert(phases.includes(p), `phase ${p} in ${phases}`);
    }
    assertEquals(value("otherix_vms", { status: "running" }), 1);
  } finally {
    await agent.close();
    await cp.stop();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("metrics: VM-create phases from task timings", () => {
  assertEquals(
    createPhases({
      claimed: 10,
      dispatched: 30,
      "agent.image": 1000,
      "agent.overlay": 1100,
      "agent.qmp_ready": 1500,
      agent_done: 1600,
      finished: 1650,
    }),
    {
      queue: 0.01,
      dispatch: 0.02,
      image: 1,
      overlay: 0.1,
      qmp_ready: 0.4,
      record: 0.05,
      total: 1.65,
    },
  );
  assertEquals(createPhases({}), {}, "no marks, no phases");
});
