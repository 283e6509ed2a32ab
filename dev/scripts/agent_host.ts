/**
 * The machine the dev agent runs on, behind one interface for the targets: the Lima VM
 * (files and systemctl through `limactl shell otherix-dev sudo …`) or this Linux host (files
 * written directly; the agent run by `systemctl [--user]` or, where systemd does not run, as a
 * daemon from source, see dev/scripts/daemon.ts).
 *
 * Layout on the agent host (spec 001 "Step 1 — run seed-dev"): `<config>/agent.yaml`,
 * `<config>/bootstrap.env` (0644), `<config>/bootstrap-token` (0600), certificates in
 * `<state>/certs/`. Lima and Linux-native system scope use /etc/otherix and /var/lib/otherix;
 * the user scope keeps all of it under ~/.config/otherix.
 *
 * @module
 */
import { dirname, join } from "node:path";
import { STANDARD_ROOTS } from "../../shared/constants.ts";
import { daemonFiles, daemonPid, startDaemon, stopDaemon } from "./daemon.ts";
import type { DevEnv, NativeLayout } from "./env.ts";
import { LIMA_VM, limaSudo } from "./lima.ts";
import { DevError, must, run } from "./proc.ts";

/** The unit (and daemon) name of the agent. */
export const AGENT_UNIT = "otherix-agent";

/** Where the agent's files are and how to reach them. */
export interface AgentHost {
  /** e.g. `Lima VM otherix-dev` or `this host (user scope)`. */
  name: string;
  configDir: string;
  stateDir: string;
  certDir: string;
  /** Where to look when the agent does not come up. */
  logsHint: string;
  /** Writes `path` with `mode` (atomic where local). */
  writeFile(path: string, content: string, mode: number): Promise<void>;
  /** A file's text, or null when absent. */
  readFile(path: string): Promise<string | null>;
  /** Removes files (missing ones are fine). */
  remove(paths: string[]): Promise<void>;
  restartAgent(): Promise<void>;
  /** Stops the agent (QEMU VMs keep running: they outlive it by design). */
  stopAgent(): Promise<void>;
}

/** The agent inside the Lima VM (standard paths, systemd unit from the template). */
export function limaAgentHost(): AgentHost {
  const certDir = join(STANDARD_ROOTS.state, "certs");
  return {
    name: `Lima VM ${LIMA_VM}`,
    configDir: STANDARD_ROOTS.config,
    stateDir: STANDARD_ROOTS.state,
    certDir,
    logsHint: `limactl shell ${LIMA_VM} sudo journalctl -u ${AGENT_UNIT} -f`,
    async writeFile(path, content, mode) {
      const m = mode.toString(8).padStart(4, "0");
      await must(limaSudo("install", "-D", "-m", m, "/dev/stdin", path), {
        stdin: content,
        capture: true,
      });
    },
    async readFile(path) {
      const res = await run(limaSudo("cat", path), { capture: true });
      return res.code === 0 ? res.stdout : null;
    },
    async remove(paths) {
      if (paths.length) await must(limaSudo("rm", "-f", ...paths), { capture: true });
    },
    async restartAgent() {
      await must(limaSudo("systemctl", "enable", AGENT_UNIT), { capture: true });
      await must(limaSudo("systemctl", "restart", AGENT_UNIT));
    },
    async stopAgent() {
      await must(limaSudo("systemctl", "stop", AGENT_UNIT));
    },
  };
}

/** The agent's config for a Linux-native layout (what bootstrap-dev writes). */
export function nativeAgentYaml(l: NativeLayout): string {
  return [
    "# Written by `make bootstrap-dev` (dev/scripts/agent_host.ts): the Linux-native dev agent.",
    "# Bootstrap values come from bootstrap.env and bootstrap-token beside this file (seed-dev).",
    "paths:",
    `  config_dir: ${JSON.stringify(l.configDir)}`,
    `  state_dir: ${JSON.stringify(l.stateDir)}`,
    `  run_dir: ${JSON.stringify(l.runDir)}`,
    "server:",
    `  listen: "0.0.0.0:${l.agentPort}"`,
    `  advertise_url: "https://127.0.0.1:${l.agentPort}"`,
    "heartbeat:",
    "  interval_seconds: 15",
    "qemu:",
    "  accelerator: auto",
    "log:",
    "  level: info",
    "",
  ].join("\n");
}

/** The argv running the agent from source under its sandbox (what `deno task otherix-agent` runs). */
export function agentArgv(repo: string, configFile: string): string[] {
  return [
    Deno.execPath(),
    "run",
    "--allow-all",
    join(repo, "scripts/run.ts"),
    "otherix-agent",
    "--config",
    configFile,
  ];
}

/**
 * The dev unit for a Linux-native agent run by systemd: the agent from source, restarted on
 * failure, `KillMode=process` so VMs survive its restarts (the production unit is
 * deploy/systemd/otherix-agent.service).
 */
export function nativeDevUnit(l: NativeLayout, repo: string): string {
  const argv = agentArgv(repo, join(l.configDir, "agent.yaml"));
  return [
    "# Written by `make bootstrap-dev` (dev/scripts/agent_host.ts): the dev agent from source.",
    "[Unit]",
    "Description=Otherix node agent (dev, from source)",
    "After=network-online.target",
    "",
    "[Service]",
    `ExecStart=${argv.map((a) => (/\s/.test(a) ? JSON.stringify(a) : a)).join(" ")}`,
    `WorkingDirectory=${repo}`,
    `Environment=DENO_DIR=${
      Deno.env.get("DENO_DIR") ?? join(Deno.env.get("HOME") ?? "/root", ".cache/deno")
    }`,
    "KillMode=process",
    "Restart=on-failure",
    "RestartSec=5s",
    "",
    "[Install]",
    `WantedBy=${l.scope === "user" ? "default.target" : "multi-user.target"}`,
    "",
  ].join("\n");
}

async function writeLocal(path: string, content: string, mode: number): Promise<void> {
  await Deno.mkdir(dirname(path), { recursive: true, mode: 0o755 });
  const tmp = `${path}.tmp-${crypto.randomUUID()}`;
  await Deno.writeTextFile(tmp, content, { mode });
  await Deno.chmod(tmp, mode);
  await Deno.rename(tmp, path);
}

/** The agent on this Linux host. */
export function nativeAgentHost(env: DevEnv): AgentHost {
  const l = env.native;
  if (!l) throw new DevError("not in the native mode");
  const systemctl = l.scope === "user" ? ["systemctl", "--user"] : ["systemctl"];
  const files = daemonFiles(env.runDir, AGENT_UNIT);
  return {
    name: `this host (${l.scope} scope${l.systemd ? ", systemd" : ", no systemd"})`,
    configDir: l.configDir,
    stateDir: l.stateDir,
    certDir: join(l.stateDir, "certs"),
    logsHint: l.systemd
      ? `journalctl ${l.scope === "user" ? "--user " : ""}-u ${AGENT_UNIT} -f`
      : `tail -f ${files.log}`,
    writeFile: writeLocal,
    async readFile(path) {
      try {
        return await Deno.readTextFile(path);
      } catch (e) {
        if (e instanceof Deno.errors.NotFound) return null;
        throw e;
      }
    },
    async remove(paths) {
      for (const p of paths) await Deno.remove(p).catch(() => {});
    },
    async restartAgent() {
      if (l.systemd) {
        await must([...systemctl, "restart", AGENT_UNIT]);
        return;
      }
      await stopDaemon(env.runDir, AGENT_UNIT);
      await startDaemon(
        env.runDir,
        AGENT_UNIT,
        agentArgv(env.repo, join(l.configDir, "agent.yaml")),
      );
    },
    async stopAgent() {
      if (l.systemd) {
        await must([...systemctl, "stop", AGENT_UNIT]);
        return;
      }
      await stopDaemon(env.runDir, AGENT_UNIT);
    },
  };
}

/** True when the native agent runs as a daemon started by the targets. */
export async function nativeAgentRunning(env: DevEnv): Promise<boolean> {
  return (await daemonPid(env.runDir, AGENT_UNIT)) !== null;
}

/** The agent host of `env`. */
export function agentHostOf(env: DevEnv): AgentHost {
  return env.mode === "lima" ? limaAgentHost() : nativeAgentHost(env);
}
