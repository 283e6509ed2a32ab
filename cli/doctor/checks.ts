/**
 * The checks of `otherix doctor` (spec 000's troubleshooting reference as code). Each check
 * asks the control plane (or the TLS handshake) one thing and returns {@link CheckResult}s;
 * {@link runChecks} runs them in {@link CHECK_IDS} order and skips the ones whose inputs an
 * earlier failure took away (no server: nothing else runs; bad token: only the unauthenticated
 * checks run).
 *
 * @module
 */
import { checkServerIdentity, connect as tlsConnect, type PeerCertificate } from "node:tls";
import { z } from "zod";
import { UserSchema } from "../../shared/api/auth.ts";
import { ClusterDefaultPoolSchema } from "../../shared/api/cluster.ts";
import { type Node, NodePingSchema, NodeSchema } from "../../shared/api/nodes.ts";
import { type PoolInstanceView, PoolInstanceViewSchema } from "../../shared/api/pools.ts";
import { TaskSchema } from "../../shared/api/tasks.ts";
import { type Vm, VmSchema } from "../../shared/api/vms.ts";
import { ApiClient } from "../client.ts";
import { loadConfig, resolveConfigPath } from "../config_store.ts";
import { formatAge } from "../duration.ts";
import { ApiCallError, CliError } from "../errors.ts";
import type { Io } from "../io.ts";
import { formatBytes } from "../render.ts";
import { resolveTarget, type Target } from "../resolve.ts";
import {
  type CheckResult,
  FAILED_TASK_WINDOW_SECONDS,
  MAX_CLOCK_SKEW_SECONDS,
  PENDING_TASK_STUCK_SECONDS,
  POOL_LOW_FREE_PERCENT,
  result,
} from "./report.ts";

/** What the checks need: the global options, an optional node filter, the process. */
export interface DoctorInputs {
  /** `--config`, `--cluster`, `--endpoint`, `--token` as given. */
  flags: { config?: string; cluster?: string; endpoint?: string; token?: string };
  /** Per-request timeout, milliseconds. */
  timeoutMs: number;
  /** `--node NAME`: per-node checks for this node only (unknown: `node_state` fails). */
  node?: string;
  io: Io;
}

/** Runs every check; never throws for what it finds (only for bugs). */
export async function runChecks(inp: DoctorInputs): Promise<CheckResult[]> {
  const out: CheckResult[] = [];
  const target = await checkConfig(inp, out);
  if (!target) return out;
  const client = new ApiClient({
    endpoint: target.endpoints,
    token: target.token,
    timeoutMs: inp.timeoutMs,
    fetch: inp.io.fetch,
  });
  for (const endpoint of target.endpoints.filter((e) => e.startsWith("https:"))) {
    out.push(await checkTlsSans(endpoint, inp.timeoutMs));
  }
  const date = await checkReachable(client, inp, out);
  if (date === undefined) return out;
  out.push(checkClockSkew(date, inp.io.now()));
  if (!await checkToken(client, out)) return out;

  const nodes = await listOrResult(client, "/v1/nodes", NodeSchema, "node_state", out);
  const vms = await listOrResult(client, "/v1/vms", VmSchema, "failed_tasks", out);
  const selected = nodes && selectNodes(nodes, inp.node, out);
  const onNode = (vm: Vm) => inp.node === undefined || vm.node === inp.node;
  if (vms) out.push(await checkWorkers(client, vms.filter(onNode), inp.io.now()));
  if (selected) {
    out.push(...selected.map((n) => checkNodeState(n, inp.io.now())));
    for (const n of selected) out.push(await checkPing(client, n));
    out.push(...selected.map(checkKvm));
  }
  const pools = await listOrResult(
    client,
    "/v1/pools",
    PoolInstanceViewSchema,
    "pool_space",
    out,
    inp.node === undefined ? {} : { node: inp.node },
  );
  if (pools) out.push(...checkPools(pools, inp.node));
  out.push(await checkDefaultPool(client, pools));
  if (vms) out.push(await checkFailedTasks(client, vms.filter(onNode), inp.io.now()));
  return out;
}

/** `config`: endpoint and token resolve (flags, env, config file). */
async function checkConfig(inp: DoctorInputs, out: CheckResult[]): Promise<Target | undefined> {
  const env = (n: string) => inp.io.env(n);
  let configPath = "~/.otherix/config";
  let pathError: unknown;
  try {
    configPath = resolveConfigPath(inp.flags.config, env);
  } catch (e) {
    pathError = e;
  }
  try {
    const t = await resolveTarget({
      flags: inp.flags,
      env,
      loadConfig: () => pathError ? Promise.reject(pathError) : loadConfig(configPath),
      configPath,
    });
    out.push(result(
      "config",
      "pass",
      `server ${t.endpoints.join(",")} (from ${t.endpointSource}), token from ${t.tokenSource}`,
    ));
    return t;
  } catch (e) {
    out.push(result("config", "fail", messageOf(e)));
    return undefined;
  }
}

/**
 * `tls_sans`: the public API's certificate covers the host of `endpoint` (an https URL; one
 * result per https endpoint; the certificate is read without verifying its chain, which
 * `reachable` then does).
 */
export async function checkTlsSans(endpoint: string, timeoutMs: number): Promise<CheckResult> {
  const url = new URL(endpoint);
  const host = url.hostname.replace(/^\[|\]$/g, "");
  let cert: PeerCertificate;
  try {
    cert = await peerCertificate(host, Number(url.port || 443), timeoutMs);
  } catch (e) {
    return result("tls_sans", "fail", `TLS handshake with ${url.host} failed: ${messageOf(e)}`);
  }
  const sans = cert.subjectaltname ?? "(no SANs)";
  const err = checkServerIdentity(host, cert);
  return err
    ? result("tls_sans", "fail", `certificate of ${url.host} does not cover "${host}": ${sans}`)
    : result("tls_sans", "pass", `certificate covers "${host}" (${sans})`);
}

function peerCertificate(host: string, port: number, timeoutMs: number): Promise<PeerCertificate> {
  return new Promise((resolve, reject) => {
    const isIp = /^[\d.]+$|:/.test(host);
    const socket = tlsConnect({
      host,
      port,
      servername: isIp ? undefined : host,
      rejectUnauthorized: false,
    });
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`no handshake within ${timeoutMs} ms`));
    }, timeoutMs);
    socket.once("secureConnect", () => {
      clearTimeout(timer);
      const cert = socket.getPeerCertificate();
      socket.end();
      socket.destroy();
      resolve(cert);
    });
    socket.once("error", (e) => {
      clearTimeout(timer);
      socket.destroy();
      reject(e);
    });
  });
}

/**
 * `reachable`: `GET /readyz` answers 200 (503 `store_unavailable`: the store is down) on every
 * endpoint of the cluster: `pass` when all are ready, `warn` when only some are (the CLI
 * fails over to those), `fail` when none is.
 *
 * @returns the first ready server's `Date` header as epoch ms (NaN when absent), undefined
 *   when none is ready
 */
async function checkReachable(
  client: ApiClient,
  inp: DoctorInputs,
  out: CheckResult[],
): Promise<number | undefined> {
  const problems: string[] = [];
  const ready: string[] = [];
  let date: number | undefined;
  for (const endpoint of client.endpoints) {
    const url = `${endpoint}/readyz`;
    let res: Response;
    try {
      res = await inp.io.fetch(url, { signal: AbortSignal.timeout(inp.timeoutMs) });
    } catch (e) {
      problems.push(`cannot reach ${url}: ${messageOf(e)}`);
      continue;
    }
    const text = await res.text().catch(() => "");
    if (res.status !== 200) {
      problems.push(`${url} answered HTTP ${res.status}: ${text.trim()}`);
      continue;
    }
    ready.push(`${url} is ready`);
    date ??= Date.parse(res.headers.get("date") ?? "");
  }
  const status = problems.length === 0 ? "pass" : ready.length === 0 ? "fail" : "warn";
  out.push(result("reachable", status, [...problems, ...ready].join("; ")));
  return date;
}

/** `clock_skew`: the server's `Date` (1 s resolution) and `now` (epoch ms) agree. */
export function checkClockSkew(serverDate: number, now: number): CheckResult {
  if (Number.isNaN(serverDate)) return result("clock_skew", "skip", "server sent no Date header");
  const skew = Math.round((now - serverDate) / 1000);
  const detail = `local clock ${skew >= 0 ? "+" : ""}${skew}s from the server's`;
  return result("clock_skew", Math.abs(skew) > MAX_CLOCK_SKEW_SECONDS ? "fail" : "pass", detail);
}

/** `token`: `GET /v1/users/me` accepts the token. */
async function checkToken(client: ApiClient, out: CheckResult[]): Promise<boolean> {
  try {
    const { data } = await client.json("GET", "/v1/users/me", UserSchema);
    out.push(result("token", "pass", `authenticated as ${data.email} (${data.role})`));
    return true;
  } catch (e) {
    out.push(result("token", "fail", messageOf(e)));
    return false;
  }
}

/**
 * Lists `path`; a failure becomes a result of check `id` (`skip` when the role may not read
 * it, `fail` otherwise).
 */
async function listOrResult<S extends z.ZodType>(
  client: ApiClient,
  path: string,
  item: S,
  id: CheckResult["id"],
  out: CheckResult[],
  query: Record<string, string> = {},
): Promise<z.infer<S>[] | undefined> {
  try {
    return (await client.listAll(path, item, query)).items;
  } catch (e) {
    const denied = e instanceof ApiCallError && e.code === "permission_denied";
    out.push(result(id, denied ? "skip" : "fail", `GET ${path}: ${messageOf(e)}`));
    return undefined;
  }
}

/** The nodes `--node` selects (a missing one fails `node_state`). */
function selectNodes(nodes: Node[], name: string | undefined, out: CheckResult[]): Node[] {
  if (name === undefined) {
    if (nodes.length === 0) out.push(result("node_state", "fail", "no nodes joined"));
    return nodes;
  }
  const found = nodes.filter((n) => n.name === name);
  if (found.length === 0) out.push(result("node_state", "fail", `node "${name}" not found`, name));
  return found;
}

/** `node_state`: the node is `ready` (age of the last heartbeat shown either way). */
export function checkNodeState(n: Node, now: number): CheckResult {
  const hb = n.last_heartbeat_at
    ? `last heartbeat ${formatAge(n.last_heartbeat_at, now)} ago`
    : "no heartbeat yet";
  const cordon = n.cordoned ? ", cordoned" : "";
  return n.status === "ready"
    ? result("node_state", n.cordoned ? "warn" : "pass", `ready${cordon}, ${hb}`, n.name)
    : result("node_state", "fail", `${n.status}${cordon}, ${hb}`, n.name);
}

/** `agent_ping`: the CP reaches the node's agent (`POST /v1/nodes/{name}/ping`). */
async function checkPing(client: ApiClient, n: Node): Promise<CheckResult> {
  if (n.status === "gone") return result("agent_ping", "skip", "node is gone", n.name);
  try {
    const { data } = await client.json(
      "POST",
      `/v1/nodes/${encodeURIComponent(n.name)}/ping`,
      NodePingSchema,
    );
    const version = data.agent_version ? `, agent ${data.agent_version}` : "";
    return result(
      "agent_ping",
      "pass",
      `${data.endpoint} answered in ${data.rtt_ms.toFixed(1)} ms${version}`,
      n.name,
    );
  } catch (e) {
    const denied = e instanceof ApiCallError && e.code === "permission_denied";
    return result("agent_ping", denied ? "skip" : "fail", messageOf(e), n.name);
  }
}

/** `kvm`: the node's agent detected KVM (`tcg` warns: it works, slowly). */
export function checkKvm(n: Node): CheckResult {
  if (n.accelerator === null) return result("kvm", "skip", "accelerator not reported", n.name);
  return n.accelerator === "kvm"
    ? result("kvm", "pass", "KVM available", n.name)
    : result("kvm", "warn", "no KVM: VMs run under TCG software emulation", n.name);
}

/**
 * `pool_space`: every pool instance (on `node`, if given) is ready and not under disk
 * pressure (fail), with at least {@link POOL_LOW_FREE_PERCENT} % free (else warn).
 */
export function checkPools(pools: PoolInstanceView[], node?: string): CheckResult[] {
  const selected = pools.filter((p) => node === undefined || p.node === node);
  if (selected.length === 0) {
    return [result("pool_space", "fail", node ? `no pool on node "${node}"` : "no pools", node)];
  }
  return selected.map((p) => {
    const where = `${p.name}@${p.node}`;
    const free = p.available_bytes;
    const total = p.total_bytes;
    const pct = free !== null && total ? (100 * free) / total : null;
    const space = free === null
      ? "free space unknown"
      : `${formatBytes(free)} free${pct === null ? "" : ` (${pct.toFixed(0)}%)`}`;
    if (p.status !== "ready") {
      return result("pool_space", "fail", `${where}: ${p.status}: ${p.message ?? ""}`, p.node);
    }
    if (p.pressure?.disk.under_pressure) {
      return result("pool_space", "fail", `${where}: under disk pressure, ${space}`, p.node);
    }
    if (pct !== null && pct < POOL_LOW_FREE_PERCENT) {
      return result("pool_space", "warn", `${where}: low on space, ${space}`, p.node);
    }
    return result("pool_space", "pass", `${where}: ready, ${space}`, p.node);
  });
}

/** `default_pool`: a cluster default pool is set and (when the pools were read) exists. */
async function checkDefaultPool(
  client: ApiClient,
  pools: PoolInstanceView[] | undefined,
): Promise<CheckResult> {
  try {
    const { data } = await client.json("GET", "/v1/cluster/default-pool", ClusterDefaultPoolSchema);
    const name = data.default_pool_name;
    if (name === null) return result("default_pool", "fail", "no cluster default pool set");
    if (pools && !pools.some((p) => p.name === name)) {
      return result("default_pool", "fail", `default pool "${name}" has no instance`);
    }
    return result("default_pool", "pass", `default pool "${name}"`);
  } catch (e) {
    return result("default_pool", "fail", messageOf(e));
  }
}

/**
 * `workers`: no VM's last task has been `pending` for more than
 * {@link PENDING_TASK_STUCK_SECONDS} (the spec's sign of `workers.enabled: false`; the API
 * does not expose the setting itself).
 */
async function checkWorkers(client: ApiClient, vms: Vm[], now: number): Promise<CheckResult> {
  const stuck: string[] = [];
  for (const vm of vms) {
    if (vm.last_task?.status !== "pending") continue;
    const task = await taskOf(client, vm.last_task.id);
    const age = task ? (now - Date.parse(task.created_at)) / 1000 : 0;
    if (age > PENDING_TASK_STUCK_SECONDS) {
      stuck.push(`${vm.name} (${task!.type}, ${age.toFixed(0)}s)`);
    }
  }
  return stuck.length
    ? result(
      "workers",
      "fail",
      `tasks pending for over ${PENDING_TASK_STUCK_SECONDS}s: ${stuck.join(", ")}`,
    )
    : result("workers", "pass", "no task stuck in pending");
}

/**
 * `failed_tasks`: no VM's last task failed within the last {@link FAILED_TASK_WINDOW_SECONDS}
 * (by the task's `finished_at`); lists `vm: type code` for each.
 */
async function checkFailedTasks(client: ApiClient, vms: Vm[], now: number): Promise<CheckResult> {
  const failed: string[] = [];
  for (const vm of vms) {
    if (vm.last_task?.status !== "failed") continue;
    const task = await taskOf(client, vm.last_task.id);
    const at = Date.parse(task?.finished_at ?? task?.updated_at ?? vm.updated_at);
    if (now - at > FAILED_TASK_WINDOW_SECONDS * 1000) continue;
    failed.push(`${vm.name}: ${vm.last_task.type} ${vm.last_task.error?.code ?? "(no code)"}`);
  }
  return failed.length
    ? result("failed_tasks", "fail", `failed in the last hour: ${failed.join("; ")}`)
    : result("failed_tasks", "pass", "no task failed in the last hour");
}

async function taskOf(client: ApiClient, id: string): Promise<z.infer<typeof TaskSchema> | null> {
  try {
    return (await client.json("GET", `/v1/tasks/${id}`, TaskSchema)).data;
  } catch {
    return null;
  }
}

function messageOf(e: unknown): string {
  if (e instanceof CliError) return e.render();
  return e instanceof Error ? e.message : String(e);
}
