/**
 * dnsmasq for a managed bridge: DHCP with one static lease per NIC (the control plane's IPAM
 * address for its MAC; no dynamic pool, no lease database), DNS for the VMs (their names, and
 * the host's resolvers upstream), bound to that bridge only (`--interface --bind-interfaces`).
 *
 * The leases and names are command-line arguments (`--dhcp-host`, `--host-record`): dnsmasq
 * drops its privileges before reading host files, which the agent's state root (mode 0750)
 * would hide from it. A change of the local NICs therefore restarts it (a static lease
 * survives: the guest's next request gets the same address).
 *
 * Like QEMU it runs as a daemon that outlives the agent, its pidfile and the arguments it was
 * started with in the run root (`<run>/net/<network>/dnsmasq.{pid,args}`; a host reboot
 * clears them). The agent finds it with `pgrep -F <pidfile> -f 'dnsmasq .*--pid-file=
 * <pidfile>'` (a stale pidfile naming a reused pid selects nothing) and stops it with
 * SIGTERM through `pkill` with the same selection. Its log is
 * `<state>/net/<network>/dnsmasq.log`.
 *
 * @module
 */
import { join } from "node:path";
import { ApiError } from "../../shared/errors.ts";
import { type Cidr, formatIpv4, netmaskOf } from "../../shared/api/networks.ts";
import { mustRun, type Runner } from "./exec.ts";
import { writeFileAtomic } from "../fsutil.ts";

/** A static lease. */
export interface DhcpHost {
  mac: string;
  ip: string;
  /** The VM name (a DNS label). */
  name: string;
}

/** Where one network's dnsmasq keeps its files. */
export interface DnsmasqPaths {
  /** `<state>/net/<network>`: the log. */
  dir: string;
  /** `<run>/net/<network>/dnsmasq.pid`. */
  pidFile: string;
  /** `<run>/net/<network>/dnsmasq.args`: the arguments it was started with (JSON). */
  argsFile: string;
}

/** The paths of network `network`'s dnsmasq under the agent's roots. */
export function dnsmasqPaths(stateDir: string, runDir: string, network: string): DnsmasqPaths {
  return {
    dir: join(stateDir, "net", network),
    pidFile: join(runDir, "net", network, "dnsmasq.pid"),
    argsFile: join(runDir, "net", network, "dnsmasq.args"),
  };
}

/** What one dnsmasq serves. */
export interface DnsmasqSpec {
  network: string;
  bridge: string;
  subnet: Cidr;
  /** The bridge's address (router and DNS server the leases name). */
  gateway: string;
  hosts: DhcpHost[];
}

/** dnsmasq's argv for `spec` (pure; hosts in address order). */
export function dnsmasqArgs(spec: DnsmasqSpec, p: DnsmasqPaths): string[] {
  const hosts = [...spec.hosts].sort((a, b) =>
    a.ip.localeCompare(b.ip) || a.mac.localeCompare(b.mac)
  );
  return [
    "--conf-file=/dev/null",
    `--pid-file=${p.pidFile}`,
    `--interface=${spec.bridge}`,
    "--bind-interfaces",
    "--except-interface=lo",
    `--listen-address=${spec.gateway}`,
    "--no-hosts",
    `--dhcp-range=${formatIpv4(spec.subnet.network)},static,${netmaskOf(spec.subnet.prefix)},12h`,
    "--leasefile-ro",
    "--dhcp-authoritative",
    `--dhcp-option=option:router,${spec.gateway}`,
    `--dhcp-option=option:dns-server,${spec.gateway}`,
    "--domain-needed",
    "--bogus-priv",
    `--log-facility=${join(p.dir, "dnsmasq.log")}`,
    ...hosts.map((h) => `--dhcp-host=${h.mac},${h.ip},${h.name}`),
    ...hosts.map((h) => `--host-record=${h.name},${h.ip}`),
  ];
}

/**
 * `pgrep`/`pkill` arguments selecting the process named by `pidFile` only when its command
 * line is a dnsmasq started with that pidfile (a stale pidfile naming a reused pid, even of
 * another network's dnsmasq, selects nothing).
 */
function selectArgs(pidFile: string): string[] {
  const re = pidFile.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
  return ["-F", pidFile, "-f", "--", `(^|/)dnsmasq .*--pid-file=${re}( |$)`];
}

/** The pid of the dnsmasq named by `pidFile`, or null when none runs. */
export async function dnsmasqPid(run: Runner, pidFile: string): Promise<number | null> {
  const r = await run("pgrep", selectArgs(pidFile));
  if (r.code !== 0) return null;
  const pid = Number(r.stdout.trim().split(/\s+/)[0]);
  return Number.isSafeInteger(pid) && pid > 0 ? pid : null;
}

/**
 * Makes network `spec.network`'s dnsmasq run with `spec.hosts`: starts it when none runs,
 * restarts it when it runs with other arguments.
 *
 * @returns `started`, `restarted` or `unchanged`
 * @throws ApiError `network_setup_failed` with dnsmasq's own message
 */
export async function ensureDnsmasq(
  run: Runner,
  spec: DnsmasqSpec,
  p: DnsmasqPaths,
): Promise<"started" | "restarted" | "unchanged"> {
  await Deno.mkdir(p.dir, { recursive: true, mode: 0o750 });
  await Deno.mkdir(join(p.pidFile, ".."), { recursive: true, mode: 0o750 });
  const args = dnsmasqArgs(spec, p);
  let restarted = false;
  if (await dnsmasqPid(run, p.pidFile) !== null) {
    const was = await Deno.readTextFile(p.argsFile).catch(() => "");
    if (was === JSON.stringify(args)) return "unchanged";
    await stopDnsmasq(run, p, spec.network);
    restarted = true;
  }
  await mustRun(run, "dnsmasq", args);
  await writeFileAtomic(p.argsFile, JSON.stringify(args), 0o640);
  // The parent exits once the daemon is up; its pidfile follows at once.
  for (let i = 0; i < 50; i++) {
    if (await dnsmasqPid(run, p.pidFile) !== null) return restarted ? "restarted" : "started";
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new ApiError("network_setup_failed", `dnsmasq for ${spec.network} did not stay up`);
}

/**
 * Stops network `network`'s dnsmasq (SIGTERM through its pidfile) and waits up to 5 s for it
 * to exit; removes the pidfile. No-op when none runs.
 *
 * @throws ApiError `network_setup_failed` when it is still running after 5 s
 */
export async function stopDnsmasq(run: Runner, p: DnsmasqPaths, network: string): Promise<void> {
  if (await dnsmasqPid(run, p.pidFile) === null) {
    await Deno.remove(p.pidFile).catch(() => {});
    await Deno.remove(p.argsFile).catch(() => {});
    return;
  }
  await run("pkill", ["-TERM", ...selectArgs(p.pidFile)]);
  for (let i = 0; i < 250; i++) {
    if (await dnsmasqPid(run, p.pidFile) === null) {
      await Deno.remove(p.pidFile).catch(() => {});
      await Deno.remove(p.argsFile).catch(() => {});
      return;
    }
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new ApiError("network_setup_failed", `dnsmasq for ${network} did not stop`);
}
