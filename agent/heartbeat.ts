/**
 * The heartbeat loop (shared/api/nodes.ts; spec: developer guide "Verifying CP↔agent
 * connectivity"): `POST {cp_url}/v1/nodes/heartbeat` over mTLS, first immediately, then every
 * `heartbeat_interval_seconds` the control plane answers. Each response's `desired_pools` is
 * reconciled; when that set changes the next heartbeat goes out after 200 ms so the
 * control plane learns the pools' status promptly. Failures are logged and retried at the
 * current interval; the loop never ends on CP downtime.
 *
 * @module
 */
import {
  type HeartbeatRequest,
  HeartbeatRequestSchema,
  type HeartbeatResponse,
  HeartbeatResponseSchema,
} from "../shared/api/nodes.ts";
import { architectureOf } from "../shared/api/common.ts";
import { ErrorEnvelopeSchema } from "../shared/errors.ts";
import type { Logger } from "../shared/log.ts";
import { type ClientTlsMaterial, requestTls } from "../shared/tls.ts";
import { CP_CERT_ORG } from "../shared/constants.ts";
import type { Accelerator } from "./accel.ts";
import type { AgentIdentity } from "./bootstrap.ts";
import { errorMessage } from "./fsutil.ts";
import type { PoolManager } from "./pools.ts";
import { nodeResources } from "./sysinfo.ts";
import { AGENT_VERSION } from "./version.ts";
import type { VmManager } from "./vms.ts";

/** Dependencies of the heartbeat loop. */
export interface HeartbeatOptions {
  /** The control plane's agent-facing URL. */
  cpUrl: string;
  identity: AgentIdentity;
  /** The advertised mTLS endpoint (`https://host:port`). */
  endpoint: string;
  accelerator: Accelerator;
  /** `<state>/pools`. */
  poolsDir: string;
  /** The state root (system-disk fallback). */
  stateDir: string;
  pools: PoolManager;
  vms: VmManager;
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
}

/** Builds one heartbeat body. */
export async function buildHeartbeat(o: HeartbeatOptions): Promise<HeartbeatRequest> {
  return {
    node_name: o.identity.nodeName,
    endpoint: o.endpoint,
    architecture: architectureOf(Deno.build.arch),
    accelerator: o.accelerator,
    agent_version: AGENT_VERSION,
    pools_dir: o.poolsDir,
    resources: nodeResources(o.stateDir),
    pools: await o.pools.observe(),
    vms: o.vms.list(),
  };
}

/**
 * Sends one heartbeat over mTLS and returns the parsed response. The server must present a
 * control-plane certificate (O = `CP_CERT_ORG`), not merely any cluster certificate.
 *
 * @throws Error describing the transport failure, a server that is not a control plane, or
 *   the CP's error envelope
 */
export async function sendHeartbeat(
  o: HeartbeatOptions,
  tls: ClientTlsMaterial,
  signal?: AbortSignal,
): Promise<HeartbeatResponse> {
  const body = HeartbeatRequestSchema.parse(await buildHeartbeat(o));
  const timeout = AbortSignal.timeout(o.requestTimeoutMs ?? 10_000);
  const res = await requestTls(o.cpUrl.replace(/\/+$/, "") + "/v1/nodes/heartbeat", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
    tls,
    expect: { organization: CP_CERT_ORG },
    signal: signal ? AbortSignal.any([signal, timeout]) : timeout,
  });
  const text = await res.text();
  let json: unknown = null;
  try {
    json = JSON.parse(text);
  } catch {
    // not JSON
  }
  if (!res.ok) {
    const env = ErrorEnvelopeSchema.safeParse(json);
    throw new Error(
      env.success
        ? `HTTP ${res.status} ${env.data.error.code}: ${env.data.error.message}`
        : `HTTP ${res.status}`,
    );
  }
  const parsed = HeartbeatResponseSchema.safeParse(json);
  if (!parsed.success) throw new Error("invalid heartbeat response");
  return parsed.data;
}

/** Starts the loop; the first heartbeat is sent immediately. */
export function startHeartbeat(o: HeartbeatOptions): Heartbeat {
  const tls: ClientTlsMaterial = {
    caPem: o.identity.caPem,
    certPem: o.identity.certPem,
    keyPem: o.identity.keyPem,
  };
  const stopCtrl = new AbortController();
  let intervalMs = o.initialIntervalSeconds * 1000;
  let status: string | null = null;
  let failing = false;
  let wake: (() => void) | null = null;

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
        const res = await sendHeartbeat(o, tls, stopCtrl.signal);
        intervalMs = res.heartbeat_interval_seconds * 1000;
        next = intervalMs;
        if (failing || status !== res.node_status) {
          o.log.info("heartbeat: ok", {
            node: o.identity.nodeName,
            node_status: res.node_status,
            interval_s: res.heartbeat_interval_seconds,
          });
        }
        failing = false;
        status = res.node_status;
        if (await o.pools.setDesired(res.desired_pools)) next = Math.min(next, 200);
      } catch (e) {
        if (stopCtrl.signal.aborted) break;
        failing = true;
        o.log.warn("heartbeat: failed", { cp_url: o.cpUrl, err: errorMessage(e) });
      }
      if (stopCtrl.signal.aborted) break;
      await sleep(next);
    }
  })();

  return {
    async stop() {
      stopCtrl.abort();
      wake?.();
      await loop;
    },
  };
}
