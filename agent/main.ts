/**
 * `otherix-agent` entry point: wires config, bootstrap, accelerator detection, VM recovery
 * (re-adoption of running QEMUs), the mTLS server (with the serial console bridge), the
 * heartbeat loop and the report pusher.
 *
 * Usage: `otherix-agent [--config FILE]` (default `/etc/otherix/agent.yaml`).
 *
 * Fatal errors (invalid config, bootstrap failures, an unbindable port) are logged as one
 * JSON line on stderr carrying the message, and the process exits with status 1.
 *
 * Background loops: the heartbeat, the report pusher (agent/report.ts: VM phase and task
 * changes pushed as they happen), certificate renewal (agent/renew.ts: at 2/3 of the
 * certificate's lifetime; heartbeats, reports and the mTLS server's new connections switch to
 * the new certificate at once), and the serial log cap (every 2 s each VM's `serial.log`
 * over `qemu.serial_log_max_bytes` is cut to its newest half; agent/serial_log.ts).
 *
 * Heartbeats, reports and renewal share one control-plane list (agent/cp_endpoints.ts:
 * `bootstrap.cp_url` plus the replicas heartbeats name, persisted in
 * `<state>/control-planes.json`) and fail over between replicas; bootstrap (the first join)
 * uses `bootstrap.cp_url` only.
 *
 * VMs outlive the agent (agent/qemu.ts: QEMU runs daemonized under PID 1). SIGINT / SIGTERM:
 * stop the heartbeat and the report pusher, close the console viewers (1001) and the server,
 * abort operations in flight, close the QMP sessions, exit 0: every QEMU keeps running and
 * the next agent process re-adopts it (same pid, phase from QMP). Under systemd the unit
 * needs `KillMode=process` so that stopping the agent's unit leaves its VMs alone.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { architectureOf } from "../shared/api/common.ts";
import { ConfigError } from "../shared/config.ts";
import { DEFAULT_AGENT_CONFIG_FILE } from "../shared/constants.ts";
import { createLogger, type Logger } from "../shared/log.ts";
import { describeDecision, detectAccelerator, realHostProbe } from "./accel.ts";
import { type AgentIdentity, bootstrap, BootstrapError } from "./bootstrap.ts";
import { type AgentConfig, agentPaths, loadAgentConfig } from "./config.ts";
import { CP_ENDPOINTS_FILE, CpEndpoints } from "./cp_endpoints.ts";
import { errorMessage } from "./fsutil.ts";
import { createConsoleUpgrade } from "./console.ts";
import { startHeartbeat } from "./heartbeat.ts";
import { ImageCache } from "./images.ts";
import { PoolManager } from "./pools.ts";
import { mtlsReportSender, startReporter } from "./report.ts";
import { mtlsRenewRequester, startRenewer } from "./renew.ts";
import { createAgentApp, startAgentServer } from "./server.ts";
import { AgentMetrics } from "./metrics.ts";
import { hostName, SystemInfo } from "./sysinfo.ts";
import { TaskManager } from "./tasks.ts";
import { AGENT_VERSION } from "./version.ts";
import { VmManager } from "./vms.ts";
import { join } from "node:path";

const USAGE = `Usage: otherix-agent [--config FILE]

  --config FILE   agent config (default ${DEFAULT_AGENT_CONFIG_FILE})
  --version       print the version
  --help          print this help
`;

function fatal(log: Logger, message: string): never {
  log.error(message);
  Deno.exit(1);
}

/** The advertised endpoint: `server.advertise_url`, else `https://<hostname>:<port>`. */
export function advertisedEndpoint(cfg: AgentConfig, boundPort: number): string {
  return cfg.server.advertise_url ?? `https://${hostName()}:${boundPort}`;
}

/** Runs the agent until SIGINT/SIGTERM. */
export async function main(argv: string[]): Promise<void> {
  let args;
  try {
    args = parseArgs({
      args: argv,
      options: {
        config: { type: "string", default: DEFAULT_AGENT_CONFIG_FILE },
        version: { type: "boolean" },
        help: { type: "boolean", short: "h" },
      },
      strict: true,
    }).values;
  } catch (e) {
    console.error(`otherix-agent: ${errorMessage(e)}\n\n${USAGE}`);
    Deno.exit(2);
  }
  if (args.help) {
    console.log(USAGE);
    return;
  }
  if (args.version) {
    console.log(`otherix-agent ${AGENT_VERSION}`);
    return;
  }

  let cfg: AgentConfig;
  try {
    cfg = await loadAgentConfig(args.config!);
  } catch (e) {
    const log = createLogger("agent", "info");
    fatal(log, e instanceof ConfigError ? e.message : `config: ${errorMessage(e)}`);
  }
  const log = createLogger("agent", cfg.log.level);
  const paths = agentPaths(cfg);
  log.info("agent: starting", { version: AGENT_VERSION, config: args.config });

  let identity: AgentIdentity;
  try {
    identity = await bootstrap(cfg, log);
  } catch (e) {
    fatal(log, e instanceof BootstrapError ? e.message : `bootstrap: ${errorMessage(e)}`);
  }

  // The control-plane replicas heartbeats, reports and renewal fail over between.
  let endpoints: CpEndpoints;
  try {
    endpoints = await CpEndpoints.load({
      configured: cfg.bootstrap.cp_url,
      file: join(paths.stateDir, CP_ENDPOINTS_FILE),
      log,
    });
  } catch (e) {
    fatal(log, `agent: ${errorMessage(e)}`);
  }
  if (endpoints.list().length > 1) {
    log.info("control planes: known replicas", { control_planes: endpoints.list() });
  }

  const hostArch = architectureOf(Deno.build.arch);
  const decision = await detectAccelerator(
    cfg.qemu.accelerator,
    realHostProbe({
      qemuBinary: hostArch === "arm64" ? cfg.qemu.binary_arm64 : cfg.qemu.binary_amd64,
      qemuImg: cfg.qemu.qemu_img,
    }),
  );
  if (decision.warning) log.warn(decision.warning);
  if (decision.accelerator === "tcg" && cfg.qemu.accelerator === "auto") {
    log.warn(`${describeDecision(decision)}; falling back to TCG software emulation (slow)`);
  } else log.info(describeDecision(decision));

  const images = new ImageCache({
    idleTimeoutMs: cfg.images.download_idle_timeout_seconds * 1000,
    maxDownloadBytes: cfg.images.max_download_bytes,
    urlPolicy: cfg.images.url_policy,
    log,
  });
  const vms = new VmManager({
    paths,
    qemu: cfg.qemu,
    accelerator: decision.accelerator,
    hostArch,
    images,
    log,
    firmwareArm64: cfg.qemu.firmware_arm64,
  });
  try {
    await Deno.mkdir(paths.poolsDir, { recursive: true, mode: 0o750 });
    await vms.recover();
  } catch (e) {
    fatal(log, `agent: cannot prepare state directories: ${errorMessage(e)}`);
  }
  vms.startSerialLogTrimmer();
  const pools = new PoolManager(paths.poolsDir, join(paths.stateDir, "desired-pools.json"), log);
  await pools.load();
  await pools.cleanTemp();
  const tasks = new TaskManager(vms, log);

  let kickHeartbeat = () => {};
  const metrics = new AgentMetrics(vms);
  const app = createAgentApp({
    tasks,
    vms,
    pools,
    log,
    metrics,
    onPoolsChanged: () => kickHeartbeat(),
  });
  const consoles = createConsoleUpgrade({ vms, log });
  let server;
  try {
    server = await startAgentServer({
      hostname: cfg.server.listen.hostname,
      port: cfg.server.listen.port,
      identity,
      app,
      onUpgrade: consoles.onUpgrade,
    });
  } catch (e) {
    consoles.closeAll();
    await vms.close();
    fatal(
      log,
      `agent: cannot listen on ${cfg.server.listen.hostname}:${cfg.server.listen.port}: ${
        errorMessage(e)
      }`,
    );
  }
  const endpoint = advertisedEndpoint(cfg, server.port);
  log.info("agent: serving mTLS API", {
    listen: `${cfg.server.listen.hostname}:${server.port}`,
    endpoint,
    node: identity.nodeName,
  });

  // Optional plain-HTTP metrics port (config `metrics.listen`; default off).
  let metricsServer: Deno.HttpServer | null = null;
  const ml = cfg.metrics.listen;
  if (ml) {
    try {
      metricsServer = Deno.serve(
        { hostname: ml.hostname, port: ml.port, onListen: () => {} },
        async (req) =>
          new URL(req.url).pathname === "/metrics" && req.method === "GET"
            ? new Response(await metrics.render(), {
              headers: { "content-type": metrics.contentType },
            })
            : new Response("not found\n", { status: 404 }),
      );
    } catch (e) {
      fatal(log, `agent: cannot listen on ${ml.hostname}:${ml.port} (metrics): ${errorMessage(e)}`);
    }
    log.info("agent: serving plain-HTTP metrics", {
      listen: `${ml.hostname}:${(metricsServer.addr as Deno.NetAddr).port}`,
    });
  }

  const heartbeatOptions = {
    cpUrl: cfg.bootstrap.cp_url ?? "",
    endpoints,
    endpoint,
    accelerator: decision.accelerator,
    poolsDir: paths.poolsDir,
    system: new SystemInfo(paths.stateDir, log),
    pools,
    vms,
    recentTasks: () => tasks.recent(),
    migration: {
      host: cfg.migration.host ?? new URL(endpoint).hostname.replace(/^\[|\]$/g, ""),
      port_range: cfg.migration.port_range,
    },
    initialIntervalSeconds: cfg.heartbeat.interval_seconds,
    log,
  };
  let heartbeat = startHeartbeat({ ...heartbeatOptions, identity });
  kickHeartbeat = () => heartbeat.kick();
  if (endpoints.list().length === 0) {
    log.warn("heartbeat: bootstrap.cp_url is not set; heartbeats cannot reach the control plane");
  }
  const reporter = startReporter({
    nodeName: identity.nodeName,
    vms,
    tasks,
    log,
    // Per report: always the current identity (it changes on renewal).
    send: (report, signal) => mtlsReportSender(endpoints, identity)(report, signal),
  });
  // Certificate renewal at 2/3 of its lifetime (agent/renew.ts). Heartbeats, reports and the
  // mTLS server (for new connections) switch to the new identity at once.
  const renewer = endpoints.list().length > 0
    ? startRenewer({
      certDir: paths.certDir,
      identity: () => identity,
      request: mtlsRenewRequester(endpoints),
      log,
      onRenewed: async (next) => {
        identity = next;
        server.setIdentity(next.certPem, next.keyPem, next.caPem);
        const previous = heartbeat;
        await previous.stop();
        heartbeat = startHeartbeat({ ...heartbeatOptions, identity });
      },
    })
    : null;

  let stopping = false;
  const shutdown = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    log.info("agent: shutting down", { signal });
    await renewer?.stop();
    await heartbeat.stop();
    await reporter.stop();
    await endpoints.flushed();
    consoles.closeAll();
    await metricsServer?.shutdown();
    await server.close();
    await vms.close();
    log.info("agent: stopped");
    Deno.exit(0);
  };
  for (const sig of ["SIGINT", "SIGTERM"] as const) {
    Deno.addSignalListener(sig, () => void shutdown(sig));
  }
}

if (import.meta.main) {
  await main(Deno.args);
}
