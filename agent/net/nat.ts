/**
 * Forwarding and NAT rules of managed networks (iptables, either backend), each tagged with
 * the comment `otherix:<network>` and added only when `iptables -C` does not find it, so
 * applying twice adds nothing; removal deletes exactly the rules the agent added.
 *
 * - managed bridge `br` on `subnet`: `nat POSTROUTING -s subnet ! -d subnet -j MASQUERADE`
 *   (the VMs reach the host's uplink, whichever it is), `FORWARD -i br -j ACCEPT` and
 *   `FORWARD -o br -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT` (inserted first:
 *   hosts whose FORWARD policy is DROP, e.g. with Docker, still forward the VMs' traffic);
 * - overlay bridge `br`: `FORWARD -i br -o br -j ACCEPT` (bridged frames traverse FORWARD
 *   when `br_netfilter` is loaded).
 *
 * IP forwarding (`net.ipv4.ip_forward`) is switched on for managed bridges and never off
 * (other software on the host may rely on it).
 *
 * @module
 */
import { aliasOf } from "./names.ts";
import { mustRun, type Runner } from "./exec.ts";

/** One iptables rule: its table, chain, how it is added, and its match/target arguments. */
export interface Rule {
  table: "nat" | "filter";
  chain: "POSTROUTING" | "FORWARD";
  /** `-I` (first) or `-A` (last). */
  position: "-I" | "-A";
  spec: string[];
}

/** The rules of a managed bridge `bridge` on `subnet` for network `network`. */
export function managedBridgeRules(network: string, bridge: string, subnet: string): Rule[] {
  const tag = ["-m", "comment", "--comment", aliasOf(network)];
  return [
    {
      table: "nat",
      chain: "POSTROUTING",
      position: "-A",
      spec: ["-s", subnet, "!", "-d", subnet, ...tag, "-j", "MASQUERADE"],
    },
    {
      table: "filter",
      chain: "FORWARD",
      position: "-I",
      spec: ["-i", bridge, ...tag, "-j", "ACCEPT"],
    },
    {
      table: "filter",
      chain: "FORWARD",
      position: "-I",
      spec: [
        "-o",
        bridge,
        "-m",
        "conntrack",
        "--ctstate",
        "RELATED,ESTABLISHED",
        ...tag,
        "-j",
        "ACCEPT",
      ],
    },
  ];
}

/** The rule of an overlay bridge `bridge` for network `network`. */
export function overlayRules(network: string, bridge: string): Rule[] {
  const tag = ["-m", "comment", "--comment", aliasOf(network)];
  return [{
    table: "filter",
    chain: "FORWARD",
    position: "-I",
    spec: ["-i", bridge, "-o", bridge, ...tag, "-j", "ACCEPT"],
  }];
}

const IPT = "iptables";
/** Wait up to this many seconds for the xtables lock (other tools may hold it). */
const LOCK_WAIT = ["-w", "5"];

/** True when `rule` is present. */
async function present(run: Runner, r: Rule): Promise<boolean> {
  const res = await run(IPT, [...LOCK_WAIT, "-t", r.table, "-C", r.chain, ...r.spec]);
  return res.code === 0;
}

/** Adds each rule that is not present yet. @throws ApiError `network_setup_failed` */
export async function ensureRules(run: Runner, rules: Rule[]): Promise<void> {
  for (const r of rules) {
    if (await present(run, r)) continue;
    await mustRun(run, IPT, [...LOCK_WAIT, "-t", r.table, r.position, r.chain, ...r.spec]);
  }
}

/** Deletes every copy of each rule. @throws ApiError `network_setup_failed` */
export async function removeRules(run: Runner, rules: Rule[]): Promise<void> {
  for (const r of rules) {
    for (let i = 0; i < 10 && await present(run, r); i++) {
      await mustRun(run, IPT, [...LOCK_WAIT, "-t", r.table, "-D", r.chain, ...r.spec]);
    }
  }
}

/** Switches IPv4 forwarding on (`sysctl -w net.ipv4.ip_forward=1`). */
export async function enableForwarding(run: Runner): Promise<void> {
  await mustRun(run, "sysctl", ["-q", "-w", "net.ipv4.ip_forward=1"]);
}
