/**
 * Store-backend figures for `deno task bench --only store` (issue 11, "HA on etcd"): `vm get`
 * and `vm list` (a page of 100) latency through a real `otherix-api` process at 10,000 VMs,
 * on the embedded store (Deno KV) and on etcd (a real `/usr/bin/etcd` on loopback with TLS and
 * client certificates, etcd's default raft timings), and the etcd/embedded ratio of the p99s.
 * Goal: etcd within 2× of the embedded store on reads.
 *
 * Both runs are the same: the control plane with its task workers off, 10,000 VM records
 * seeded straight through the store (100 per transaction, as a long-running cluster would
 * hold them), a wait until the control plane and etcd are idle again (its controllers
 * reconcile every seeded VM), then sequential requests with an admin token: `GET
 * /v1/vms/<name>` of random names, and `GET /v1/vms?limit=100` walking the pages with their
 * cursors (wrapping around).
 * Nothing here asserts: it prints figures.
 *
 * @module
 */
import { join } from "node:path";
import { keys, type VmRecord } from "../cp/repo/records.ts";
import { openEtcdStore } from "../cp/store/etcd.ts";
import { openKvStore } from "../cp/store/kv.ts";
import type { Op, Store } from "../cp/store/store.ts";
import { startEtcd, type TestEtcd } from "../test/etcd.ts";
import { type ApiHandle, startApi, tempRoot, waitFor } from "../test/harness.ts";
import { adminAuth } from "./sim_agents.ts";

/** p-th percentile (nearest rank) of `xs`. */
function pct(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))];
}

const TS = "2026-01-01T00:00:00.000Z";

/** Latencies of one backend, ms. */
export interface StoreBenchResult {
  backend: "embedded" | "etcd";
  get: { p50: number; p99: number };
  list: { p50: number; p99: number };
  /** Time to seed the VM records, ms. */
  seedMs: number;
}

/** Options of {@link benchStoreBackend}. */
export interface StoreBenchOptions {
  /** VM records seeded (default 10,000). */
  vms?: number;
  /** Measured `vm get` requests (default 1,000). */
  gets?: number;
  /** Measured `vm list` pages (default 300). */
  lists?: number;
}

/** The name of seeded VM `k`. */
const vmName = (k: number) => `seed-${String(k).padStart(5, "0")}`;

function vmRecord(k: number): VmRecord {
  return {
    id: crypto.randomUUID(),
    name: vmName(k),
    owner_id: "bench",
    image_url: "http://127.0.0.1:1/img.qcow2",
    image_sha256: null,
    image: "img.qcow2",
    image_format: "qcow2",
    architecture: "amd64",
    vcpus: 1,
    memory_mb: 128,
    disk_gib: 1,
    user_data: null,
    pool: "default",
    pool_path: "/var/lib/otherix/pools/default",
    node: `node-${k % 20}`,
    status: "running",
    desired_phase: "running",
    restart_policy: "on-failure",
    restart_count: 0,
    last_exit: null,
    last_task: null,
    error: null,
    active_task_id: null,
    last_restart_at: null,
    created_at: TS,
    updated_at: TS,
  };
}

/** `fn`, retried while another process holds the embedded store's lock (SQLite busy). */
async function retried<T>(fn: () => Promise<T>): Promise<T> {
  for (let i = 0;; i++) {
    try {
      return await fn();
    } catch (e) {
      if (i >= 50) throw e;
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}

/** Writes `vms` VM records, 100 per transaction. */
async function seed(store: Store, vms: number): Promise<void> {
  for (let i = 0; i < vms; i += 100) {
    const ops: Op[] = [];
    for (let k = i; k < Math.min(vms, i + 100); k++) {
      const rec = vmRecord(k);
      ops.push({ type: "put", key: keys.vm(rec.name), value: rec });
    }
    await retried(() => store.txn({ compare: [], success: ops }));
  }
}

/** CPU time (user + system) of process `pid` so far, in clock ticks (1/100 s). */
function cpuTicks(pid: number): number {
  const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return Number(f[11]) + Number(f[12]); // utime, stime (fields 14 and 15)
}

/**
 * Waits until the processes `pids` have been idle (under 5 % of a core together) for two
 * seconds in a row: the controllers have caught up with the seeded records (at most 180 s).
 */
async function waitIdle(pids: number[]): Promise<void> {
  const deadline = Date.now() + 180_000;
  let quiet = 0;
  let last = pids.reduce((n, p) => n + cpuTicks(p), 0);
  while (quiet < 2) {
    if (Date.now() > deadline) throw new Error("the control plane did not go idle in 180 s");
    await new Promise((r) => setTimeout(r, 1000));
    const now = pids.reduce((n, p) => n + cpuTicks(p), 0);
    quiet = now - last < 5 ? quiet + 1 : 0;
    last = now;
  }
}

/** Sequential GETs of `path()`, after 50 unmeasured ones; latencies in ms. */
async function timeGets(
  api: ApiHandle,
  auth: Record<string, string>,
  n: number,
  path: () => string,
  onBody: (body: { next_cursor?: string | null }) => void = () => {},
): Promise<number[]> {
  const xs: number[] = [];
  for (let i = 0; i < n + 50; i++) {
    const p = path();
    const t0 = performance.now();
    const res = await fetch(`${api.url}${p}`, { headers: auth });
    const body = await res.json();
    const ms = performance.now() - t0;
    if (!res.ok) throw new Error(`GET ${p}: HTTP ${res.status} ${JSON.stringify(body)}`);
    onBody(body);
    if (i >= 50) xs.push(ms);
  }
  return xs;
}

/**
 * Runs the control plane on one backend with `vms` VMs and times `vm get` / `vm list`.
 *
 * @throws Error when the control plane or etcd does not start, or a request fails
 */
export async function benchStoreBackend(
  backend: "embedded" | "etcd",
  opts: StoreBenchOptions = {},
): Promise<StoreBenchResult> {
  const vms = opts.vms ?? 10_000;
  const root = await tempRoot("otx-bstore");
  let etcd: TestEtcd | null = null;
  let api: ApiHandle | null = null;
  let store: Store | null = null;
  try {
    const dataDir = join(root, "var/lib/otherix/api");
    let storeConfig: Record<string, unknown> = {};
    if (backend === "etcd") {
      // etcd's default raft timings (the fixture's are shortened for tests).
      etcd = await startEtcd({ args: ["--heartbeat-interval=100", "--election-timeout=1000"] });
      const tls = etcd.tls!;
      // The TLS files go in the data dir: the sandboxed process may read it.
      const dir = join(dataDir, "etcd-client");
      await Deno.mkdir(dir, { recursive: true, mode: 0o700 });
      const files = { ca: join(dir, "ca.crt"), cert: join(dir, "c.crt"), key: join(dir, "c.key") };
      for (
        const [f, pem] of [[files.ca, tls.caPem], [files.cert, tls.certPem], [
          files.key,
          tls.keyPem,
        ]]
      ) {
        await Deno.writeTextFile(f, pem, { mode: 0o600 });
      }
      storeConfig = {
        backend: "etcd",
        etcd: {
          endpoints: etcd.endpoints,
          ca_file: files.ca,
          cert_file: files.cert,
          key_file: files.key,
        },
      };
    }
    api = await startApi({
      root,
      config: {
        store: storeConfig,
        nodes: { heartbeat_interval_seconds: 600, stale_threshold_seconds: 3600 },
        workers: { enabled: false },
        log: { level: "warn" },
      },
    });
    const auth = await adminAuth(api);
    store = backend === "etcd"
      ? await openEtcdStore({
        endpoints: etcd!.endpoints,
        tls: { caPem: etcd!.tls!.caPem, certPem: etcd!.tls!.certPem, keyPem: etcd!.tls!.keyPem },
      })
      : await openKvStore(join(api.dataDir, "store.kv"));
    const t0 = performance.now();
    await seed(store, vms);
    const seedMs = performance.now() - t0;
    const last = vmName(vms - 1);
    const a = api;
    await waitFor(
      "the control plane sees every VM",
      async () => {
        const res = await fetch(`${a.url}/v1/vms/${last}`, { headers: auth });
        await res.body?.cancel();
        return res.ok;
      },
      60_000,
      200,
    );
    await waitIdle([api.proc.pid, ...(etcd ? [etcd.proc().pid] : [])]);

    const gets = await timeGets(api, auth, opts.gets ?? 1000, () => {
      return `/v1/vms/${vmName(Math.floor(Math.random() * vms))}`;
    });
    let cursor: string | null = null;
    const lists = await timeGets(
      api,
      auth,
      opts.lists ?? 300,
      () => `/v1/vms?limit=100${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""}`,
      (body) => void (cursor = body.next_cursor ?? null),
    );
    return {
      backend,
      get: { p50: pct(gets, 50), p99: pct(gets, 99) },
      list: { p50: pct(lists, 50), p99: pct(lists, 99) },
      seedMs,
    };
  } finally {
    await store?.close();
    await api?.proc.stop();
    await etcd?.stop();
    await Deno.remove(root, { recursive: true }).catch(() => {});
  }
}

/** Prints the store-backend figures (both backends, then the etcd/embedded ratios). */
export async function benchStore(opts: StoreBenchOptions = {}): Promise<void> {
  const vms = opts.vms ?? 10_000;
  const results: StoreBenchResult[] = [];
  for (const backend of ["embedded", "etcd"] as const) {
    console.error(`>> bench store: ${backend}, ${vms} VMs`);
    results.push(await benchStoreBackend(backend, opts));
  }
  console.log(`\nstore backends: otherix-api at ${vms} VMs, sequential requests (ms)`);
  console.log("backend   get_p50  get_p99  list100_p50  list100_p99  seed_s");
  for (const r of results) {
    console.log(
      `${r.backend.padEnd(8)}  ${r.get.p50.toFixed(2).padStart(7)}  ${
        r.get.p99.toFixed(2).padStart(7)
      }  ${r.list.p50.toFixed(2).padStart(11)}  ${r.list.p99.toFixed(2).padStart(11)}  ${
        (r.seedMs / 1000).toFixed(1).padStart(6)
      }`,
    );
  }
  const [kv, etcd] = results;
  console.log(
    `etcd/embedded at p99: vm get ${(etcd.get.p99 / kv.get.p99).toFixed(2)}×, ` +
      `vm list ${(etcd.list.p99 / kv.list.p99).toFixed(2)}× ` +
      `(at p50: ${(etcd.get.p50 / kv.get.p50).toFixed(2)}×, ` +
      `${(etcd.list.p50 / kv.list.p50).toFixed(2)}×; goal: within 2× on reads)`,
  );
}

if (import.meta.main) await benchStore();
