/**
 * Wires the control plane: store → PKI → JWT secret → bootstrap admin → agent client →
 * public API (HTTP, or HTTPS when `server.tls_cert_file`/`tls_key_file` are set) → agent
 * API (TLS) → node monitor → task worker. Logs one `otherix-api started` line with both
 * listen addresses, the bound ports and the CA fingerprint.
 *
 * @module
 */
import { join } from "node:path";
import { Hono } from "hono";
import { errorHandler, notFoundHandler, requestLogger } from "../shared/http.ts";
import type { Logger } from "../shared/log.ts";
import { serveTls, type TlsServer } from "../shared/tls.ts";
import { type AgentClient, createAgentClient } from "./agent_client.ts";
import { loadOrCreateJwtSecret } from "./auth/jwt.ts";
import type { AppEnv } from "./auth/middleware.ts";
import type { ApiConfig } from "./config.ts";
import type { CpContext } from "./context.ts";
import { type NodeMonitor, startNodeMonitor } from "./node_monitor.ts";
import { ensureClusterPki, type HostFacts, hostFacts } from "./pki.ts";
import { agentApiApp } from "./routes/agent_api.ts";
import { bodyLimit } from "./routes/body_limit.ts";
import { authRoutes } from "./routes/auth.ts";
import { healthRoutes } from "./routes/health.ts";
import { nodeRoutes, poolRoutes } from "./routes/nodes.ts";
import { seedClusterSettings } from "./nodes.ts";
import { userRoutes } from "./routes/users.ts";
import { taskRoutes, vmRoutes } from "./routes/vms.ts";
import { openKvStore } from "./store/kv.ts";
import type { Store } from "./store/store.ts";
import { startWorker, type Worker } from "./tasks/worker.ts";
import { ensureBootstrapAdmin } from "./users.ts";

/** Largest request body accepted on the public API, bytes. */
export const PUBLIC_BODY_LIMIT = 1024 * 1024;

/** Builds the public API app. */
export function publicApp(ctx: CpContext): Hono<AppEnv> {
  const app = new Hono<AppEnv>();
  app.onError(errorHandler(ctx.log));
  app.notFound(notFoundHandler);
  app.use("*", requestLogger(ctx.log));
  app.use("*", bodyLimit(PUBLIC_BODY_LIMIT));
  app.route("/", healthRoutes(ctx.store));
  app.route("/v1/auth", authRoutes(ctx));
  app.route("/v1/users", userRoutes(ctx));
  app.route("/v1/nodes", nodeRoutes(ctx));
  app.route("/v1/pools", poolRoutes(ctx));
  app.route("/v1/vms", vmRoutes(ctx));
  app.route("/v1/tasks", taskRoutes(ctx));
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
    await Deno.mkdir(cfg.store.data_dir, { recursive: true, mode: 0o700 });
    const store: Store = await openKvStore(join(cfg.store.data_dir, "store.kv"));
    cleanups.push(() => store.close());

    const pki = await ensureClusterPki(store, cfg, log, opts.host ?? hostFacts());
    const jwtSecret = await loadOrCreateJwtSecret(store);
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
    };
    await seedClusterSettings(ctx);

    const tls = cfg.server.tls_cert_file && cfg.server.tls_key_file
      ? {
        cert: await Deno.readTextFile(cfg.server.tls_cert_file),
        key: await Deno.readTextFile(cfg.server.tls_key_file),
      }
      : {};
    const app = publicApp(ctx);
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
    });
    cleanups.push(() => agentServer.close());

    const monitor: NodeMonitor = startNodeMonitor(ctx);
    cleanups.push(() => monitor.stop());
    let worker: Worker | null = null;
    if (cfg.workers.enabled) {
      worker = startWorker(ctx);
      cleanups.push(() => worker!.stop());
    } else {
      log.warn("task workers disabled (workers.enabled: false): tasks stay pending");
    }

    const publicPort = server.addr.port;
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
