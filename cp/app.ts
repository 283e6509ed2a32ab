/**
 * Wires the control plane: store → PKI → JWT secret → bootstrap admin → agent client →
 * informer caches → public API (HTTP, or HTTPS when `server.tls_cert_file`/`tls_key_file`
 * are set) → agent API (TLS) → controllers (node, pool provisioner, VM, pool scan, network) →
 * task worker. Logs one `otherix-api started` line with both listen addresses, the bound ports and
 * the CA fingerprint.
 *
 * @module
 */
import { join } from "node:path";
import { Hono } from "hono";
import { errorHandler, notFoundHandler, requestLogger } from "../shared/http.ts";
import type { Logger } from "../shared/log.ts";
import { serveTls, type TlsServer } from "../shared/tls.ts";
import { type AgentClient, createAgentClient } from "./agent_client.ts";
import { JwtKeyring } from "./auth/jwt.ts";
import type { AppEnv } from "./auth/middleware.ts";
import type { ApiConfig } from "./config.ts";
import type { CpContext } from "./context.ts";
import { ensureClusterPki, type HostFacts, hostFacts } from "./pki.ts";
import { bodyLimit, requireJsonContentType } from "./routes/body_limit.ts";
import { authRoutes } from "./routes/auth.ts";
import { healthRoutes } from "./routes/health.ts";
import { userRoutes } from "./users/routes.ts";
import { auditLogFor } from "./audit/log.ts";
import { auditMiddleware } from "./audit/middleware.ts";
import { auditRoutes } from "./audit/routes.ts";
import { openKvStore } from "./store/kv.ts";
import { StoreHealth } from "./store/health.ts";
import { openConfiguredEtcdStore } from "./store/etcd.ts";
import { secureDataDir } from "./store/file_modes.ts";
import type { Store } from "./store/store.ts";
import { startWorker, type Worker } from "./tasks/worker.ts";
import { ensureBootstrapAdmin } from "./users/service.ts";
import { agentApiApp } from "./nodes/agent_api.ts";
import { nodeController } from "./nodes/controller.ts";
import { nodeRoutes } from "./nodes/routes.ts";
import { joinTokenRoutes } from "./nodes/join_token_routes.ts";
import { poolRoutes } from "./pools/routes.ts";
import { cachedNodeUsage, nodeView, seedClusterSettings } from "./nodes/service.ts";
import { poolInstanceView } from "./pools/view.ts";
import { inPool } from "./pools/capacity.ts";
import { poolProvisioner } from "./pools/controller.ts";
import { poolScanHandler } from "./pools/scan.ts";
import { poolScanController, scanKeyOf } from "./pools/scan_controller.ts";
import { clusterRoutes } from "./cluster/routes.ts";
import { LeaderElection } from "./cluster/leader.ts";
import { type EtcdRuntime, externalEtcdCluster, startEtcdRuntime } from "./cluster/etcd_runtime.ts";
import type { EtcdCluster } from "./cluster/members.ts";
import {
  advertiseHost,
  registerReplica,
  replicaRecord,
  REPLICAS_PREFIX,
} from "./cluster/replicas.ts";
import type { Replica } from "../shared/api/cluster.ts";
import { networkRoutes } from "./networks/routes.ts";
import {
  startNetworkController,
  vmNetworksIndex,
  VMS_BY_NETWORK_INDEX,
} from "./networks/controller.ts";
import { vmController } from "./vms/controller.ts";
import { taskRoutes, vmRoutes } from "./vms/routes.ts";
import { vmView } from "./vms/service.ts";
import { vmTaskHandler } from "./vms/tasks.ts";
import type { ObservedVm } from "../shared/api/vm_runtime.ts";
import { type NodeAllocation, seedAllocations } from "./vms/allocations.ts";
import { logPlacementSettings } from "./vms/placement.ts";
import { openApiDocument } from "./openapi.ts";
import { CpMetrics } from "./metrics.ts";
import { OTHERIX_VERSION } from "../shared/version.ts";
import { TaskRegistry } from "./tasks/registry.ts";
import { taskView } from "./tasks/queue.ts";
import { Informer } from "./controllers/informer.ts";
import type { Controller } from "./controllers/controller.ts";
import { eventRoutes, type EventSource } from "./events/mod.ts";
import { consolePageRoutes, consoleRoutes } from "./console/mod.ts";
import { can } from "../shared/rbac.ts";
import {
  type ApiTokenRecord,
  type ClusterSettings,
  keys,
  type NodeRecord,
  type PoolRecord,
  type TaskRecord,
  type UserRecord,
  type VmRecord,
} from "./repo/records.ts";
import type { Caches } from "./context.ts";

/** Largest request body accepted on the public API, bytes. */
export const PUBLIC_BODY_LIMIT = 1024 * 1024;

/** The resource kinds of the event stream (`GET /v1/events`), with the views GETs serve. */
export function eventSources(ctx: CpContext): EventSource[] {
  return [
    {
      kind: "vm",
      prefix: keys.vms,
      permission: "vm:read",
      view: (v) => vmView(v as VmRecord),
      nameOf: (v) => (v as VmRecord).name,
    },
    {
      kind: "task",
      prefix: keys.tasks,
      permission: "task:read",
      view: (t) => taskView(t as TaskRecord),
      nameOf: (t) => (t as TaskRecord).id,
    },
    {
      kind: "node",
      prefix: keys.nodes,
      permission: "node:read",
      view: (n, user) =>
        nodeView(
          n as NodeRecord,
          cachedNodeUsage(ctx, (n as NodeRecord).name),
          can(user.role, "node:manage"),
          ctx.liveness?.get((n as NodeRecord).name),
        ),
      nameOf: (n) => (n as NodeRecord).name,
    },
    {
      kind: "pool",
      prefix: keys.pools,
      permission: "storage_pool:read",
      view: (p) => {
        const pool = p as PoolRecord;
        const def = ctx.cache?.settings.get(keys.settings)?.default_pool_name ?? null;
        const vms = ctx.cache?.vms;
        const placed = (vms?.byIndex("node", pool.node) ?? []).map((k) => vms!.get(k))
          .filter((v): v is VmRecord => !!v && inPool(pool, v));
        return poolInstanceView(pool, def, placed);
      },
      nameOf: (p) => `${(p as PoolRecord).name}/${(p as PoolRecord).node}`,
    },
  ];
}

/** Builds the informer caches (VMs by node and id, nodes, pools by node); `startControllers` starts them. */
export function startCaches(ctx: CpContext): Caches {
  const onError = (e: unknown) => ctx.log.warn("informer error", { err: e });
  const caches: Caches = {
    vms: new Informer<VmRecord>({
      store: ctx.store,
      prefix: keys.vms,
      indexers: {
        node: (v) => [v.node],
        id: (v) => [v.id],
        [VMS_BY_NETWORK_INDEX]: vmNetworksIndex,
      },
      onError,
    }),
    nodes: new Informer<NodeRecord>({ store: ctx.store, prefix: keys.nodes, onError }),
    pools: new Informer<PoolRecord>({
      store: ctx.store,
      prefix: keys.pools,
      indexers: { node: (p) => [p.node], name: (p) => [p.name] },
      onError,
    }),
    observed: new Informer<ObservedVm>({
      store: ctx.store,
      prefix: keys.observedVms,
      indexers: { node: (_v, key) => [key.slice(keys.observedVms.length).split("/")[0]] },
      onError,
    }),
    allocations: new Informer<NodeAllocation>({
      store: ctx.store,
      prefix: keys.nodeAllocations,
      onError,
    }),
    settings: new Informer<ClusterSettings>({ store: ctx.store, prefix: keys.settings, onError }),
    replicas: new Informer<Replica>({ store: ctx.store, prefix: REPLICAS_PREFIX, onError }),
    users: new Informer<UserRecord>({ store: ctx.store, prefix: keys.users, onError }),
    apiTokens: new Informer<ApiTokenRecord>({
      store: ctx.store,
      prefix: keys.apiToken(""),
      onError,
    }),
  };
  return caches;
}

/**
 * Feeds and starts the controllers: the node controller and the pool provisioner on node
 * changes, the VM controller on VM changes and on its node's changes, the periodic pool scan
 * (cp/pools/scan_controller.ts) on pool instance changes.
 */
export async function startControllers(ctx: CpContext, caches: Caches): Promise<Controller[]> {
  const nodes = nodeController(ctx);
  const pools = poolProvisioner(ctx);
  const scans = poolScanController(ctx);
  caches.pools.addHandlers(scans.enqueueOnChange(scanKeyOf));
  const vms = vmController(ctx);
  const nodeName = (key: string) => key.slice(keys.nodes.length);
  caches.nodes.addHandlers(nodes.enqueueOnChange((k) => nodeName(k)));
  caches.nodes.addHandlers(pools.enqueueOnChange((k) => nodeName(k)));
  caches.nodes.addHandlers(vms.enqueueOnChange((k) => {
    return caches.vms.byIndex("node", nodeName(k)).map((vk) => vk.slice(keys.vms.length));
  }));
  caches.vms.addHandlers(vms.enqueueOnChange((k) => k.slice(keys.vms.length)));
  // An observed VM changed: its VM (when the control plane knows it) and its node (orphans).
  const observedNode = (k: string) => k.slice(keys.observedVms.length).split("/")[0];
  caches.observed.addHandlers(nodes.enqueueOnChange(observedNode));
  caches.observed.addHandlers(vms.enqueueOnChange((k) => {
    const id = k.slice(k.lastIndexOf("/") + 1);
    return caches.vms.byIndex("id", id).map((vk) => vk.slice(keys.vms.length));
  }));
  await Promise.all([
    caches.vms.start(),
    caches.nodes.start(),
    caches.pools.start(),
    caches.observed.start(),
    caches.allocations.start(),
    caches.settings.start(),
    caches.replicas.start(),
    caches.users.start(),
    caches.apiTokens.start(),
  ]);
  nodes.start(() => caches.nodes.keys().map(nodeName));
  pools.start(() => caches.nodes.keys().map(nodeName));
  scans.start(() => caches.pools.keys().map(scanKeyOf));
  vms.start(() => caches.vms.keys().map((k) => k.slice(keys.vms.length)));
  const controllers = [nodes, pools, vms, scans];
  // A replica that becomes the leader looks at everything once (cp/cluster/leader.ts).
  ctx.election?.onChange((leads) => {
    if (leads) { for (const c of controllers) c.resync(); }
  });
  return controllers;
}

/** Builds the public API app. */
export function publicApp(ctx: CpContext, signal?: AbortSignal): Hono<AppEnv> {
  const app = new Hono<AppEnv>();
  app.onError(errorHandler(ctx.log));
  app.notFound(notFoundHandler);
  app.use("*", requestLogger(ctx.log));
  // Every call that is not a read, and every failed login (cp/audit/).
  app.use("*", auditMiddleware(auditLogFor(ctx), () => ctx.now()));
  if (ctx.metrics) app.use("*", ctx.metrics.http());
  if (ctx.storeHealth) app.use("*", ctx.storeHealth.middleware());
  app.use("*", bodyLimit(PUBLIC_BODY_LIMIT));
  app.use("*", requireJsonContentType());
  app.route("/", healthRoutes(ctx.store));
  // Prometheus exposition (cp/metrics.ts); scrape it like any exporter.
  app.get("/metrics", async (c) => {
    if (!ctx.metrics) return c.notFound();
    return c.body(await ctx.metrics.text(), 200, { "content-type": ctx.metrics.contentType });
  });
  // The OpenAPI document of this app (cp/openapi.ts), built once on first request.
  let openapi: unknown = null;
  app.get("/v1/openapi.json", (c) => c.json(openapi ??= openApiDocument(app, OTHERIX_VERSION)));
  app.route("/v1/auth", authRoutes(ctx));
  app.route("/v1/users", userRoutes(ctx));
  app.route("/v1/audit", auditRoutes(ctx));
  app.route("/v1/nodes/join-tokens", joinTokenRoutes(ctx));
  app.route("/v1/nodes", nodeRoutes(ctx));
  app.route("/v1/pools", poolRoutes(ctx));
  app.route("/v1/cluster", clusterRoutes(ctx));
  app.route("/v1/networks", networkRoutes(ctx));
  app.route("/", consolePageRoutes(ctx));
  app.route("/v1/vms", consoleRoutes(ctx));
  app.route("/v1/vms", vmRoutes(ctx));
  app.route("/v1/tasks", taskRoutes(ctx));
  app.route("/v1/events", eventRoutes(ctx, eventSources(ctx), { signal }));
  return app;
}

/** A running control plane. */
export interface ControlPlane {
  /** Bound port of the public API. */
  publicPort: number;
  /** Bound port of the agent-facing TLS API. */
  agentPort: number;
  /** `sha256:<hex>` of the cluster CA. */
  caFingerprint: string;
  /** The wired context (for tests). */
  ctx: CpContext;
  /** Stops the loops and servers and closes the store (graceful; idempotent). */
  stop(): Promise<void>;
}

/** Options of {@link startControlPlane}. */
export interface StartOptions {
  /** Env lookup for the bootstrap admin vars (default `Deno.env.get`). */
  getEnv?: (name: string) => string | undefined;
  /** Hostname / interface addresses (default: read from the system). */
  host?: HostFacts;
  /** Clock. */
  now?: () => Date;
}

/**
 * Starts the control plane for `cfg`.
 *
 * @throws CaDivergenceError, listen errors, invalid bootstrap env — after releasing whatever
 *   was already started
 */
export async function startControlPlane(
  cfg: ApiConfig,
  log: Logger,
  opts: StartOptions = {},
): Promise<ControlPlane> {
  const cleanups: (() => Promise<void> | void)[] = [];
  const cleanup = async () => {
    for (const fn of cleanups.reverse()) {
      try {
        await fn();
      } catch (e) {
        log.warn("shutdown step failed", { err: e });
      }
    }
    cleanups.length = 0;
  };
  try {
    // The data dir holds the CA key and the JWT keys: 0700/0600, or no start (file_modes.ts).
    const storeFile = join(cfg.store.data_dir, "store.kv");
    const secured = await secureDataDir(cfg.store.data_dir, storeFile);
    for (const f of secured.fixed) log.warn("data dir: permissions tightened", f);
    let store: Store;
    let etcd: EtcdRuntime | null = null;
    let external: (EtcdCluster & { close(): void }) | null = null;
    if (cfg.store.backend === "etcd" && cfg.store.etcd.endpoints.length) {
      // An external etcd cluster (store.etcd.endpoints): no member of this replica's own.
      store = await openConfiguredEtcdStore(cfg.store.etcd);
      cleanups.push(() => store.close());
      external = await externalEtcdCluster(cfg);
      cleanups.push(() => external!.close());
    } else if (cfg.store.backend === "etcd") {
      // This replica's etcd member first: the store lives in it (cp/cluster/etcd_runtime.ts).
      etcd = await startEtcdRuntime(cfg, log, opts.host ?? hostFacts(), opts.now);
      store = etcd.store;
      cleanups.push(() => etcd!.stop());
    } else {
      store = await openKvStore(storeFile);
      cleanups.push(() => store.close());
    }

    const pki = await ensureClusterPki(store, cfg, log, opts.host ?? hostFacts());
    const jwtSecret = await JwtKeyring.load(store);
    cleanups.push(() => jwtSecret.stop());
    await ensureBootstrapAdmin(store, opts.getEnv ?? ((n) => Deno.env.get(n)), log);

    const agents: AgentClient = createAgentClient(pki.ca.certPem, pki.replica);
    cleanups.push(() => agents.close());

    const ctx: CpContext = {
      cfg,
      log,
      store,
      pki,
      jwtSecret,
      agents,
      now: opts.now ?? (() => new Date()),
      ...(etcd ? { etcd: etcd.cluster } : external ? { etcd: external } : {}),
    };
    ctx.metrics = new CpMetrics(ctx);
    ctx.storeHealth = new StoreHealth(store, log);
    ctx.storeHealth.start();
    cleanups.push(() => ctx.storeHealth?.stop());
    await seedClusterSettings(ctx);
    await seedAllocations(ctx);
    logPlacementSettings(ctx);
    // Controllers run on the elected replica only; a lone replica leads once this resolves.
    const election = new LeaderElection({
      store,
      identity: pki.replicaName,
      ttlSeconds: cfg.workers.lease_ttl_seconds,
      log,
    });
    ctx.election = election;
    await election.start();
    cleanups.push(() => election.stop());
    const caches = startCaches(ctx);
    ctx.cache = caches;
    const stopAll = new AbortController();
    cleanups.push(() => stopAll.abort());
    // The caches are synced before either API serves a request (placement and heartbeats
    // read them).
    const controllers = await startControllers(ctx, caches);
    cleanups.push(async () => {
      await Promise.all(controllers.map((c) => c.stop()));
      for (const i of Object.values(caches)) i.stop();
    });
    // Networks: each node's agent kept in step with the networks its VMs use.
    const networks = await startNetworkController(ctx, caches);
    cleanups.push(() => networks.stop());
    election.onChange((leads) => leads && networks.controller.resync());

    const tls = cfg.server.tls_cert_file && cfg.server.tls_key_file
      ? {
        cert: await Deno.readTextFile(cfg.server.tls_cert_file),
        key: await Deno.readTextFile(cfg.server.tls_key_file),
      }
      : {};
    const app = publicApp(ctx, stopAll.signal);
    await auditLogFor(ctx).prune(ctx.now()); // retention, also after a long downtime
    const server = Deno.serve({
      hostname: cfg.server.listen.hostname,
      port: cfg.server.listen.port,
      onListen: () => {},
      ...tls,
    }, app.fetch);
    cleanups.push(async () => {
      await server.shutdown();
    });

    const agentServer: TlsServer = await serveTls({
      hostname: cfg.server.agent_listen.hostname,
      port: cfg.server.agent_listen.port,
      certPem: pki.replica.certPem,
      keyPem: pki.replica.keyPem,
      caPem: pki.ca.certPem,
      requireClientCert: false,
      fetch: agentApiApp(ctx).fetch,
      // Agents keep their connection across heartbeats (a little over two intervals).
      keepAliveTimeoutMs: (2 * cfg.nodes.heartbeat_interval_seconds + 5) * 1000,
    });
    cleanups.push(() => agentServer.close());

    let worker: Worker | null = null;
    if (cfg.workers.enabled) {
      const registry = new TaskRegistry().register(vmTaskHandler).register(poolScanHandler);
      worker = await startWorker(ctx, registry);
      cleanups.push(() => worker!.stop());
    } else {
      log.warn("task workers disabled (workers.enabled: false): tasks stay pending");
    }

    const publicPort = server.addr.port;
    const registration = await registerReplica(
      store,
      replicaRecord({
        name: pki.replicaName,
        host: advertiseHost(cfg, opts.host ?? hostFacts()),
        publicPort,
        publicTls: !!tls.cert,
        agentPort: agentServer.port,
        version: OTHERIX_VERSION,
        startedAt: ctx.now(),
      }),
      cfg.workers.lease_ttl_seconds,
      log,
    );
    cleanups.push(() => registration.stop());
    log.info("otherix-api started", {
      listen: `${cfg.server.listen.hostname}:${publicPort}`,
      agent_listen: `${cfg.server.agent_listen.hostname}:${agentServer.port}`,
      public_port: publicPort,
      agent_port: agentServer.port,
      public_tls: !!tls.cert,
      ca_fingerprint: pki.caFingerprint,
      replica: pki.replicaName,
      data_dir: cfg.store.data_dir,
      workers: cfg.workers.enabled,
    });

    let stopping: Promise<void> | null = null;
    return {
      publicPort,
      agentPort: agentServer.port,
      caFingerprint: pki.caFingerprint,
      ctx,
      stop: () => (stopping ??= cleanup().then(() => log.info("otherix-api stopped"))),
    };
  } catch (e) {
    await cleanup();
    throw e;
  }
}
