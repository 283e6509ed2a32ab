/**
 * What the dev-pipeline targets work with (spec 001 "Running Otherix on macOS for
 * development", "Phase D"), resolved once from the environment and the dev api config:
 *
 * | env | default | meaning |
 * | --- | --- | --- |
 * | `OTHERIX_DEV_MODE` | `lima` on macOS, `native` on Linux | where the agent runs |
 * | `OTHERIX_DEV_SCOPE` | `system` as root, else `user` | Linux native: `/etc` + `/var/lib` + `systemctl`, or `~/.config/otherix` + `systemctl --user` |
 * | `OTHERIX_DEV_PREFIX` | none | Linux native, system scope: a root prefix for `/etc/otherix`, `/var/lib/otherix`, `/run/otherix` (the daemons then run without systemd) |
 * | `OTHERIX_DEV_SYSTEMD` | `auto` | `yes` / `no`: use systemctl, or run the agent directly (auto: when systemd runs) |
 * | `OTHERIX_DEV_API_CONFIG` | `dev/config/api.yaml` | the control plane's config (its `OTHERIX_*` overrides apply) |
 * | `OTHERIX_DEV_RUN_DIR` | `.local/run` | logs and pid files of daemons the targets start |
 * | `OTHERIX_DEV_NODE` | `node-dev` | the node name |
 * | `OTHERIX_DEV_CLUSTER` | `dev` | the CLI cluster entry seed-dev writes |
 * | `OTHERIX_DEV_AGENT_PORT` | `9443` | Linux native: the agent's mTLS port |
 * | `OTHERIX_DEV_NODE_TIMEOUT_SECONDS` | `60` | how long seed-dev waits for the node |
 * | `OTHERIX_DEV_AGENT_BINARY` | build it | Lima: a prebuilt linux `otherix-agent` to copy in |
 * | `OTHERIX_CP_URL` | `https://host.lima.internal:8443` (Lima), `https://127.0.0.1:8443` | the control plane's agent-facing URL written to bootstrap.env (port from `server.agent_listen`) |
 * | `OTHERIX_SERVER` | from `server.listen` | the public API URL the CLI uses |
 * | `OTHERIX_BOOTSTRAP_ADMIN_EMAIL` / `_PASSWORD` | — | the admin seed-dev logs in as |
 *
 * @module
 */
import { join, resolve } from "node:path";
import { type ApiConfig, loadApiConfig } from "../../cp/config.ts";
import { ConfigError } from "../../shared/config.ts";
import { DevError } from "./proc.ts";

/** The repository root. */
export const REPO = new URL("../..", import.meta.url).pathname.replace(/\/$/, "");

/** Where the agent runs. */
export type DevMode = "lima" | "native";

/** Linux-native layout: system-wide (root) or per user. */
export type DevScope = "system" | "user";

/** The agent host's directories and how its agent is run (Linux native). */
export interface NativeLayout {
  scope: DevScope;
  /** agent.yaml, bootstrap.env, bootstrap-token. */
  configDir: string;
  /** certs/, pools/, vms/ (user scope: the same directory as the config, per the spec). */
  stateDir: string;
  /** Sockets and QEMU pidfiles (a tmpfs when possible). */
  runDir: string;
  /** Where the dev unit file goes. */
  unitDir: string;
  /** Use systemctl (else the targets run the agent directly, pid file in the run dir). */
  systemd: boolean;
  /** The agent's mTLS port. */
  agentPort: number;
}

/** Everything a target needs. */
export interface DevEnv {
  mode: DevMode;
  repo: string;
  apiConfigFile: string;
  api: ApiConfig;
  /** `.local/run`: logs and pid files. */
  runDir: string;
  nodeName: string;
  clusterName: string;
  /** Public API URL (CLI). */
  serverUrl: string;
  /** Agent-facing URL written to bootstrap.env. */
  cpUrl: string;
  nodeTimeoutSeconds: number;
  /** Linux native only. */
  native: NativeLayout | null;
  /** The env lookup everything was resolved from. */
  env: (name: string) => string | undefined;
}

const WILDCARD = new Set(["0.0.0.0", "::", "", "[::]"]);

function hostOf(h: string): string {
  const bare = WILDCARD.has(h) ? "127.0.0.1" : h;
  return bare.includes(":") && !bare.startsWith("[") ? `[${bare}]` : bare;
}

function intEnv(
  env: (n: string) => string | undefined,
  name: string,
  def: number,
  max: number,
): number {
  const v = env(name);
  if (v === undefined || v === "") return def;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1 || n > max) {
    throw new DevError(`${name} must be a positive integer up to ${max}, got "${v}"`);
  }
  return n;
}

/** Options of {@link resolveEnv} (tests inject the OS and the user id). */
export interface ResolveOptions {
  env?: (name: string) => string | undefined;
  os?: string;
  uid?: number | null;
  /** Whether systemd runs (system scope) / a user manager answers (user scope). */
  systemdRunning?: (scope: DevScope) => Promise<boolean>;
}

/** Whether systemd manages this machine (`/run/systemd/system`) or the user's session. */
export async function systemdRunning(scope: DevScope): Promise<boolean> {
  if (scope === "system") {
    try {
      return Deno.statSync("/run/systemd/system").isDirectory;
    } catch {
      return false;
    }
  }
  try {
    const out = await new Deno.Command("systemctl", {
      args: ["--user", "show-environment"],
      stdout: "null",
      stderr: "null",
    }).output();
    return out.code === 0;
  } catch {
    return false;
  }
}

/**
 * Resolves the environment of the targets (see the module table).
 *
 * @throws DevError for an unknown mode or scope, a bad number, or an unreadable api config
 */
export async function resolveEnv(opts: ResolveOptions = {}): Promise<DevEnv> {
  const env = opts.env ?? ((n: string) => Deno.env.get(n));
  const os = opts.os ?? Deno.build.os;
  const modeVar = env("OTHERIX_DEV_MODE") || (os === "darwin" ? "lima" : "native");
  if (modeVar !== "lima" && modeVar !== "native") {
    throw new DevError(`OTHERIX_DEV_MODE must be lima or native, got "${modeVar}"`);
  }
  if (modeVar === "native" && os !== "linux") {
    throw new DevError("the native mode needs a Linux host; on macOS use the Lima mode");
  }
  const apiConfigFile = resolve(REPO, env("OTHERIX_DEV_API_CONFIG") || "dev/config/api.yaml");
  let api: ApiConfig;
  try {
    api = await loadApiConfig(apiConfigFile);
  } catch (e) {
    if (e instanceof ConfigError) throw new DevError(e.message);
    throw e;
  }
  const tls = !!api.server.tls_cert_file;
  const serverUrl = env("OTHERIX_SERVER") ||
    `${tls ? "https" : "http"}://${hostOf(api.server.listen.hostname)}:${api.server.listen.port}`;
  const agentHost = modeVar === "lima" && WILDCARD.has(api.server.agent_listen.hostname)
    ? "host.lima.internal"
    : hostOf(api.server.agent_listen.hostname);
  const cpUrl = env("OTHERIX_CP_URL") || `https://${agentHost}:${api.server.agent_listen.port}`;

  let native: NativeLayout | null = null;
  if (modeVar === "native") {
    const uid = opts.uid === undefined ? Deno.uid() : opts.uid;
    const scopeVar = env("OTHERIX_DEV_SCOPE") || (uid === 0 ? "system" : "user");
    if (scopeVar !== "system" && scopeVar !== "user") {
      throw new DevError(`OTHERIX_DEV_SCOPE must be system or user, got "${scopeVar}"`);
    }
    const prefix = (env("OTHERIX_DEV_PREFIX") || "").replace(/\/$/, "");
    if (prefix && (scopeVar !== "system" || !prefix.startsWith("/"))) {
      throw new DevError("OTHERIX_DEV_PREFIX must be an absolute path and needs the system scope");
    }
    const home = env("HOME");
    if (scopeVar === "user" && !home) throw new DevError("HOME is not set (user scope)");
    const dirs = scopeVar === "system"
      ? {
        configDir: `${prefix}/etc/otherix`,
        stateDir: `${prefix}/var/lib/otherix`,
        runDir: `${prefix}/run/otherix`,
        unitDir: `${prefix}/etc/systemd/system`,
      }
      : {
        configDir: join(home!, ".config/otherix"),
        stateDir: join(home!, ".config/otherix"),
        runDir: join(env("XDG_RUNTIME_DIR") || `/tmp/otherix-${uid}`, "otherix"),
        unitDir: join(home!, ".config/systemd/user"),
      };
    const sd = env("OTHERIX_DEV_SYSTEMD") || "auto";
    if (!["auto", "yes", "no"].includes(sd)) {
      throw new DevError(`OTHERIX_DEV_SYSTEMD must be auto, yes or no, got "${sd}"`);
    }
    const systemd = sd === "yes" ||
      (sd === "auto" && !prefix && await (opts.systemdRunning ?? systemdRunning)(scopeVar));
    native = {
      scope: scopeVar,
      ...dirs,
      systemd,
      agentPort: intEnv(env, "OTHERIX_DEV_AGENT_PORT", 9443, 65535),
    };
  }

  return {
    mode: modeVar,
    repo: REPO,
    apiConfigFile,
    api,
    runDir: resolve(REPO, env("OTHERIX_DEV_RUN_DIR") || ".local/run"),
    nodeName: env("OTHERIX_DEV_NODE") || "node-dev",
    clusterName: env("OTHERIX_DEV_CLUSTER") || "dev",
    serverUrl: serverUrl.replace(/\/$/, ""),
    cpUrl,
    nodeTimeoutSeconds: intEnv(env, "OTHERIX_DEV_NODE_TIMEOUT_SECONDS", 60, 3600),
    native,
    env,
  };
}
