/**
 * The control plane's shared dependencies, handed to services, routes and loops.
 *
 * @module
 */
import type { Logger } from "../shared/log.ts";
import type { AgentClient } from "./agent_client.ts";
import type { ApiConfig } from "./config.ts";
import type { ClusterPki } from "./pki.ts";
import type { JwtKeySource } from "./auth/jwt.ts";
import type { Store } from "./store/store.ts";
import type { StoreHealth } from "./store/health.ts";
import type { Informer } from "./controllers/informer.ts";
import type {
  ApiTokenRecord,
  ClusterSettings,
  NodeRecord,
  PoolRecord,
  UserRecord,
  VmRecord,
} from "./repo/records.ts";
import type { ObservedVm } from "../shared/api/vm_runtime.ts";
import type { NodeAllocation } from "./vms/allocations.ts";
import type { CpMetrics } from "./metrics.ts";
import type { LeaderElection } from "./cluster/leader.ts";
import type { EtcdCluster } from "./cluster/members.ts";
import type { Replica } from "../shared/api/cluster.ts";

/**
 * The shared informer caches (cp/controllers/informer.ts) of this process, with indexes:
 * `vms` by `node` and `id`, `pools` by `node`, `observed` (the VMs agents report,
 * `/observed-vms/<node>/<id>`) by `node`, `allocations` (`/node-allocations/<node>`).
 */
export interface Caches {
  vms: Informer<VmRecord>;
  nodes: Informer<NodeRecord>;
  pools: Informer<PoolRecord>;
  observed: Informer<ObservedVm>;
  allocations: Informer<NodeAllocation>;
  /** The cluster settings (one key, `/cluster/settings`). */
  settings: Informer<ClusterSettings>;
  /** The live control-plane replicas (`/replicas/<name>`, cp/cluster/replicas.ts). */
  replicas: Informer<Replica>;
  /** The users (`/users/<id>`): the auth middleware's lookups (cp/auth/middleware.ts). */
  users: Informer<UserRecord>;
  /** API token records (`/api-tokens/<sha256>`): the auth middleware's lookups. */
  apiTokens: Informer<ApiTokenRecord>;
}

/** Everything a control-plane component needs. */
export interface CpContext {
  cfg: ApiConfig;
  log: Logger;
  store: Store;
  pki: ClusterPki;
  /** HS256 keys of access tokens: the keyring (cp/auth/jwt.ts), or one bare secret (tests). */
  jwtSecret: JwtKeySource;
  /** mTLS client for agent endpoints. */
  agents: AgentClient;
  /** Clock (tests may inject one). */
  now: () => Date;
  /** Informer caches, once started (absent in tests that do not wire them). */
  cache?: Caches;
  /**
   * When this process last received a heartbeat from each node, epoch ms. Liveness lives here
   * between the persisted `last_heartbeat_at` refreshes (cp/nodes/service.ts applyHeartbeat).
   */
  liveness?: Map<string, number>;
  /** Prometheus metrics (cp/metrics.ts), when wired. */
  metrics?: CpMetrics;
  /**
   * The controller leader election (cp/cluster/leader.ts): controllers reconcile only while
   * this replica leads. Absent (unit tests): this process always leads.
   */
  election?: LeaderElection;
  /** The store's health as last pinged (cp/store/health.ts): marks stale reads. */
  storeHealth?: StoreHealth;
  /** The etcd cluster (`store.backend: etcd`); absent on the embedded store. */
  etcd?: EtcdCluster;
}

/** True while this replica runs the controllers (it leads, or there is no election). */
export function leading(ctx: CpContext): boolean {
  return ctx.election?.isLeader() ?? true;
}
