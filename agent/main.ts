/**
 * `otherix-agent` entry point: wires config, bootstrap, accelerator detection, VM recovery,
 * the mTLS server and the heartbeat loop.
 *
 * Usage: `otherix-agent [--config FILE]` (default `/etc/otherix/agent.yaml`).
 *
 * Fatal errors (invalid config, bootstrap failures, an unbindable port) are logged as one
 * JSON line on stderr carrying the message, and the process exits with status 1.
 *
 * Background loops: the heartbeat, and the serial log cap (every 2 s each VM's `serial.log`
 * over `qemu.serial_log_max_bytes` is cut to its newest half; agent/serial_log.ts).
 *
 * SIGINT / SIGTERM: stop the heartbeat, close the server, stop the serial log cap, then stop
 * every QEMU child cleanly (QMP `quit`, SIGKILL after 10 s) so no QEMU outlives the agent; VM
 * files are kept and the VMs are reported `stopped` after the next start. Exit status 0.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { architectureOf } from "../shared/api/common.ts";
import { ConfigError } from "../shared/config.ts";
import { DEFAULT_AGENT_CONFIG_FILE } from "../shared/constants.ts";
import { createLogger, type Logger } from "../shared/log.ts";
import { describeDecision, detectAccelerator, realHostProbe } from "./accel.ts";
import { bootstrap, BootstrapError } from "./bootstrap.ts";
import { type AgentConfig, agentPaths, loadAgentConfig } from "./config.ts";
import { errorMessage } from "./fsutil.ts";
import { startHeartbeat } from "./heartbeat.ts";
import { ImageCache } from "./images.ts";
import { PoolManager } from "./pools.ts";
import { createAgentApp, startAgentServer } from "./server.ts";
import { hostName } from "./sysinfo.ts";
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

  let identity;
  try {
    identity = await bootstrap(cfg, log);
  } catch (e) {
    fatal(log, e instanceof BootstrapError ? e.message : `bootstrap: ${errorMessage(e)}`);
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

  const app = createAgentApp({ tasks, vms, log });
  let server;
  try {
    server = await startAgentServer({
      hostname: cfg.server.listen.hostname,
      port: cfg.server.listen.port,
      identity,
      app,
    });
  } catch (e) {
    await vms.shutdown();
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

  const heartbeat = startHeartbeat({
    cpUrl: cfg.bootstrap.cp_url ?? "",
    identity,
    endpoint,
    accelerator: decision.accelerator,
    poolsDir: paths.poolsDir,
    stateDir: paths.stateDir,
    pools,
    vms,
    initialIntervalSeconds: cfg.heartbeat.interval_seconds,
    log,
  });
  if (!cfg.bootstrap.cp_url) {
    log.warn("heartbeat: bootstrap.cp_url is not set; heartbeats cannot reach the control plane");
  }

  let stopping = false;
  const shutdown = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    log.info("agent: shutting down", { signal });
    await heartbeat.stop();
    await server.close();
    await vms.shutdown();
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
