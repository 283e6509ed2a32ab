/**
 * VM-create API latency on three control-plane replicas on etcd (issue 11, "Benchmark"),
 * against one control plane on the embedded store: `POST /v1/vms` answered (202 with its
 * task), round-robin over the replicas, one simulated ready node. Workers are off in both so
 * only the accept path is timed (placement, the guarded store transaction, the task record).
 *
 * @module
 */
import { join } from "node:path";
import { newReplica, startHaCluster } from "../test/ha_cluster.ts";
import { type ApiHandle, startApi, tempRoot, waitFor } from "../test/harness.ts";
import { adminAuth, registerSimAgents, sendSimHeartbeat } from "./sim_agents.ts";

/** p-th percentile (nearest rank) of `xs`. */
function pct(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))];
}

/** Times `n` creates spread over `apis`; ms per create. */
async function timeCreates(apis: ApiHandle[], n: number): Promise<number[]> {
  const auths = await Promise.all(apis.map((a) => adminAuth(a)));
  const agents = await registerSimAgents(apis[0], auths[0], 1);
  await sendSimHeartbeat(apis[0], agents[0]); // the node is ready: its default pool is made
  await waitFor("the default pool", async () => {
    const res = await fetch(`${apis[0].url}/v1/pools`, { headers: auths[0] });
    return ((await res.json()).items ?? []).length > 0;
  }, 30_000);
  await sendSimHeartbeat(apis[0], agents[0]); // the pool is ready
  const xs: number[] = [];
  try {
    for (let i = 0; i < n + 5; i++) {
      const k = i % apis.length;
      const t0 = performance.now();
      const res = await fetch(`${apis[k].url}/v1/vms`, {
        method: "POST",
        headers: { ...auths[k], "content-type": "application/json" },
        body: JSON.stringify({
          name: `bench-${i}`,
          image_url: "http://127.0.0.1:1/img.qcow2", // never fetched: workers are off
          architecture: "amd64",
          vcpus: 1,
          memory_mb: 64,
          disk_gib: 1,
        }),
      });
      const text = await res.text();
      if (res.status !== 202) throw new Error(`create: ${res.status} ${text}`);
      if (i >= 5) xs.push(performance.now() - t0); // the first ones warm the caches up
    }
  } finally {
    for (const a of agents) a.client.close();
  }
  return xs;
}

/** Runs the bench and prints its table. */
export async function benchHa(n = 100): Promise<void> {
  const root = await tempRoot("otx-bench-ha");
  const common = {
    workers: { enabled: false },
    // Where the simulated node's default pool lives (scripts/sim_agents.ts).
    storage_pools: { allowed_path_prefixes: ["/var/lib/otherix/pools/"] },
    placement: { resources: { cpu: { overcommit_ratio: 100 }, memory: { overcommit_ratio: 100 } } },
  };
  const replicas = ["cp-1", "cp-2", "cp-3"].map((name) => newReplica(root, name));
  let single: ApiHandle | null = null;
  try {
    single = await startApi({ root: join(root, "single"), config: common });
    const embedded = await timeCreates([single], n);
    await single.proc.stop();
    single = null;
    // etcd's default raft timings, as a real cluster runs.
    await startHaCluster(replicas, {
      poolsDir: join(root, "pools"),
      heartbeatMs: 100,
      electionMs: 1000,
      config: common,
    });
    const ha = await timeCreates(replicas.map((r) => r.api!), n);
    console.log(`VM create API latency (POST /v1/vms → 202, ${n} creates; ms)`);
    for (
      const [name, xs] of [["embedded, 1 replica", embedded], ["etcd, 3 replicas", ha]] as const
    ) {
      console.log(
        `  ${name.padEnd(22)} p50 ${pct(xs, 50).toFixed(1).padStart(6)}  p99 ${
          pct(xs, 99).toFixed(1).padStart(6)
        }`,
      );
    }
    console.log(
      `  ratio etcd/embedded: p50 ${(pct(ha, 50) / pct(embedded, 50)).toFixed(2)}×, p99 ${
        (pct(ha, 99) / pct(embedded, 99)).toFixed(2)
      }×`,
    );
  } finally {
    await single?.proc.stop();
    for (const r of replicas) await r.api?.proc.stop().catch(() => {});
    await Deno.remove(root, { recursive: true }).catch(() => {});
  }
}

if (import.meta.main) await benchHa(Number(Deno.args[0] ?? 100));
