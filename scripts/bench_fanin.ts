/**
 * Heartbeat fan-in for `deno task bench`: N simulated agents — real mTLS clients, each with
 * its own certificate issued by the cluster CA through the real join-token bootstrap — send
 * heartbeats every `intervalS` seconds (spread evenly) to one `otherix-api` process. Reports
 * the control plane's CPU (% of one core, from `/proc/<pid>/stat`), heartbeat latency
 * (p50/p99) and durable store writes per second (store revisions per second, read from the
 * store file) over a measurement window after two warm-up intervals. Pool scans are off (the
 * simulated agents cannot answer them).
 *
 * The goal (issue "Nodes"): at 2,000 agents under 25 % of one core, p99 under 50 ms, and no
 * durable write for a heartbeat that changes nothing but its timestamp.
 *
 * @module
 */
import { join } from "node:path";
import { openKvStore } from "../cp/store/kv.ts";
import { adminAuth, registerSimAgents, sendSimHeartbeat } from "./sim_agents.ts";
import { freePort, startApi, tempRoot, waitFor } from "../test/harness.ts";
import { keys, type PoolRecord } from "../cp/repo/records.ts";
import { rangeAll } from "../cp/store/store.ts";
import { CpuProfiler, summarize } from "./cpu_profile.ts";

/** One fan-in measurement. */
export interface FanInResult {
  agents: number;
  cpuPercent: number;
  p50Ms: number;
  p99Ms: number;
  heartbeatsPerSecond: number;
  writesPerSecond: number;
  /** Keys written during the window, by first path segment. */
  writesByPrefix: Record<string, number>;
  failures: number;
}

function pct(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)] : NaN;
}

/** CPU seconds (user + system) of process `pid` so far. */
async function cpuSeconds(pid: number): Promise<number> {
  const stat = await Deno.readTextFile(`/proc/${pid}/stat`);
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  // fields 14 and 15 (utime, stime) → indexes 11 and 12 after the state field; clock ticks.
  return (Number(f[11]) + Number(f[12])) / 100;
}

/**
 * Runs one fan-in measurement with `agents` simulated agents. With `profileDir`, the control
 * plane runs under the V8 inspector and a CPU profile of the measurement window is written to
 * `<profileDir>/fanin-<agents>.cpuprofile`, its top functions printed (the inspector itself
 * adds some CPU: compare figures from runs without it).
 */
export async function fanIn(
  agents: number,
  intervalS = 15,
  windowS = 45,
  profileDir?: string,
): Promise<FanInResult> {
  const root = await tempRoot("otx-fanin");
  const inspect = profileDir ? `127.0.0.1:${freePort()}` : null;
  const api = await startApi({
    root,
    denoFlags: inspect ? [`--inspect=${inspect}`] : [],
    config: {
      nodes: {
        heartbeat_interval_seconds: intervalS,
        stale_threshold_seconds: intervalS * 6,
        join_token_ttl_seconds: 3600,
      },
      storage_pools: { allowed_path_prefixes: ["/var/lib/otherix/pools/"] },
      // Heartbeats only: the simulated agents cannot answer pool scans (each would fail after
      // agent_unreachable_timeout); the scans' own cost is not a heartbeat's.
      workers: { storage_pool_scan: { enabled: false } },
      log: { level: "warn" },
    },
  });
  const clients: Deno.HttpClient[] = [];
  let stop = false;
  try {
    const auth = await adminAuth(api);
    // Register every simulated agent through the real bootstrap (token → CSR → certificate).
    const ids = await registerSimAgents(api, auth, agents);
    for (const a of ids) clients.push(a.client);
    const latencies: number[] = [];
    let failures = 0;
    let measuring = false;
    let sent = 0;
    const loops = ids.map(async ({ name, client }, i) => {
      await new Promise((r) => setTimeout(r, (i / ids.length) * intervalS * 1000));
      while (!stop) {
        const t0 = performance.now();
        try {
          const status = await sendSimHeartbeat(api, { name, client });
          if (status !== 200) failures += measuring ? 1 : 0;
          else if (measuring) {
            latencies.push(performance.now() - t0);
            sent++;
          }
        } catch {
          if (measuring) failures++;
        }
        await new Promise((r) => setTimeout(r, intervalS * 1000));
      }
    });
    // Warm-up: two intervals (the first heartbeats make nodes ready and get their default pool
    // provisioned, the second reports it ready); then every heartbeat is a steady-state one.
    await new Promise((r) => setTimeout(r, 2 * intervalS * 1000 + 2000));
    const store = await openKvStore(join(api.dataDir, "store.kv"));
    // Then until every node's default pool is provisioned and reported ready (on a loaded
    // machine that takes longer than two intervals), and one interval more.
    await waitFor(
      "every default pool ready",
      async () => {
        const ready = (await rangeAll<PoolRecord>(store, keys.pools))
          .filter((kv) => kv.value.status === "ready").length;
        return ready >= agents;
      },
      600_000,
      1000,
    );
    await new Promise((r) => setTimeout(r, intervalS * 1000 + 2000));
    const rev0 = Number(await store.currentRevision());
    // What is written during the window, by key prefix (`/nodes/`, `/pools/`, …).
    const byPrefix = new Map<string, number>();
    const unwatch = store.watch("/", (e) => {
      const prefix = e.key.split("/").slice(0, 2).join("/") + "/";
      byPrefix.set(prefix, (byPrefix.get(prefix) ?? 0) + 1);
    }, { fromRevision: String(rev0) });
    const profiler = inspect ? await CpuProfiler.connect(inspect) : null;
    await profiler?.start();
    const cpu0 = await cpuSeconds(api.proc.pid);
    measuring = true;
    await new Promise((r) => setTimeout(r, windowS * 1000));
    measuring = false;
    const cpu1 = await cpuSeconds(api.proc.pid);
    if (profiler) {
      const profile = await profiler.stop();
      profiler.close();
      await Deno.mkdir(profileDir!, { recursive: true });
      const file = join(profileDir!, `fanin-${agents}.cpuprofile`);
      await Deno.writeTextFile(file, JSON.stringify(profile));
      console.log(`CPU profile: ${file}\n${summarize(profile, 25)}`);
    }
    const rev1 = Number(await store.currentRevision());
    unwatch();
    await store.close();
    stop = true;
    await Promise.race([Promise.all(loops), new Promise((r) => setTimeout(r, 100))]);
    return {
      agents,
      cpuPercent: ((cpu1 - cpu0) / windowS) * 100,
      p50Ms: pct(latencies, 50),
      p99Ms: pct(latencies, 99),
      heartbeatsPerSecond: sent / windowS,
      writesPerSecond: (rev1 - rev0) / windowS,
      writesByPrefix: Object.fromEntries(byPrefix),
      failures,
    };
  } finally {
    stop = true;
    await api.proc.stop();
    for (const c of clients) c.close();
    await Deno.remove(root, { recursive: true }).catch(() => {});
  }
}
