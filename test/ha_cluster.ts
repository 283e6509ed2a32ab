/**
 * Control-plane replicas on etcd for tests and benches (issue 11): each an `otherix-api`
 * process on loopback with its own ports, data dir and supervised etcd member, the first one
 * starting a new cluster and the others joining it with `otherix-api join` and a pinned CA.
 *
 * @module
 */
import { join } from "node:path";
import {
  type ApiHandle,
  freePort,
  pgrep,
  pidAlive,
  startApi,
  TEST_ADMIN,
  waitFor,
} from "./harness.ts";

/** One replica: its name, root and ports; `api` while it runs. */
export interface Replica {
  name: string;
  root: string;
  publicPort: number;
  agentPort: number;
  clientPort: number;
  peerPort: number;
  api?: ApiHandle;
}

/** Options of the replicas of one cluster. */
export interface HaOptions {
  /** The pool path prefix the cluster allows (`storage_pools.allowed_path_prefixes`). */
  poolsDir: string;
  /** etcd raft timings, ms (default 50 / 500: quick failovers in tests). */
  heartbeatMs?: number;
  electionMs?: number;
  /** More config merged over the replica's. */
  config?: Record<string, unknown>;
}

/** A replica named `name` under `root` with free ports. */
export function newReplica(root: string, name: string): Replica {
  return {
    name,
    root: join(root, name),
    publicPort: freePort(),
    agentPort: freePort(),
    clientPort: freePort(),
    peerPort: freePort(),
  };
}

/** The config of replica `r` (merged over test/harness.ts's defaults by `startApi`). */
export function replicaConfig(r: Replica, o: HaOptions): Record<string, unknown> {
  return {
    server: { advertise_host: "127.0.0.1" },
    cp_cert: { replica_name: r.name },
    store: {
      backend: "etcd",
      etcd: {
        member: {
          client_port: r.clientPort,
          peer_port: r.peerPort,
          heartbeat_ms: o.heartbeatMs ?? 50,
          election_ms: o.electionMs ?? 500,
          promote_interval_seconds: 1,
          // Without quorum, a write is refused after this long (etcd itself answers ~2.5 s).
          request_timeout_seconds: 3,
        },
      },
    },
    storage_pools: { allowed_path_prefixes: [o.poolsDir + "/"] },
    workers: { lease_ttl_seconds: 3, poll_interval_ms: 250 },
    nodes: { heartbeat_interval_seconds: 1, stale_threshold_seconds: 30 },
    ...o.config,
  };
}

/** Starts replica `r` (`args`: e.g. {@link joinArgs}); resolves once it is ready. */
export async function startReplica(r: Replica, o: HaOptions, args: string[] = []) {
  r.api = await startApi({
    root: r.root,
    publicPort: r.publicPort,
    agentPort: r.agentPort,
    config: replicaConfig(r, o),
    args,
  });
  return r.api;
}

/** `otherix-api join` arguments for joining through `server` (an agent URL). */
export function joinArgs(server: string, token: string, pin: string): string[] {
  return ["join", "--server", server, "--token", token, "--ca-fingerprint", pin];
}

/** A JSON answer with its headers. */
// deno-lint-ignore no-explicit-any
export type Answer = { status: number; json: any; headers: Headers };

/** Logs in as the test admin on `url`; returns a JSON caller. */
export async function adminClient(
  url: string,
): Promise<(method: string, path: string, body?: unknown) => Promise<Answer>> {
  const login = await fetch(`${url}/v1/auth/login`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(TEST_ADMIN),
  });
  const token = (await login.json()).access_token as string;
  return async (method, path, body) => {
    const res = await fetch(url + path, {
      method,
      headers: {
        authorization: `Bearer ${token}`,
        ...(body === undefined ? {} : { "content-type": "application/json" }),
      },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.text();
    let json = null;
    try {
      json = JSON.parse(text);
    } catch { /* text */ }
    return { status: res.status, json, headers: res.headers };
  };
}

/**
 * Starts `replicas[0]` as a new cluster and joins the others one by one, each with a fresh
 * join token; resolves once all are voters.
 *
 * @returns the cluster CA fingerprint
 */
export async function startHaCluster(replicas: Replica[], o: HaOptions): Promise<string> {
  const [first, ...rest] = replicas;
  await startReplica(first, o);
  const api = await adminClient(first.api!.url);
  let pin = "";
  for (const r of rest) {
    const minted = await api("POST", "/v1/cluster/join-tokens", {});
    if (minted.status !== 201) throw new Error(`join token: ${JSON.stringify(minted.json)}`);
    pin = minted.json.ca_fingerprint;
    await startReplica(r, o, joinArgs(first.api!.agentUrl, minted.json.token, pin));
  }
  await waitFor("every replica a voter", async () => {
    const m = (await api("GET", "/v1/cluster/members")).json?.members ?? [];
    return m.length === replicas.length &&
      m.every((x: { role: string; healthy: boolean }) => x.role === "voter" && x.healthy);
  }, 60_000);
  if (!pin) pin = (await api("POST", "/v1/cluster/join-tokens", {})).json.ca_fingerprint;
  return pin;
}

/** kill -9 of a replica as a host crash: `otherix-api` and its etcd member. */
export async function crashReplica(r: Replica): Promise<void> {
  const etcdPids = pgrep("etcd", join(r.api!.dataDir, "etcd"));
  r.api!.proc.child.kill("SIGKILL");
  await r.api!.proc.status();
  for (const pid of etcdPids) Deno.kill(pid, "SIGKILL");
  await waitFor("etcd gone", () => Promise.resolve(etcdPids.every((p) => !pidAlive(p))));
}
