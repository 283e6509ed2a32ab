/**
 * The one generator of each binary's Deno permission flags. `deno task compile` bakes them for
 * the standard roots (`/etc/otherix`, `/var/lib/otherix`, `/run/otherix`); the dev tasks
 * (`scripts/run.ts`) and the test harness call it with the roots a config names, so tests run
 * the real sandbox under a temporary root.
 *
 * What each binary may do:
 * - `otherix-agent`: read its three roots, write its state and run roots, run only QEMU,
 *   `qemu-img`, the ISO builder, `df` (the root filesystem's figures), and `pgrep` / `pkill`
 *   (which it calls only with `-F <pidfile> -L`: QEMU outlives the agent, so it is no child
 *   the agent could signal, and the sandbox has no `Deno.kill`; see agent/qemu.ts), the
 *   networking tools `ip`, `bridge`, `iptables`, `sysctl` and `dnsmasq` (agent/net/; the
 *   agent calls them with fixed argument shapes, but `ip` and `dnsmasq` can themselves run
 *   programs, so they need the host capabilities the README lists and are no boundary
 *   against a compromised agent), use the network, read `OTHERIX_*`
 *   env vars and a few system figures. No shell, no other files. (Deno refuses `/dev`,
 *   `/proc` and `/sys` to anything short of `--allow-all`, so accelerator detection probes
 *   through QEMU and `qemu-img`, which run outside the sandbox; see `agent/accel.ts`.)
 * - `otherix-api`: read its config and data dir, write its data dir, network, `OTHERIX_*` env,
 *   hostname; Deno KV (`--unstable-kv`). Runs only etcd (`store.backend: etcd`), by path.
 * - `otherix`: the operator's own CLI: reads `--user-data @file` and its config anywhere the
 *   operator points it, so file access is open; network; env. Runs only `ssh` (the
 *   system OpenSSH client, looked up on PATH: `otherix vm ssh`).
 *
 * @module
 */
import { STANDARD_ROOTS } from "../shared/constants.ts";

/** The three binaries. */
export type Binary = "otherix-api" | "otherix-agent" | "otherix";

/** Executables the agent may spawn (looked up on PATH by Deno). */
export const AGENT_RUN_ALLOWLIST = [
  "qemu-system-x86_64",
  "qemu-system-aarch64",
  "qemu-img",
  "genisoimage",
  // Liveness and force-stop of a daemonized QEMU through its locked pidfile.
  "pgrep",
  "pkill",
  // The root filesystem's size and free space: Deno's statfs would need read access to `/`
  // (every file); see agent/sysinfo.ts.
  "df",
  // CPU time and resident memory of the QEMU processes for the per-VM metrics (agent/
  // metrics.ts: `ps -o pid=,cputimes=,rss= -p PIDS`; /proc is outside the sandbox).
  "ps",
  // Networks (agent/net/): links, TAPs and addresses; VXLAN forwarding entries; NAT and
  // FORWARD rules; IPv4 forwarding; DHCP + DNS of managed bridges (a daemon that outlives the
  // agent, found and signalled through its pidfile with pgrep / pkill).
  "ip",
  "bridge",
  "iptables",
  "sysctl",
  "dnsmasq",
] as const;

/** System information the agent reads (heartbeat figures, accelerator detection). */
export const AGENT_SYS_ALLOWLIST = [
  "hostname",
  "systemMemoryInfo",
  "loadavg",
  "statfs",
  "osRelease",
] as const;

/**
 * Env vars the daemons may read: their own `OTHERIX_*` overrides, plus the two the `yaml`
 * package consults on every parse (`LOG_TOKENS`, `LOG_STREAM`, debugging switches) and the two
 * the `ws` package reads when it loads (`WS_NO_BUFFER_UTIL`, `WS_NO_UTF_8_VALIDATE`).
 */
export const DAEMON_ENV_ALLOWLIST = [
  "OTHERIX_*",
  "LOG_TOKENS",
  "LOG_STREAM",
  "WS_NO_BUFFER_UTIL",
  "WS_NO_UTF_8_VALIDATE",
] as const;

/**
 * Where the CLI may find the system OpenSSH client (`otherix vm ssh`): the `ssh` on this
 * process's PATH when there is one, and the usual install paths. Absolute paths, never the bare
 * name: Deno resolves a bare `--allow-run` name at every start and prints a notice when it is
 * not on PATH, which would land on the stderr of every command on hosts without ssh.
 */
export function sshClientPaths(path = Deno.env.get("PATH") ?? ""): string[] {
  const found = path.split(":").filter((d) => d.startsWith("/")).map((d) => `${d}/ssh`)
    .find((p) => {
      try {
        return Deno.statSync(p).isFile;
      } catch {
        return false;
      }
    });
  return [...new Set([...(found ? [found] : []), "/usr/bin/ssh", "/usr/local/bin/ssh"])];
}

/** Roots of a sandbox. */
export interface SandboxRoots {
  /** Operator config root (read-only). */
  config: string;
  /** State root (read-write). */
  state: string;
  /** Volatile root (read-write). */
  run: string;
  /** Extra files or dirs to allow reading (e.g. a config file outside the config root). */
  extraRead?: string[];
  /** Extra executables the control plane may run (a configured etcd binary). */
  extraRun?: string[];
}

/**
 * What the control plane may run: the etcd member of `store.backend: etcd`
 * (cp/cluster/etcd_member.ts; Debian's `etcd-server` path), by absolute path.
 */
export const API_RUN_ALLOWLIST = ["/usr/bin/etcd"] as const;

/** The standard roots compiled binaries are built for. */
export const STANDARD_SANDBOX: SandboxRoots = { ...STANDARD_ROOTS };

const list = (xs: readonly string[]) => [...new Set(xs)].join(",");

/**
 * Deno permission flags for `binary` confined to `roots`.
 *
 * @example
 * ```ts
 * permissionFlags("otherix-agent", { config: "/etc/otherix", state: "/var/lib/otherix", run: "/run/otherix" });
 * // ["--allow-read=/etc/otherix,…", "--allow-write=…", "--allow-run=qemu-system-x86_64,…", …]
 * ```
 */
export function permissionFlags(binary: Binary, roots: SandboxRoots = STANDARD_SANDBOX): string[] {
  const extra = roots.extraRead ?? [];
  switch (binary) {
    case "otherix-agent":
      return [
        `--allow-read=${list([roots.config, roots.state, roots.run, ...extra])}`,
        `--allow-write=${list([roots.state, roots.run])}`,
        `--allow-run=${list(AGENT_RUN_ALLOWLIST)}`,
        "--allow-net",
        `--allow-env=${list(DAEMON_ENV_ALLOWLIST)}`,
        `--allow-sys=${list(AGENT_SYS_ALLOWLIST)}`,
        "--no-prompt",
      ];
    case "otherix-api":
      return [
        `--allow-read=${list([roots.config, roots.state, ...extra])}`,
        `--allow-write=${list([roots.state])}`,
        `--allow-run=${list([...API_RUN_ALLOWLIST, ...(roots.extraRun ?? [])])}`,
        "--allow-net",
        `--allow-env=${list(DAEMON_ENV_ALLOWLIST)}`,
        "--allow-sys=hostname,networkInterfaces",
        "--unstable-kv",
        "--no-prompt",
      ];
    case "otherix":
      return [
        "--allow-read",
        "--allow-write",
        "--allow-net",
        "--allow-env",
        "--allow-sys=hostname",
        `--allow-run=${sshClientPaths().join(",")}`,
        "--no-prompt",
      ];
  }
}

/** Entry point (relative to the repo root) of each binary. */
export const ENTRY_POINTS: Record<Binary, string> = {
  "otherix-api": "cp/main.ts",
  "otherix-agent": "agent/main.ts",
  "otherix": "cli/main.ts",
};

/** Absolute path of the repository root. */
export const REPO_ROOT = new URL("..", import.meta.url).pathname.replace(/\/$/, "");

/**
 * The full `deno run` argv (without the leading `deno`) to run `binary` from source under
 * its sandbox, followed by `args`; `denoFlags` go first (e.g. `--inspect=127.0.0.1:9229` to
 * profile it, scripts/cpu_profile.ts).
 */
export function denoRunArgs(
  binary: Binary,
  roots: SandboxRoots,
  args: string[],
  denoFlags: string[] = [],
): string[] {
  return [
    "run",
    ...denoFlags,
    ...permissionFlags(binary, roots),
    `${REPO_ROOT}/${ENTRY_POINTS[binary]}`,
    ...args,
  ];
}
