// deno-lint-ignore-file no-explicit-any -- JSON responses are inspected dynamically
/**
 * In-process fixtures for the pool and cluster-default tests: a control-plane context on a
 * real store (Deno KV in a temp dir) with an injectable clock, a scripted agent client
 * (records `PUT /v1/pools`, answers scans from a script), node / VM records, and the public
 * app called with a token of any role.
 */
import type { AgentClient, AgentTarget } from "../../cp/agent_client.ts";
import { AgentError } from "../../cp/agent_client.ts";
import { publicApp } from "../../cp/app.ts";
import { issueAccessToken } from "../../cp/auth/jwt.ts";
import { parseApiConfig } from "../../cp/config.ts";
import type { CpContext } from "../../cp/context.ts";
import { seedClusterSettings } from "../../cp/nodes/service.ts";
import { keys, type NodeRecord, type VmRecord } from "../../cp/repo/records.ts";
import { openKvStore } from "../../cp/store/kv.ts";
import type { Store, TxnRequest } from "../../cp/store/store.ts";
import { createUser } from "../../cp/users/service.ts";
import type { DesiredPool } from "../../shared/api/agent.ts";
import type { AgentPoolScan, AgentPoolScanRequest } from "../../shared/api/pools.ts";
import { createLogger } from "../../shared/log.ts";
import type { Role } from "../../shared/rbac.ts";
import { LogCapture } from "./fixtures.ts";

/** What a scripted scan does: answer, fail like an agent, or be unreachable. */
export type ScanScript =
  | { kind: "answer"; scan: (req: AgentPoolScanRequest) => AgentPoolScan }
  | { kind: "error"; status: number; code: string; message: string }
  | { kind: "unreachable" }
  | { kind: "hold"; release: Promise<void>; scan: (req: AgentPoolScanRequest) => AgentPoolScan };

/** A scripted agent client: records pool pushes and scan requests. */
export class ScriptedAgents {
  pushes: { node: string; pools: DesiredPool[] }[] = [];
  scans: { node: string; req: AgentPoolScanRequest }[] = [];
  script: ScanScript = {
    kind: "answer",
    scan: (req) => ({
      ...req,
      total_bytes: 100 * 1024 ** 3,
      available_bytes: 80 * 1024 ** 3,
      vm_disks: [],
      image_count: 0,
      image_bytes: 0,
    }),
  };

  client(): AgentClient {
    const unused = () => Promise.reject(new Error("not scripted"));
    return {
      createVm: unused,
      deleteVm: unused,
      vmAction: unused,
      getTask: unused,
      consoleLog: unused,
      health: unused,
      close: () => {},
      putPools: (agent: AgentTarget, pools: DesiredPool[]) => {
        this.pushes.push({ node: agent.name, pools });
        return Promise.resolve();
      },
      scanPool: async (agent: AgentTarget, req: AgentPoolScanRequest) => {
        this.scans.push({ node: agent.name, req });
        const s = this.script;
        if (s.kind === "unreachable") {
          throw new AgentError("unreachable", `POST ${agent.endpoint}: connection refused`);
        }
        if (s.kind === "error") {
          throw new AgentError("api", `agent: ${s.code}`, s.status, {
            code: s.code,
            message: s.message,
          });
        }
        if (s.kind === "hold") await s.release;
        return s.scan(req);
      },
    };
  }
}

/** A test context: the context, its temp dir, the agents' script, a settable clock, logs. */
export interface PoolCtx {
  ctx: CpContext;
  dir: string;
  agents: ScriptedAgents;
  logs: LogCapture;
  /** The context's clock (ms since the epoch); tests move it. */
  clock: { now: number };
  /**
   * Runs before each store transaction is applied, with the raw store (tests inject a racing
   * write there); unset: none.
   */
  beforeTxn: { hook?: (req: TxnRequest, raw: Store) => Promise<void> };
  /** Calls the public API as `role` (default admin). */
  api(
    method: string,
    path: string,
    body?: unknown,
    role?: Role,
  ): Promise<{ status: number; json: any }>;
}

/**
 * Runs `fn` with a fresh context: allowed pool prefix `<dir>/pools/`, cluster settings seeded
 * (`default`), `extraYaml` appended to the config.
 */
export async function withPoolCtx(
  fn: (t: PoolCtx) => Promise<void>,
  extraYaml = "",
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "otx-pools-" });
  const raw = await openKvStore(`${dir}/store.kv`);
  const beforeTxn: PoolCtx["beforeTxn"] = {};
  const store = new Proxy(raw, {
    get(target, prop) {
      const v = Reflect.get(target, prop);
      if (prop !== "txn") return typeof v === "function" ? v.bind(target) : v;
      return async (req: TxnRequest) => {
        await beforeTxn.hook?.(req, target);
        return await target.txn(req);
      };
    },
  });
  const logs = new LogCapture();
  const agents = new ScriptedAgents();
  const clock = { now: Date.parse("2026-05-12T20:00:00.000Z") };
  const ctx: CpContext = {
    cfg: parseApiConfig(
      `store:\n  data_dir: ${dir}\nstorage_pools:\n  allowed_path_prefixes: [${dir}/pools/]\n` +
        // Tests use loopback image URLs: opt in (shared/url_policy.ts refuses them by default).
        `images:\n  url_policy:\n    allow_loopback: true\n` +
        `workers:\n  poll_interval_ms: 50\n${extraYaml}`,
    ),
    log: logs.logger("debug"),
    store,
    pki: { replicaName: "test" } as CpContext["pki"],
    jwtSecret: crypto.getRandomValues(new Uint8Array(32)),
    agents: agents.client(),
    now: () => new Date(clock.now),
  };
  await seedClusterSettings(ctx);
  const app = publicApp(ctx);
  const tokens = new Map<Role, string>();
  const api: PoolCtx["api"] = async (method, path, body, role = "admin") => {
    let token = tokens.get(role);
    if (!token) {
      const u = await createUser(store, {
        email: `${role}@example.com`,
        password: "password",
        role,
      });
      // Tokens are checked against the real clock.
      token = (await issueAccessToken(ctx.jwtSecret, { sub: u.id, role }, 600)).token;
      tokens.set(role, token);
    }
    const res = await app.request(path, {
      method,
      headers: {
        authorization: `Bearer ${token}`,
        ...(body === undefined ? {} : { "content-type": "application/json" }),
      },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.text();
    let json: any = null;
    try {
      json = JSON.parse(text);
    } catch { /* not JSON */ }
    return { status: res.status, json };
  };
  try {
    await fn({ ctx, dir, agents, logs, clock, api, beforeTxn });
  } finally {
    await raw.close();
    await Deno.remove(dir, { recursive: true });
  }
}

/** Stores a `ready` node `name` (with an endpoint and pools dir `<dir>/pools`). */
export async function putNode(
  t: PoolCtx,
  name: string,
  over: Partial<NodeRecord> = {},
): Promise<NodeRecord> {
  const ts = t.ctx.now().toISOString();
  const node: NodeRecord = {
    id: crypto.randomUUID(),
    name,
    status: "ready",
    architecture: "amd64",
    cordoned: false,
    endpoint: `https://127.0.0.1:1/${name}`,
    accelerator: "tcg",
    agent_version: "test",
    resources: null,
    pools_dir: `${t.dir}/pools`,
    last_heartbeat_at: ts,
    created_at: ts,
    updated_at: ts,
    ...over,
  };
  await t.ctx.store.put(keys.node(name), node);
  return node;
}

/** Stores a VM record `name` placed in pool `pool` on `node`. */
export async function putVm(
  t: PoolCtx,
  name: string,
  pool: string,
  node: string,
  over: Partial<VmRecord> = {},
): Promise<VmRecord> {
  const ts = t.ctx.now().toISOString();
  const vm: VmRecord = {
    id: crypto.randomUUID(),
    name,
    owner_id: "u",
    image_url: "http://h/i.img",
    image_sha256: null,
    image: "i.img",
    image_format: null,
    architecture: "amd64",
    vcpus: 1,
    memory_mb: 128,
    disk_gib: 10,
    user_data: null,
    pool,
    pool_path: `/nowhere/${pool}`,
    node,
    status: "running",
    desired_phase: "running",
    restart_policy: "on-failure",
    restart_count: 0,
    last_exit: null,
    last_task: null,
    error: null,
    active_task_id: null,
    last_restart_at: null,
    created_at: ts,
    updated_at: ts,
    ...over,
  };
  await t.ctx.store.put(keys.vm(name), vm);
  return vm;
}

/** A logger that discards everything (for contexts built by hand). */
export const quiet = createLogger("test", "error");
