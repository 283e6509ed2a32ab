/**
 * Real-process test harness: starts `otherix-api`, `otherix-agent` and the `otherix` CLI from
 * source under the permission flags `scripts/permissions.ts` generates (the same the compiled
 * binaries carry), each with its files under a temporary root.
 *
 * @module
 */
import { join } from "node:path";
import { stringify as toYaml } from "yaml";
import { denoRunArgs, REPO_ROOT, type SandboxRoots } from "../scripts/permissions.ts";

/** A free TCP port on 127.0.0.1 (bound then released). */
export function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

/**
 * Environment every spawned process keeps: PATH (to find QEMU) and DENO_DIR (so a process
 * with an isolated HOME still uses this machine's Deno cache instead of fetching again).
 */
export function baseEnv(): Record<string, string> {
  const home = Deno.env.get("HOME") ?? "/root";
  return {
    PATH: Deno.env.get("PATH") ?? "/usr/bin:/bin",
    DENO_DIR: Deno.env.get("DENO_DIR") ?? `${home}/.cache/deno`,
  };
}

/** Creates a temporary root directory (short path: unix socket paths must stay < 108 bytes). */
export async function tempRoot(prefix = "otx"): Promise<string> {
  return await Deno.makeTempDir({ dir: "/tmp", prefix: `${prefix}-` });
}

/** A process started by the harness. */
export class Proc {
  readonly child: Deno.ChildProcess;
  readonly name: string;
  #out = "";
  #done: Promise<void>;
  #exited = false;

  constructor(name: string, cmd: Deno.Command) {
    this.name = name;
    this.child = cmd.spawn();
    this.child.status.then(() => (this.#exited = true));
    const dec = new TextDecoder();
    const pump = async (s: ReadableStream<Uint8Array>) => {
      for await (const chunk of s) {
        const text = dec.decode(chunk, { stream: true });
        this.#out += text;
        if (Deno.env.get("OTHERIX_TEST_VERBOSE")) {
          Deno.stderr.writeSync(new TextEncoder().encode(text.replace(/^/gm, `[${name}] `)));
        }
      }
    };
    this.#done = Promise.all([pump(this.child.stdout), pump(this.child.stderr)]).then(() => {});
  }

  /** Everything the process printed so far (stdout + stderr interleaved). */
  get output(): string {
    return this.#out;
  }

  /** True once the process has exited. */
  get exited(): boolean {
    return this.#exited;
  }

  /** The OS process id. */
  get pid(): number {
    return this.child.pid;
  }

  /** Waits until `pred(output)` holds, or throws after `timeoutMs` with the output. */
  async waitForOutput(pred: (out: string) => boolean, timeoutMs = 30_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!pred(this.#out)) {
      if (Date.now() > deadline) {
        throw new Error(`${this.name}: timed out waiting for output; got:\n${this.#out}`);
      }
      await delay(100);
    }
  }

  /** Waits for exit and returns the status. */
  async status(): Promise<Deno.CommandStatus> {
    const s = await this.child.status;
    await this.#done;
    return s;
  }

  /** SIGTERM, then SIGKILL after `graceMs`; resolves when the process is gone. */
  async stop(graceMs = 10_000): Promise<void> {
    try {
      this.child.kill("SIGTERM");
    } catch {
      // already exited
    }
    const timer = setTimeout(() => {
      try {
        this.child.kill("SIGKILL");
      } catch { /* gone */ }
    }, graceMs);
    await this.child.status;
    clearTimeout(timer);
    await this.#done;
  }
}

/** Sleeps `ms` milliseconds. */
export function delay(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Polls `fn` until it returns a truthy value or `timeoutMs` passes (then throws `what`). */
export async function waitFor<T>(
  what: string,
  fn: () => Promise<T | undefined | null | false>,
  timeoutMs = 30_000,
  intervalMs = 250,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  while (Date.now() < deadline) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (e) {
      last = e;
    }
    await delay(intervalMs);
  }
  throw new Error(`timed out waiting for ${what}${last ? `: ${last}` : ""}`);
}

/** A running control plane. */
export interface ApiHandle {
  proc: Proc;
  /** Public API base URL, e.g. `http://127.0.0.1:18080`. */
  url: string;
  /** Agent-facing base URL, e.g. `https://127.0.0.1:18443`. */
  agentUrl: string;
  dataDir: string;
  configFile: string;
  roots: SandboxRoots;
}

/** Options of {@link startApi}. */
export interface StartApiOptions {
  root: string;
  adminEmail?: string;
  adminPassword?: string;
  /** Extra config merged over the defaults the harness writes. */
  config?: Record<string, unknown>;
  env?: Record<string, string>;
  publicPort?: number;
  agentPort?: number;
  /** Extra `deno run` flags, e.g. `--inspect=127.0.0.1:9229` to profile it. */
  denoFlags?: string[];
  /** Arguments before `--config` (a subcommand, e.g. `["join", "--server", url, …]`). */
  args?: string[];
}

/** Default admin used by tests. */
export const TEST_ADMIN = { email: "admin@otherix.test", password: "correct-horse-battery-staple" };

/** Writes the config `startApi` starts with (and its directories); returns the paths. */
export async function writeApiConfig(
  opts: StartApiOptions,
): Promise<
  {
    configFile: string;
    dataDir: string;
    roots: SandboxRoots;
    publicPort: number;
    agentPort: number;
  }
> {
  const configDir = join(opts.root, "etc/otherix");
  const dataDir = join(opts.root, "var/lib/otherix/api");
  await Deno.mkdir(configDir, { recursive: true });
  await Deno.mkdir(dataDir, { recursive: true });
  const publicPort = opts.publicPort ?? freePort();
  const agentPort = opts.agentPort ?? freePort();
  const config = deepMerge({
    server: { listen: `127.0.0.1:${publicPort}`, agent_listen: `127.0.0.1:${agentPort}` },
    store: { data_dir: dataDir },
    nodes: { heartbeat_interval_seconds: 2, stale_threshold_seconds: 10 },
    storage_pools: { allowed_path_prefixes: [join(opts.root, "var/lib/otherix/pools") + "/"] },
    workers: { poll_interval_ms: 250 },
    // Test VMs take 1 vCPU each and mostly idle; a 2-core CI host runs several at once.
    placement: { resources: { cpu: { overcommit_ratio: 8 } } },
    // Tests serve images from loopback: opt in (shared/url_policy.ts refuses it by default).
    images: { url_policy: { allow_loopback: true } },
    log: { level: "debug" },
  }, opts.config ?? {});
  const configFile = join(configDir, "api.yaml");
  await Deno.writeTextFile(configFile, toYaml(config));
  const roots: SandboxRoots = { config: configFile, state: dataDir, run: dataDir };
  return { configFile, dataDir, roots, publicPort, agentPort };
}

/** Starts `otherix-api` under its sandbox with files under `root`; waits for `/readyz`. */
export async function startApi(opts: StartApiOptions): Promise<ApiHandle> {
  const { configFile, dataDir, roots, publicPort, agentPort } = await writeApiConfig(opts);
  const proc = new Proc(
    "api",
    new Deno.Command(Deno.execPath(), {
      args: denoRunArgs(
        "otherix-api",
        roots,
        [...(opts.args ?? []), "--config", configFile],
        opts.denoFlags,
      ),
      cwd: REPO_ROOT,
      env: {
        OTHERIX_BOOTSTRAP_ADMIN_EMAIL: opts.adminEmail ?? TEST_ADMIN.email,
        OTHERIX_BOOTSTRAP_ADMIN_PASSWORD: opts.adminPassword ?? TEST_ADMIN.password,
        ...opts.env,
      },
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }),
  );
  const url = `http://127.0.0.1:${publicPort}`;
  try {
    await waitFor(
      "otherix-api /readyz",
      async () => {
        if (proc.exited) return true; // fails below, at once
        const res = await fetch(`${url}/readyz`).catch(() => null);
        await res?.body?.cancel();
        return res?.ok;
      },
      60_000,
      200,
    );
    if (proc.exited) throw new Error(`otherix-api exited: ${(await proc.status()).code}`);
  } catch (e) {
    await proc.stop();
    throw new Error(`${(e as Error).message}\n--- otherix-api output ---\n${proc.output}`);
  }
  return { proc, url, agentUrl: `https://127.0.0.1:${agentPort}`, dataDir, configFile, roots };
}

/** A running agent. */
export interface AgentHandle {
  proc: Proc;
  root: string;
  configFile: string;
  stateDir: string;
  runDir: string;
  port: number;
  roots: SandboxRoots;
}

/** Options of {@link startAgent}. */
export interface StartAgentOptions {
  root: string;
  /** Control plane's agent-facing URL. */
  cpUrl: string;
  caFingerprint: string;
  nodeName: string;
  /** Join token written to `<root>/etc/otherix/bootstrap-token` (omit on restarts). */
  token?: string;
  config?: Record<string, unknown>;
  env?: Record<string, string>;
  port?: number;
  /**
   * A command the agent runs under, e.g. `["ip", "netns", "exec", "<ns>"]` to run it in a
   * network namespace (which must let it reach `cpUrl`); the agent's argv follows it.
   */
  wrap?: string[];
}

/**
 * Lays out an agent root like a real host (`etc/otherix/{agent.yaml,bootstrap.env,
 * bootstrap-token}`, `var/lib/otherix`, `run/otherix`) and starts `otherix-agent` under its
 * sandbox. Does not wait for bootstrap; use `proc.waitForOutput`.
 */
export async function startAgent(opts: StartAgentOptions): Promise<AgentHandle> {
  const configDir = join(opts.root, "etc/otherix");
  const stateDir = join(opts.root, "var/lib/otherix");
  const runDir = join(opts.root, "run/otherix");
  for (const d of [configDir, stateDir, runDir]) await Deno.mkdir(d, { recursive: true });
  const port = opts.port ?? freePort();
  const config = deepMerge({
    paths: { config_dir: configDir, state_dir: stateDir, run_dir: runDir },
    server: { listen: `127.0.0.1:${port}`, advertise_url: `https://127.0.0.1:${port}` },
    heartbeat: { interval_seconds: 2 },
    // Tests serve images from loopback: opt in (shared/url_policy.ts refuses it by default).
    images: { url_policy: { allow_loopback: true } },
    log: { level: "debug" },
  }, opts.config ?? {});
  const configFile = join(configDir, "agent.yaml");
  await Deno.writeTextFile(configFile, toYaml(config));
  await Deno.writeTextFile(
    join(configDir, "bootstrap.env"),
    [
      `OTHERIX_BOOTSTRAP__CP_URL=${opts.cpUrl}`,
      `OTHERIX_BOOTSTRAP__CA_FINGERPRINT=${opts.caFingerprint}`,
      `OTHERIX_BOOTSTRAP__NODE_NAME=${opts.nodeName}`,
      "",
    ].join("\n"),
  );
  if (opts.token !== undefined) {
    await Deno.writeTextFile(join(configDir, "bootstrap-token"), opts.token + "\n", {
      mode: 0o600,
    });
  }
  const roots: SandboxRoots = { config: configDir, state: stateDir, run: runDir };
  const argv = [Deno.execPath(), ...denoRunArgs("otherix-agent", roots, ["--config", configFile])];
  const [bin, ...args] = [...(opts.wrap ?? []), ...argv];
  const proc = new Proc(
    `agent:${opts.nodeName}`,
    new Deno.Command(bin, {
      args,
      cwd: REPO_ROOT,
      env: { ...baseEnv(), ...opts.env },
      clearEnv: true,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }),
  );
  return { proc, root: opts.root, configFile, stateDir, runDir, port, roots };
}

/** Result of a CLI run. */
export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs the `otherix` CLI under its sandbox with `env` (HOME isolated by the caller). */
export async function runCli(
  args: string[],
  env: Record<string, string> = {},
  stdin?: string,
): Promise<CliResult> {
  const cmd = new Deno.Command(Deno.execPath(), {
    args: denoRunArgs("otherix", { config: "/", state: "/", run: "/" }, args),
    cwd: REPO_ROOT,
    env: { ...baseEnv(), ...env },
    clearEnv: true,
    stdin: stdin === undefined ? "null" : "piped",
    stdout: "piped",
    stderr: "piped",
  });
  const child = cmd.spawn();
  if (stdin !== undefined) {
    const w = child.stdin.getWriter();
    await w.write(new TextEncoder().encode(stdin));
    await w.close();
  }
  const out = await child.output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

/** True when a process with `pid` exists. */
export function pidAlive(pid: number): boolean {
  try {
    // A zombie (state Z) has exited; daemonized QEMUs are reaped by PID 1 only eventually.
    const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
    return stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3) !== "Z";
  } catch {
    return false;
  }
}

/** PIDs of running processes whose command line contains every one of `needles`. */
export function pgrep(...needles: string[]): number[] {
  const pids: number[] = [];
  for (const e of Deno.readDirSync("/proc")) {
    if (!/^\d+$/.test(e.name)) continue;
    try {
      const cmd = Deno.readTextFileSync(`/proc/${e.name}/cmdline`).replaceAll("\0", " ");
      if (needles.every((n) => cmd.includes(n))) pids.push(Number(e.name));
    } catch { /* raced */ }
  }
  return pids;
}

function deepMerge(
  a: Record<string, unknown>,
  b: Record<string, unknown>,
): Record<string, unknown> {
  const out: Record<string, unknown> = { ...a };
  for (const [k, v] of Object.entries(b)) {
    const av = out[k];
    out[k] = isObj(av) && isObj(v) ? deepMerge(av, v) : v;
  }
  return out;
}

function isObj(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}
