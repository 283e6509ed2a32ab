/**
 * `otherix-agent` configuration (YAML, `--config FILE`, default `/etc/otherix/agent.yaml`),
 * with `OTHERIX_<SECTION>__<KEY>` env overrides, including those from the bootstrap env file
 * (`/etc/otherix/bootstrap.env`, spec: "Step 1 — run seed-dev"). Every key is documented in
 * README.md ("Agent config").
 *
 * All paths derive from three roots (`paths.config_dir`, `paths.state_dir`, `paths.run_dir`),
 * which are also the roots of the agent's permission sandbox; tests place them under a
 * temporary directory.
 *
 * @module
 */
import { join } from "node:path";
import { z } from "zod";
import { HeartbeatRequestSchema, MigrationPortRangeSchema } from "../shared/api/agent.ts";
import {
  AbsolutePathSchema,
  ConfigError,
  ListenAddressSchema,
  parseConfig,
} from "../shared/config.ts";
import {
  DEFAULT_AGENT_PORT,
  DEFAULT_HEARTBEAT_INTERVAL_SECONDS,
  STANDARD_ROOTS,
} from "../shared/constants.ts";
import { FingerprintSchema } from "../shared/api/nodes.ts";
import { ResourceNameSchema } from "../shared/api/common.ts";
import {
  DEFAULT_SERIAL_LOG_MAX_BYTES,
  MAX_SERIAL_LOG_MAX_BYTES,
  MIN_SERIAL_LOG_MAX_BYTES,
} from "./serial_log.ts";
import { DEFAULT_MAX_DOWNLOAD_BYTES } from "./images.ts";
import { UrlPolicySchema } from "../shared/url_policy.ts";

/** The agent config schema (defaults applied). */
export const AgentConfigSchema = z.object({
  paths: z.object({
    /** Operator config root (read-only to the agent). */
    config_dir: AbsolutePathSchema.default(STANDARD_ROOTS.config),
    /** State root: certs, pools, VM runtime directories. */
    state_dir: AbsolutePathSchema.default(STANDARD_ROOTS.state),
    /** Volatile root: QMP and serial sockets. */
    run_dir: AbsolutePathSchema.default(STANDARD_ROOTS.run),
  }).strict().prefault({}),
  server: z.object({
    /** mTLS listen address the control plane calls. */
    listen: ListenAddressSchema.prefault(`0.0.0.0:${DEFAULT_AGENT_PORT}`),
    /** URL the control plane dials; default `https://<hostname>:<listen port>`. */
    advertise_url: HeartbeatRequestSchema.shape.endpoint.optional(),
  }).strict().prefault({}),
  bootstrap: z.object({
    /** Control plane's agent-facing URL, e.g. `https://cp.lan:8443`. */
    cp_url: z.string().url().optional(),
    /** Pinned `sha256:<hex>` of the cluster CA (from `join-token create`). */
    ca_fingerprint: FingerprintSchema.optional(),
    /** Node name the join token was minted for; default the hostname. */
    node_name: ResourceNameSchema.optional(),
    /** File holding the join token; default `<config_dir>/bootstrap-token`. */
    token_file: AbsolutePathSchema.optional(),
    /** Env file of `OTHERIX_BOOTSTRAP__*` overrides; default `<config_dir>/bootstrap.env`. */
    env_file: AbsolutePathSchema.optional(),
  }).strict().prefault({}),
  migration: z.object({
    /** Host other nodes dial for live migration; default the advertised endpoint's host. */
    host: z.string().min(1).max(253).optional(),
    /** Ports QEMU may listen on for incoming migrations. */
    port_range: MigrationPortRangeSchema.default("49152-49251"),
  }).strict().prefault({}),
  heartbeat: z.object({
    /** Initial heartbeat interval, seconds (the control plane's answer overrides it). */
    interval_seconds: z.number().int().min(1).max(600)
      .default(DEFAULT_HEARTBEAT_INTERVAL_SECONDS),
  }).strict().prefault({}),
  qemu: z.object({
    /** `auto` (KVM when usable, else TCG), or force `kvm` / `tcg`. */
    accelerator: z.enum(["auto", "kvm", "tcg"]).default("auto"),
    /** Emulator for amd64 guests. */
    binary_amd64: z.string().default("qemu-system-x86_64"),
    /** Emulator for arm64 guests. */
    binary_arm64: z.string().default("qemu-system-aarch64"),
    /** Disk image tool. */
    qemu_img: z.string().default("qemu-img"),
    /** ISO 9660 builder for NoCloud seeds (genisoimage-compatible flags). */
    iso_builder: z.string().default("genisoimage"),
    /** How long QEMU may take to report `running` over QMP, seconds. */
    start_timeout_seconds: z.number().int().min(1).max(600).default(30),
    /** UEFI firmware passed as `-bios` to arm64 guests (`null`: none). */
    firmware_arm64: z.string().nullable().default("/usr/share/qemu-efi-aarch64/QEMU_EFI.fd"),
    /**
     * Cap of each VM's `serial.log`, bytes: a larger log is cut to its newest half (checked
     * every few seconds; see agent/serial_log.ts).
     */
    serial_log_max_bytes: z.number().int().min(MIN_SERIAL_LOG_MAX_BYTES)
      .max(MAX_SERIAL_LOG_MAX_BYTES).default(DEFAULT_SERIAL_LOG_MAX_BYTES),
  }).strict().prefault({}),
  images: z.object({
    /** Abort a download that makes no progress for this long, seconds. */
    download_idle_timeout_seconds: z.number().int().min(1).max(3600).default(60),
    /**
     * Largest image the agent downloads, bytes: a larger `Content-Length` fails at once, a
     * body growing past it is aborted (`download_failed`).
     */
    max_download_bytes: z.number().int().min(1).max(Number.MAX_SAFE_INTEGER)
      .default(DEFAULT_MAX_DOWNLOAD_BYTES),
    /**
     * Which addresses images may be fetched from (shared/url_policy.ts), judged after DNS
     * resolution on every connection: loopback and link-local refused by default.
     */
    url_policy: UrlPolicySchema.prefault({}),
  }).strict().prefault({}),
  log: z.object({
    level: z.enum(["debug", "info", "warn", "error"]).default("info"),
  }).strict().prefault({}),
  metrics: z.object({
    /**
     * Optional plain-HTTP listen address serving only `GET /metrics` (agent/metrics.ts), for
     * a Prometheus without a cluster client certificate; unset (default): off, and the
     * metrics are only on the mTLS port (control-plane certificate). The figures name VMs:
     * bind it to a management address, not a public one.
     */
    listen: ListenAddressSchema.optional(),
  }).strict().prefault({}),
}).strict();
/** A validated agent config. */
export type AgentConfig = z.infer<typeof AgentConfigSchema>;

/** Paths derived from the three roots. */
export interface AgentPaths {
  configDir: string;
  stateDir: string;
  runDir: string;
  /** `<state>/certs`: agent.crt, agent.key, ca.crt. */
  certDir: string;
  /** `<state>/pools`: one directory per pool (`<pools>/<name>`). */
  poolsDir: string;
  /** `<state>/vms`: one directory per VM id (disk, seed, serial log). */
  vmsDir: string;
  /** `<run>/vms`: sockets per VM id (QMP, serial). */
  vmSocketsDir: string;
  tokenFile: string;
  envFile: string;
}

/** Derives every agent path from the config (spec: "Agent files"). */
export function agentPaths(cfg: AgentConfig): AgentPaths {
  const { config_dir, state_dir, run_dir } = cfg.paths;
  return {
    configDir: config_dir,
    stateDir: state_dir,
    runDir: run_dir,
    certDir: join(state_dir, "certs"),
    poolsDir: join(state_dir, "pools"),
    vmsDir: join(state_dir, "vms"),
    vmSocketsDir: join(run_dir, "vms"),
    tokenFile: cfg.bootstrap.token_file ?? join(config_dir, "bootstrap-token"),
    envFile: cfg.bootstrap.env_file ?? join(config_dir, "bootstrap.env"),
  };
}

/**
 * Parses a `KEY=value` env file (blank lines and `#` comments ignored; optional quotes).
 *
 * @throws ConfigError on a malformed line
 */
export function parseEnvFile(text: string, source: string): Record<string, string> {
  const out: Record<string, string> = {};
  text.split("\n").forEach((line, i) => {
    const t = line.trim();
    if (!t || t.startsWith("#")) return;
    const m = /^(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$/.exec(t);
    if (!m) throw new ConfigError(`${source}:${i + 1}: expected KEY=value`);
    let v = m[2].trim();
    if ((v.startsWith('"') && v.endsWith('"')) || (v.startsWith("'") && v.endsWith("'"))) {
      v = v.slice(1, -1);
    }
    out[m[1]] = v;
  });
  return out;
}

/**
 * Loads the agent config: the YAML file, then the bootstrap env file's overrides, then the
 * process environment (highest precedence).
 *
 * @throws ConfigError naming the file and key
 */
export async function loadAgentConfig(
  path: string,
  getEnv: (n: string) => string | undefined = (n) => Deno.env.get(n),
): Promise<AgentConfig> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    throw new ConfigError(`${path}: cannot read config: ${(e as Error).message}`);
  }
  // First pass without the env file to learn where it is.
  const first = parseConfig(AgentConfigSchema, text, path, getEnv);
  const envFile = agentPaths(first).envFile;
  let fileEnv: Record<string, string> = {};
  try {
    fileEnv = parseEnvFile(await Deno.readTextFile(envFile), envFile);
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  return parseConfig(AgentConfigSchema, text, path, (n) => getEnv(n) ?? fileEnv[n]);
}

/** Parses agent config text (for tests). */
export function parseAgentConfig(
  text: string,
  getEnv: (n: string) => string | undefined = () => undefined,
): AgentConfig {
  return parseConfig(AgentConfigSchema, text, "agent.yaml", getEnv);
}

/** The directories the agent's permission sandbox opens for this config. */
export function agentSandboxRoots(
  cfg: AgentConfig,
): { config: string; state: string; run: string } {
  return { config: cfg.paths.config_dir, state: cfg.paths.state_dir, run: cfg.paths.run_dir };
}
