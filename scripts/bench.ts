/**
 * `deno task bench [--n 20]`: measures the control plane + agent overhead of VM operations
 * against real processes (otherix-api on its embedded store, one otherix-agent, QEMU with the
 * offline test image, image already cached) and prints p50/p99 per phase:
 *
 * - create: API accept → worker dispatch → agent steps (image, overlay, seed, spawn, QMP
 *   ready) → `running` visible on the event stream; the same through `otherix vm create
 *   --wait` (CLI wall time, and the CLI's own start-up cost measured by `otherix vm list`);
 * - lifecycle verbs (pause, resume): API accept → QMP command issued → status visible;
 * - the floor: plain `qemu-img create` + `genisoimage` + `qemu-system-*` launched the same
 *   way (daemonized, QMP until `running`), and the ratio of Otherix's accept → visible
 *   `running` to it;
 * - heartbeat fan-in (`--fanin 500,2000`, scripts/bench_fanin.ts): control-plane CPU, heartbeat
 *   latency and store writes per second with that many simulated agents;
 * - first-download throughput (`--download-mib 1024`, scripts/bench_download.ts): the agent's
 *   image cache against `curl | tee | openssl dgst -sha256` + `sync` on one loopback file
 *   (about 45 s for 1 GiB here).
 *
 * - the scheduler (scripts/bench_scheduler.ts): placements per second and p99 decision latency
 *   of `decide()` at 10, 100 and 1,000 nodes, and `POST /v1/vms` latency at 0 and 10,000 VMs.
 *
 * - CLI cold start (scripts/bench_cli.ts): `otherix vm list` / `vm get` against `virsh list`
 *   and a `deno run` hello world.
 *
 * - store backends (scripts/bench_store.ts): `vm get` and `vm list` (page of 100) p99
 *   through `otherix-api` at 10,000 VMs on the embedded store and on etcd, and their ratio.
 *
 * `--only vm|fanin|download|scheduler|cli|store|ha` runs one part (`ha`: VM-create API latency
 * on three replicas on etcd, scripts/bench_ha.ts).
 *
 * Phase boundaries come from the task's `timings` (cp/repo/records.ts TaskRecord), read from
 * the store file after each run; the client's clock and the control plane's are the same
 * machine's. Nothing here asserts: it prints figures.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { join } from "node:path";
import { createParser } from "eventsource-parser";
import { openKvStore } from "../cp/store/kv.ts";
import { keys, type TaskRecord } from "../cp/repo/records.ts";
import { buildQemuArgs, vmFilePaths } from "../agent/qemu.ts";
import { QmpClient } from "../agent/qmp.ts";
import { type Cluster, startCluster, vmBody } from "../test/e2e/cluster.ts";
import { runCli } from "../test/harness.ts";
import { ensureTestImage } from "../test/test_image.ts";
import { benchDownload, printDownloadBench } from "./bench_download.ts";
import { fanIn } from "./bench_fanin.ts";
import { benchScheduler } from "./bench_scheduler.ts";
import { benchCli as benchCliStartup } from "./bench_cli.ts";
import { benchStore } from "./bench_store.ts";
import { benchHa } from "./bench_ha.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    n: { type: "string", default: "20" },
    cli: { type: "string", default: "5" },
    /** Heartbeat fan-in sizes (comma-separated; empty: skip). */
    fanin: { type: "string", default: "500,2000" },
    /** `vm`, `fanin`, `download`, `scheduler`, `cli` or `store` (that part only); default all. */
    only: { type: "string", default: "" },
    /** Size of the first-download bench's file, MiB. */
    "download-mib": { type: "string", default: "1024" },
    /** Write a CPU profile of the control plane per fan-in size into this dir (and summarize). */
    profile: { type: "string", default: "" },
  },
});
const N = Math.max(1, Number(values.n));
const CLI_N = Math.max(1, Number(values.cli));

/** p-th percentile (nearest rank) of `xs`, ms. */
function pct(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))];
}

const rows: [string, number[]][] = [];
function record(name: string, xs: number[]) {
  rows.push([name, xs]);
}

/** Follows `GET /v1/events?kind=vm&name=…` and resolves when `pred(vm)` holds. */
async function watchVm(c: Cluster, name: string) {
  const ctrl = new AbortController();
  const res = await fetch(`${c.api.url}/v1/events?kind=vm&name=${name}`, {
    headers: { authorization: `Bearer ${c.token}`, accept: "text/event-stream" },
    signal: ctrl.signal,
  });
  const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader();
  type Waiter = { pred: (vm: Record<string, unknown>) => boolean; resolve: (t: number) => void };
  const waiters: Waiter[] = [];
  let synced!: () => void;
  const sync = new Promise<void>((r) => (synced = r));
  const parser = createParser({
    onEvent(ev) {
      if (ev.event === "sync") return synced();
      if (ev.event !== "added" && ev.event !== "modified") return;
      const vm = JSON.parse(ev.data).object;
      const at = performance.now();
      for (const w of waiters.splice(0)) {
        if (w.pred(vm)) w.resolve(at);
        else waiters.push(w);
      }
    },
  });
  const pump = (async () => {
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        parser.feed(value);
      }
    } catch { /* closed */ }
  })();
  await sync;
  return {
    until: (pred: Waiter["pred"]) =>
      new Promise<number>((resolve) => waiters.push({ pred, resolve })),
    close: async () => {
      ctrl.abort();
      await reader.cancel().catch(() => {});
      await pump;
    },
  };
}

async function taskTimings(c: Cluster, id: string): Promise<TaskRecord> {
  const store = await openKvStore(join(c.api.dataDir, "store.kv"));
  try {
    return (await store.get<TaskRecord>(keys.task(id)))!.value;
  } finally {
    await store.close();
  }
}

async function benchCreates(c: Cluster) {
  const phases: Record<string, number[]> = {};
  const add = (k: string, v: number) => (phases[k] ??= []).push(v);
  for (let i = 0; i < N; i++) {
    const name = `bench-${i}`;
    const w = await watchVm(c, name);
    const running = w.until((vm) => vm.status === "running");
    const t0 = performance.now();
    const wall0 = Date.now();
    const r = await c.call("POST", "/v1/vms", vmBody(c, name));
    const tAccepted = performance.now();
    const tRunning = await running;
    await w.close();
    const task = await taskTimings(c, r.json.id);
    const t = task.timings ?? {};
    const skew = Date.parse(task.created_at) - wall0; // server accept vs client send, ms
    const agentBase = t.dispatching;
    add("api: POST /v1/vms answered", tAccepted - t0);
    add("worker: accept → dispatch", t.dispatching - skew);
    add("agent: image (cached)", t["agent.image"]);
    add("agent: overlay", t["agent.overlay"] - t["agent.image"]);
    add("agent: seed", t["agent.seed"] - t["agent.overlay"]);
    add("agent: spawn (QEMU up)", t["agent.spawn"] - t["agent.seed"]);
    add("agent: QMP ready", t["agent.qmp_ready"] - t["agent.spawn"]);
    add(
      "result visible after QMP running",
      tRunning - t0 - skew - (agentBase + t["agent.qmp_ready"]),
    );
    add("  of which: agent report → worker", t.agent_done - (agentBase + t["agent.qmp_ready"]));
    add("  of which: worker → event at client", tRunning - t0 - skew - t.agent_done);
    add("total: accept → QEMU exec", agentBase + t["agent.seed"]);
    add("total: accept → running visible (API)", tRunning - t0);
    const d = await c.call("DELETE", `/v1/vms/${name}`);
    await c.waitTask(d.json.id);
  }
  for (const [k, v] of Object.entries(phases)) record(`create  ${k}`, v);
  return phases["total: accept → running visible (API)"];
}

async function benchCli(c: Cluster) {
  const env = {
    HOME: join(c.root, "bench-home"),
    OTHERIX_CONFIG: join(c.root, "bench-home/.otherix/config"),
  };
  const add = await runCli([
    "config",
    "add",
    "cluster",
    "--name",
    "bench",
    "--server",
    c.api.url,
    "--login",
    "admin@otherix.test",
    "--password",
    "correct-horse-battery-staple",
  ], env);
  if (add.code !== 0) throw new Error(add.stderr);
  const walls: number[] = [];
  const baseline: number[] = [];
  for (let i = 0; i < CLI_N; i++) {
    let t = performance.now();
    await runCli(["vm", "list"], env);
    baseline.push(performance.now() - t);
    t = performance.now();
    const r = await runCli([
      "vm",
      "create",
      `cli-${i}`,
      "--image-url",
      c.imageUrl(),
      "--memory-mb",
      "256",
      "--disk-gib",
      "1",
      "--wait",
    ], env);
    walls.push(performance.now() - t);
    if (r.code !== 0) throw new Error(r.stderr);
    const d = await c.call("DELETE", `/v1/vms/cli-${i}`);
    await c.waitTask(d.json.id);
  }
  record("cli     otherix vm list (CLI start-up + 1 request)", baseline);
  record("cli     otherix vm create --wait (wall)", walls);
  record(
    "cli     create --wait minus start-up",
    walls.map((w, i) => w - baseline[i]),
  );
}

async function benchVerbs(c: Cluster) {
  await c.call("POST", "/v1/vms", vmBody(c, "bench-verbs"));
  await c.waitVm("bench-verbs", (v) => v.status === "running");
  const phases: Record<string, number[]> = {};
  const add = (k: string, v: number) => (phases[k] ??= []).push(v);
  for (let i = 0; i < N; i++) {
    for (const [verb, status] of [["pause", "paused"], ["resume", "running"]] as const) {
      const w = await watchVm(c, "bench-verbs");
      const visible = w.until((vm) =>
        vm.status === status &&
        (vm.last_task as { type: string; status: string })?.type === `vm.${verb}` &&
        (vm.last_task as { status: string }).status === "succeeded"
      );
      const t0 = performance.now();
      const wall0 = Date.now();
      const r = await c.call("POST", `/v1/vms/bench-verbs/${verb}`);
      const tAccepted = performance.now();
      const tVisible = await visible;
      await w.close();
      const task = await taskTimings(c, r.json.id);
      const t = task.timings ?? {};
      const skew = Date.parse(task.created_at) - wall0;
      add(`${verb}: API answered`, tAccepted - t0);
      add(`${verb}: accept → QMP command issued`, t.dispatching - skew + t["agent.qmp_command"]);
      add(`${verb}: accept → status visible`, tVisible - t0);
    }
  }
  for (const [k, v] of Object.entries(phases)) record(`verb    ${k}`, v);
  const d = await c.call("DELETE", "/v1/vms/bench-verbs");
  await c.waitTask(d.json.id);
}

async function run(cmd: string, args: string[]) {
  const out = await new Deno.Command(cmd, { args, stdout: "null", stderr: "piped" }).output();
  if (!out.success) throw new Error(`${cmd}: ${new TextDecoder().decode(out.stderr)}`);
}

/** The floor: the same work done by hand, no Otherix. */
async function benchFloor(c: Cluster, accel: "kvm" | "tcg") {
  const image = (await ensureTestImage()).path;
  const dir = await Deno.makeTempDir({ prefix: "otx-floor-" });
  const phases: Record<string, number[]> = {};
  const add = (k: string, v: number) => (phases[k] ??= []).push(v);
  try {
    for (let i = 0; i < N; i++) {
      const id = crypto.randomUUID();
      const files = vmFilePaths(join(dir, "vms"), join(dir, "run"), id);
      await Deno.mkdir(files.vmDir, { recursive: true });
      await Deno.mkdir(files.sockDir, { recursive: true });
      const t0 = performance.now();
      await run("qemu-img", [
        "create",
        "-q",
        "-f",
        "qcow2",
        "-F",
        "raw",
        "-b",
        image,
        files.disk,
        "1G",
      ]);
      const t1 = performance.now();
      await Deno.writeTextFile(join(files.vmDir, "user-data"), "#cloud-config\n");
      await Deno.writeTextFile(join(files.vmDir, "meta-data"), `instance-id: ${id}\n`);
      await run("genisoimage", [
        "-quiet",
        "-output",
        files.seed,
        "-volid",
        "cidata",
        "-joliet",
        "-rock",
        join(files.vmDir, "user-data"),
        join(files.vmDir, "meta-data"),
      ]);
      const t2 = performance.now();
      const args = buildQemuArgs({
        name: `floor-${i}`,
        architecture: "amd64",
        accelerator: accel,
        vcpus: 1,
        memoryMb: 256,
        files,
      });
      await run("qemu-system-x86_64", args);
      const t3 = performance.now();
      const qmp = await QmpClient.connect(files.qmpSock, Date.now() + 30_000);
      for (;;) {
        const st = await qmp.execute("query-status") as { status: string };
        if (st.status === "running") break;
        await new Promise((r) => setTimeout(r, 5));
      }
      const t4 = performance.now();
      await qmp.execute("quit").catch(() => {});
      qmp.close();
      add("qemu-img create (overlay)", t1 - t0);
      add("genisoimage (seed)", t2 - t1);
      add("qemu-system (daemonized, up)", t3 - t2);
      add("QMP running", t4 - t3);
      add("total: start → QEMU exec", t2 - t0);
      add("total: start → running", t4 - t0);
    }
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
  for (const [k, v] of Object.entries(phases)) record(`floor   ${k}`, v);
  void c;
  return phases["total: start → running"];
}

const part = (name: string) => values.only === "" || values.only === name;
if (!["", "vm", "fanin", "download", "scheduler", "cli", "store", "ha"].includes(values.only)) {
  console.error(
    `--only: expected vm, fanin, download, scheduler, cli, store or ha, got "${values.only}"`,
  );
  Deno.exit(2);
}
if (part("vm")) await benchVms();
if (part("fanin") && values.fanin) {
  console.log("\nheartbeat fan-in (interval 15 s, 45 s window after two warm-up intervals)");
  console.log(
    "agents  cp_cpu_%_of_one_core  p50_ms  p99_ms  heartbeats/s  store_writes/s  failures",
  );
  for (const n of values.fanin.split(",").map(Number).filter((x) => x > 0)) {
    const r = await fanIn(n, 15, 45, values.profile || undefined);
    console.log(
      `${String(r.agents).padStart(6)}  ${r.cpuPercent.toFixed(1).padStart(20)}  ` +
        `${r.p50Ms.toFixed(1).padStart(6)}  ${r.p99Ms.toFixed(1).padStart(6)}  ` +
        `${r.heartbeatsPerSecond.toFixed(1).padStart(12)}  ${
          r.writesPerSecond.toFixed(2).padStart(14)
        }  ` +
        `${String(r.failures).padStart(8)}`,
    );
    if (r.writesPerSecond > 0) {
      console.log(`        keys written: ${JSON.stringify(r.writesByPrefix)}`);
    }
  }
  console.log(
    "(goal at 2,000 agents: < 25 % of one core, p99 < 50 ms, no write for idle heartbeats)",
  );
}
if (part("download")) {
  printDownloadBench(
    await benchDownload({ sizeBytes: Number(values["download-mib"]) * 1024 * 1024 }),
  );
}
if (part("scheduler")) await benchScheduler();
if (part("cli")) await benchCliStartup(15);
if (part("store")) await benchStore();
if (part("ha")) await benchHa();

async function benchVms() {
  const c = await startCluster({ prefix: "otx-bench" });
  try {
    console.error(`>> bench: ${N} creates, ${N} pause/resume pairs, ${CLI_N} CLI creates`);
    // Warm the image cache (the figures are for a cached image).
    const warm = await c.call("POST", "/v1/vms", vmBody(c, "bench-warm"));
    await c.waitTask(warm.json.id);
    await c.waitTask((await c.call("DELETE", "/v1/vms/bench-warm")).json.id);
    const node = (await c.call("GET", "/v1/nodes/node-1")).json;
    const ours = await benchCreates(c);
    await benchVerbs(c);
    await benchCli(c);
    const floor = await benchFloor(c, node.accelerator);
    const w = Math.max(...rows.map(([n]) => n.length));
    console.log(`\naccelerator: ${node.accelerator}; n=${N} (CLI n=${CLI_N}); times in ms`);
    console.log(`${"phase".padEnd(w)}  ${"p50".padStart(8)}  ${"p99".padStart(8)}`);
    for (const [name, xs] of rows) {
      console.log(
        `${name.padEnd(w)}  ${pct(xs, 50).toFixed(1).padStart(8)}  ${
          pct(xs, 99).toFixed(1).padStart(8)
        }`,
      );
    }
    const ratio50 = pct(ours, 50) / pct(floor, 50);
    const ratio99 = pct(ours, 99) / pct(floor, 99);
    console.log(
      `\naccept → running visible vs floor start → running: ${ratio50.toFixed(2)}× at p50, ` +
        `${ratio99.toFixed(2)}× at p99 (goal: p99 ≤ 250 ms and < 3× the floor)`,
    );
  } finally {
    await c.close();
  }
}
