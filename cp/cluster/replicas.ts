/**
 * The replica registry (issue 11): every running control-plane replica keeps
 * `/replicas/<name>` = {@link Replica} in the store, attached to a lease it renews every third
 * of `workers.lease_ttl_seconds`, so the record disappears within the TTL after the replica
 * dies (kill -9 included) and at once when it stops gracefully. Heartbeat responses carry
 * every live replica's `agent_url` (agents fail over between them) and
 * `GET /v1/cluster/members` lists them. On the embedded store there is one replica.
 *
 * @module
 */
import { isIP } from "node:net";
import type { Replica } from "../../shared/api/cluster.ts";
import type { Logger } from "../../shared/log.ts";
import type { ApiConfig } from "../config.ts";
import type { Informer } from "../controllers/informer.ts";
import { realTimers, type Timers } from "../controllers/workqueue.ts";
import type { HostFacts } from "../pki.ts";
import { type Store, StoreError } from "../store/store.ts";

/** Store prefix of the registry. */
export const REPLICAS_PREFIX = "/replicas/";

/** The registry key of replica `name`. */
export function replicaKey(name: string): string {
  return `${REPLICAS_PREFIX}${name}`;
}

const WILDCARDS = new Set(["0.0.0.0", "::", "", "[::]"]);

/**
 * The host other machines reach this replica at: `server.advertise_host`, else the agent
 * listen host when not a wildcard, else the first non-loopback address, else the hostname.
 */
export function advertiseHost(cfg: ApiConfig, facts: HostFacts): string {
  if (cfg.server.advertise_host) return cfg.server.advertise_host;
  const listen = cfg.server.agent_listen.hostname;
  if (!WILDCARDS.has(listen)) return listen;
  return facts.addresses[0] ?? facts.hostname;
}

/** `host:port` for a URL (IPv6 literals bracketed). */
function hostPort(host: string, port: number): string {
  return isIP(host) === 6 ? `[${host}]:${port}` : `${host}:${port}`;
}

/** This replica's registry record for the bound ports. */
export function replicaRecord(opts: {
  name: string;
  host: string;
  publicPort: number;
  publicTls: boolean;
  agentPort: number;
  version: string;
  startedAt: Date;
}): Replica {
  return {
    name: opts.name,
    api_url: `${opts.publicTls ? "https" : "http"}://${hostPort(opts.host, opts.publicPort)}`,
    agent_url: `https://${hostPort(opts.host, opts.agentPort)}`,
    version: opts.version,
    started_at: opts.startedAt.toISOString(),
  };
}

/**
 * Agent URLs of the live replicas, `self` first, then by name: what a heartbeat response
 * carries (`control_planes`).
 */
export function agentUrls(replicas: Iterable<Replica>, self: string): string[] {
  const list = [...replicas].sort((a, b) =>
    a.name === self ? -1 : b.name === self ? 1 : a.name < b.name ? -1 : a.name > b.name ? 1 : 0
  );
  return [...new Set(list.map((r) => r.agent_url))];
}

/** A running registration. */
export interface Registration {
  /** Removes the record (revokes its lease) and stops renewing. Idempotent. */
  stop(): Promise<void>;
}

/**
 * Registers `record` under a lease of `ttlSeconds` and keeps it: renews every third of the
 * TTL; when the lease is lost (the store expired it after a long pause, or a store failover)
 * registers again with a new one.
 *
 * @throws StoreError when the first registration fails
 */
export async function registerReplica(
  store: Store,
  record: Replica,
  ttlSeconds: number,
  log: Logger,
  timers: Timers = realTimers,
): Promise<Registration> {
  const key = replicaKey(record.name);
  const put = async () => {
    const lease = await store.grant(ttlSeconds);
    await store.put(key, record, { lease });
    return lease;
  };
  let lease = await put();
  let stopped = false;
  let timer: unknown = null;
  let busy: Promise<void> = Promise.resolve();
  const period = Math.max(100, Math.floor((ttlSeconds * 1000) / 3));
  const tick = async () => {
    try {
      await store.keepAlive(lease);
    } catch (e) {
      if (!(e instanceof StoreError)) throw e;
      log.warn("replica registry: lease lost; registering again", { replica: record.name });
      lease = await put();
    }
  };
  const schedule = () => {
    if (stopped) return;
    timer = timers.setTimeout(() => {
      busy = tick().catch((e) => {
        log.warn("replica registry: renewal failed", { replica: record.name, err: e });
      }).finally(schedule);
    }, period);
  };
  schedule();
  return {
    stop: async () => {
      if (stopped) return;
      stopped = true;
      timers.clearTimeout(timer);
      await busy;
      await store.revoke(lease).catch(() => {});
    },
  };
}

/** The live replicas in an informer over {@link REPLICAS_PREFIX}. */
export function liveReplicas(cache: Informer<Replica> | undefined): Replica[] {
  return cache?.list() ?? [];
}
