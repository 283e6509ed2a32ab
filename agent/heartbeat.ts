/**
 * The heartbeat loop (shared/api/agent.ts; spec: developer guide "Verifying CP↔agent
 * connectivity"): `POST {cp_url}/v1/nodes/heartbeat` over mTLS, first immediately, then every
 * `heartbeat_interval_seconds` the control plane answers. `cp_url` is the current URL of the
 * agent's control-plane list (agent/cp_endpoints.ts): each response's `control_planes` is
 * learnt, and a connection-level failure moves the heartbeat to the next replica at once
 * (issue 11); the loop keeps one kept-alive connection, to one URL at a time. A heartbeat
 * carries the node's capacity, its pools, every VM it hosts and its recent tasks (in flight,
 * or ended in the last 10 minutes: a lost report heals itself). Each response's `desired_pools` is
 * reconciled; when that set changes (here or through `PUT /v1/pools`, see
 * {@link Heartbeat.kick}) the next heartbeat goes out after 200 ms so the control plane
 * learns the pools' status promptly. Failures are logged and retried at the current
 * interval; the loop never ends on CP downtime.
 *
 * @module
 */
import {
  type AgentTask,
  type HeartbeatRequest,
  HeartbeatRequestSchema,
  type HeartbeatResponse,
  HeartbeatResponseSchema,
} from "../shared/api/agent.ts";
import { architectureOf } from "../shared/api/common.ts";
import { MAX_REPORTED_IMAGES, type ObservedPool } from "../shared/api/nodes.ts";
import type { Logger } from "../shared/log.ts";
import type { ClientTlsMaterial } from "../shared/tls.ts";
import type { Agent as HttpsAgent } from "node:https";
import type { Accelerator } from "./accel.ts";
import type { AgentIdentity } from "./bootstrap.ts";
import { cpTls, postToCpWithFailover, urlConnection } from "./cp_client.ts";
import { CpEndpoints } from "./cp_endpoints.ts";
import { errorMessage } from "./fsutil.ts";
import type { PoolManager } from "./pools.ts";
import type { SystemInfo } from "./sysinfo.ts";
import { AGENT_VERSION } from "./version.ts";
import type { VmManager } from "./vms.ts";

/** Dependencies of the heartbeat loop. */
export interface HeartbeatOptions {
  /** The control plane's agent-facing URL (`bootstrap.cp_url`); used when no `endpoints`. */
  cpUrl: string;
  /**
   * The agent's control-plane list (agent/cp_endpoints.ts), shared with reports and renewal;
   * default: `cpUrl` alone, in memory.
   */
  endpoints?: CpEndpoints;
  identity: AgentIdentity;
  /** The advertised mTLS endpoint (`https://host:port`). */
  endpoint: string;
  accelerator: Accelerator;
  /** `<state>/pools`. */
  poolsDir: string;
  /** Reads the node's resources (agent/sysinfo.ts). */
  system: SystemInfo;
  pools: PoolManager;
  vms: VmManager;
  /** The tasks a heartbeat carries (agent/tasks.ts `TaskManager.recent`); default none. */
  /** Where this node takes live migrations (agent config `migration.*`); null: unset. */
  migration?: { host: string; port_range: string } | null;
  recentTasks?: () => AgentTask[];
  /** Interval until the control plane names one, seconds. */
  initialIntervalSeconds: number;
  log: Logger;
  /** Per-request timeout, ms (default 10 000). */
  requestTimeoutMs?: number;
}

/** A running heartbeat loop. */
export interface Heartbeat {
  /** Stops the loop (an in-flight request is aborted). */
  stop(): Promise<void>;
  /** Sends the next heartbeat now, or 200 ms after the one in flight (pools changed). */
  kick(): void;
}

/**
 * `pools` with each image list capped at {@link MAX_REPORTED_IMAGES} (first by basename) and
 * `images_total` set where capped. `capped`: the pools already logged as capped (a Warn line
 * when a pool starts being capped, an Info line when it no longer is).
 */
export function capPoolImages(
  pools: ObservedPool[],
  log: Logger,
  capped: Set<string>,
): ObservedPool[] {
  return pools.map((p) => {
    const key = `${p.name}\0${p.path}`;
    if (p.images.length <= MAX_REPORTED_IMAGES) {
      if (capped.delete(key)) {
        log.info("heartbeat: pool image list no longer capped", {
          pool: p.name,
          images: p.images.length,
        });
      }
      return p;
    }
    if (!capped.has(key)) {
      capped.add(key);
      log.warn(
        `heartbeat: pool caches more than ${MAX_REPORTED_IMAGES} images; reporting the first ` +
          `${MAX_REPORTED_IMAGES} by name`,
        { pool: p.name, path: p.path, images: p.images.length },
      );
    }
    const images = [...p.images].sort((a, b) => a.basename < b.basename ? -1 : 1)
      .slice(0, MAX_REPORTED_IMAGES);
    return { ...p, images, images_total: p.images.length };
  });
}

/** Pools already logged as capped, per heartbeat loop options object. */
const cappedPools = new WeakMap<HeartbeatOptions, Set<string>>();

/** Builds one heartbeat body. */
export async function buildHeartbeat(o: HeartbeatOptions): Promise<HeartbeatRequest> {
  let capped = cappedPools.get(o);
  if (!capped) cappedPools.set(o, capped = new Set());
  return {
    node_name: o.identity.nodeName,
    endpoint: o.endpoint,
    architecture: architectureOf(Deno.build.arch),
    accelerator: o.accelerator,
    agent_version: AGENT_VERSION,
    pools_dir: o.poolsDir,
    resources: await o.system.read(),
    pools: capPoolImages(await o.pools.observe(), o.log, capped),
    vms: o.vms.list(),
    migration: o.migration ?? null,
    tasks: o.recentTasks?.() ?? [],
  };
}

/**
 * Sends one heartbeat over mTLS to the current URL of `endpoints`, failing over to the next
 * replicas on a connection-level failure (agent/cp_client.ts `postToCpWithFailover`), and
 * returns the parsed response with the URL that answered. The server must present a
 * control-plane certificate (O = `CP_CERT_ORG`), not merely any cluster certificate.
 *
 * @param agentFor the keep-alive agent to use for a URL (see `postToCpWithFailover`)
 * @throws CpAnswerError for the CP's error envelope; Error describing the transport failure
 *   (of the last URL tried), a server that is not a control plane, or an invalid response
 */
export async function sendHeartbeat(
  o: HeartbeatOptions,
  endpoints: CpEndpoints,
  tls: ClientTlsMaterial,
  signal?: AbortSignal,
  agentFor?: (url: string) => HttpsAgent | undefined,
): Promise<{ response: HeartbeatResponse; url: string }> {
  const body = HeartbeatRequestSchema.parse(await buildHeartbeat(o));
  const { json, url } = await postToCpWithFailover(endpoints, "/v1/nodes/heartbeat", body, tls, {
    timeoutMs: o.requestTimeoutMs ?? 10_000,
    component: "heartbeat",
    signal,
    agentFor,
  });
  const parsed = HeartbeatResponseSchema.safeParse(json);
  if (!parsed.success) throw new Error("invalid heartbeat response");
  return { response: parsed.data, url };
}

/**
 * Starts the loop; the first heartbeat is sent immediately.
 *
 * @throws Error when `o.cpUrl` is not an https URL and no `o.endpoints` is given
 */
export function startHeartbeat(o: HeartbeatOptions): Heartbeat {
  const tls = cpTls(o.identity);
  const endpoints = o.endpoints ?? new CpEndpoints(o.cpUrl || undefined, o.log);
  // One kept-alive connection, following the URL in use (agent/cp_client.ts).
  const connection = urlConnection();
  const agentFor = (url: string) => connection.agentFor(url);
  const stopCtrl = new AbortController();
  let intervalMs = o.initialIntervalSeconds * 1000;
  let status: string | null = null;
  let failing = false;
  let wake: (() => void) | null = null;
  let kicked = false;

  const sleep = (ms: number) =>
    new Promise<void>((resolve) => {
      const t = setTimeout(done, ms);
      function done() {
        clearTimeout(t);
        wake = null;
        resolve();
      }
      wake = done;
    });

  const loop = (async () => {
    while (!stopCtrl.signal.aborted) {
      let next = intervalMs;
      try {
        const { response: res, url } = await sendHeartbeat(
          o,
          endpoints,
          tls,
          stopCtrl.signal,
          agentFor,
        );
        intervalMs = res.heartbeat_interval_seconds * 1000;
        next = intervalMs;
        if (failing || status !== res.node_status) {
          o.log.info("heartbeat: ok", {
            node: o.identity.nodeName,
            node_status: res.node_status,
            interval_s: res.heartbeat_interval_seconds,
            cp_url: url,
          });
        }
        await endpoints.learn(res.control_planes, url);
        failing = false;
        status = res.node_status;
        if (await o.pools.setDesired(res.desired_pools)) next = Math.min(next, 200);
      } catch (e) {
        if (stopCtrl.signal.aborted) break;
        failing = true;
        // `connection.url`: the last URL tried (null when none is known; the error says so).
        o.log.warn("heartbeat: failed", { cp_url: connection.url, err: errorMessage(e) });
      }
      if (stopCtrl.signal.aborted) break;
      if (kicked) next = Math.min(next, 200);
      kicked = false;
      await sleep(next);
    }
  })();

  return {
    async stop() {
      stopCtrl.abort();
      wake?.();
      await loop;
      connection.close();
    },
    kick() {
      if (stopCtrl.signal.aborted) return;
      // Sleeping: send now; mid-request: the next one follows after 200 ms.
      if (wake) wake();
      else kicked = true;
    },
  };
}
