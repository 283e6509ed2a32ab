/**
 * Simulated agents for benchmarks: real mTLS clients, each with its own certificate issued by
 * the cluster CA through the real join-token bootstrap, and the heartbeat body a steady idle
 * agent sends. Used by scripts/bench_fanin.ts and scripts/bench_scheduler.ts.
 *
 * @module
 */
import { join } from "node:path";
import { createCsr, splitSans } from "../shared/pki.ts";
import { createTlsClient } from "../shared/tls.ts";
import { type ApiHandle, TEST_ADMIN } from "../test/harness.ts";

/** The bearer header of the test admin (test/harness.ts TEST_ADMIN) on `api`. */
export async function adminAuth(api: ApiHandle): Promise<Record<string, string>> {
  const res = await fetch(`${api.url}/v1/auth/login`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ email: TEST_ADMIN.email, password: TEST_ADMIN.password }),
  });
  const login = await res.json();
  return { authorization: `Bearer ${login.access_token}` };
}

/** One registered simulated agent. */
export interface SimAgent {
  name: string;
  client: Deno.HttpClient;
}

/**
 * Registers `n` agents named `sim-00000`… through join tokens (`auth`: an admin bearer
 * header), 20 at a time. The caller closes each `client`.
 */
export async function registerSimAgents(
  api: ApiHandle,
  auth: Record<string, string>,
  n: number,
): Promise<SimAgent[]> {
  const caPem = await Deno.readTextFile(join(api.dataDir, "pki/ca.crt"));
  const bootstrapClient = createTlsClient({ caPem });
  const out: SimAgent[] = [];
  const register = async (i: number) => {
    const name = `sim-${String(i).padStart(5, "0")}`;
    const tok = await (await fetch(`${api.url}/v1/nodes/join-tokens`, {
      method: "POST",
      headers: { ...auth, "content-type": "application/json" },
      body: JSON.stringify({ node_name: name }),
    })).json();
    const csr = await createCsr(name, splitSans([]));
    const boot = await fetch(`${api.agentUrl}/v1/nodes/bootstrap`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ token: tok.token, csr_pem: csr.csrPem }),
      client: bootstrapClient,
    });
    const b = await boot.json();
    out.push({
      name,
      client: createTlsClient({ caPem: b.ca_pem, certPem: b.certificate_pem, keyPem: csr.keyPem }),
    });
  };
  try {
    for (let i = 0; i < n; i += 20) {
      await Promise.all(Array.from({ length: Math.min(20, n - i) }, (_, k) => register(i + k)));
    }
  } finally {
    bootstrapClient.close();
  }
  return out;
}

/** Capacity a simulated node reports. */
export interface SimCapacity {
  cores: number;
  memoryMib: number;
  /** Pool filesystem, bytes. */
  diskBytes: number;
}

/** The heartbeat body of an idle simulated agent (a ready `default` pool, no VMs). */
export function simHeartbeat(
  name: string,
  cap: SimCapacity = { cores: 8, memoryMib: 32768, diskBytes: 1e12 },
): string {
  return JSON.stringify({
    node_name: name,
    endpoint: "https://127.0.0.1:1",
    architecture: "amd64",
    accelerator: "tcg",
    agent_version: "bench",
    pools_dir: "/var/lib/otherix/pools",
    resources: {
      cpu_cores_total: cap.cores,
      load_average_1m: Math.round(Math.random() * 100) / 100,
      memory_total_mib: cap.memoryMib,
      memory_available_mib: Math.floor(cap.memoryMib / 2) + Math.floor(Math.random() * 100),
      system_disk_total_bytes: 1e12,
      system_disk_available_bytes: 5e11 + Math.floor(Math.random() * 1e6),
    },
    pools: [{
      name: "default",
      path: "/var/lib/otherix/pools/default",
      status: "ready",
      message: null,
      total_bytes: cap.diskBytes,
      available_bytes: Math.floor(cap.diskBytes / 2),
      images: [],
    }],
    vms: [],
    tasks: [],
  });
}

/** Sends one heartbeat of `agent`; resolves with the HTTP status. */
export async function sendSimHeartbeat(
  api: ApiHandle,
  agent: SimAgent,
  cap?: SimCapacity,
): Promise<number> {
  const res = await fetch(`${api.agentUrl}/v1/nodes/heartbeat`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: simHeartbeat(agent.name, cap),
    client: agent.client,
  });
  await res.body?.cancel();
  return res.status;
}
