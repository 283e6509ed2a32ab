/**
 * Links through `ip` (iproute2, JSON output) and VXLAN forwarding entries through `bridge`:
 * listing, creating bridges, VXLAN devices and TAPs idempotently, deleting only links carrying
 * the agent's alias (agent/net/names.ts).
 *
 * @module
 */
import { ApiError } from "../../shared/errors.ts";
import { VXLAN_PORT } from "../../shared/api/networks.ts";
import { mustRun, type Runner } from "./exec.ts";

/** A link as `ip -j -d link show` describes it. */
export interface Link {
  name: string;
  /** `bridge`, `vxlan`, `tun`, `veth`, …; null for plain devices (e.g. a NIC). */
  kind: string | null;
  /** The alias (`ifalias`), null when unset. */
  alias: string | null;
  mtu: number;
  /** The bridge it is a port of. */
  master: string | null;
  up: boolean;
  /** VXLAN devices: the VNI. */
  vni: number | null;
}

interface IpLinkJson {
  ifname: string;
  mtu: number;
  master?: string;
  flags?: string[];
  ifalias?: string;
  linkinfo?: { info_kind?: string; info_data?: { id?: number } };
}

/** Every link of the namespace, by name. */
export async function listLinks(run: Runner): Promise<Map<string, Link>> {
  const out = await mustRun(run, "ip", ["-j", "-d", "link", "show"]);
  const links = new Map<string, Link>();
  for (const l of JSON.parse(out || "[]") as IpLinkJson[]) {
    links.set(l.ifname, {
      name: l.ifname,
      kind: l.linkinfo?.info_kind ?? null,
      alias: l.ifalias ?? null,
      mtu: l.mtu,
      master: l.master ?? null,
      up: (l.flags ?? []).includes("UP"),
      vni: l.linkinfo?.info_kind === "vxlan" ? l.linkinfo.info_data?.id ?? null : null,
    });
  }
  return links;
}

/**
 * Makes sure an Otherix-owned link `name` of kind `kind` exists with alias `alias`: creates it
 * with `createArgs` (after `ip link add name <name>`) when absent.
 *
 * @throws ApiError `network_setup_failed` when a link of that name exists but is not the
 *   agent's (another alias or kind)
 */
async function ensureOwned(
  run: Runner,
  links: Map<string, Link>,
  name: string,
  kind: string,
  alias: string,
  createArgs: string[],
): Promise<void> {
  const l = links.get(name);
  if (l) {
    if (l.alias !== alias || l.kind !== kind) {
      throw new ApiError(
        "network_setup_failed",
        `${name} exists on this node and is not Otherix's ${kind} for ${alias} (kind ${
          l.kind ?? "device"
        }, alias ${l.alias ?? "none"}): rename or remove it, or choose another name`,
      );
    }
    return;
  }
  await mustRun(run, "ip", ["link", "add", "name", name, ...createArgs]);
  await mustRun(run, "ip", ["link", "set", "dev", name, "alias", alias]);
  links.set(name, { name, kind, alias, mtu: 0, master: null, up: false, vni: null });
}

/** An Otherix bridge `name` (alias `alias`), with `mtu` (null: unchanged), up. */
export async function ensureBridge(
  run: Runner,
  links: Map<string, Link>,
  name: string,
  alias: string,
  mtu: number | null,
): Promise<void> {
  await ensureOwned(run, links, name, "bridge", alias, ["type", "bridge"]);
  const l = links.get(name)!;
  if (mtu !== null && l.mtu !== mtu) {
    await mustRun(run, "ip", ["link", "set", "dev", name, "mtu", String(mtu)]);
  }
  if (!l.up) await mustRun(run, "ip", ["link", "set", "dev", name, "up"]);
}

/**
 * An Otherix VXLAN device `name` for `vni` (UDP {@link VXLAN_PORT}, unicast: no group, MAC
 * learning on), port of `bridge`, with `mtu`, up.
 */
export async function ensureVxlan(
  run: Runner,
  links: Map<string, Link>,
  name: string,
  alias: string,
  vni: number,
  bridge: string,
  mtu: number,
): Promise<void> {
  const l0 = links.get(name);
  if (l0 && l0.alias === alias && l0.vni !== vni) {
    await deleteLink(run, name); // the network was re-created with another VNI
    links.delete(name);
  }
  await ensureOwned(run, links, name, "vxlan", alias, [
    "type",
    "vxlan",
    "id",
    String(vni),
    "dstport",
    String(VXLAN_PORT),
  ]);
  const l = links.get(name)!;
  if (l.master !== bridge || l.mtu !== mtu || !l.up) {
    await mustRun(run, "ip", [
      "link",
      "set",
      "dev",
      name,
      "master",
      bridge,
      "mtu",
      String(mtu),
      "up",
    ]);
  }
}

/**
 * The TAP `name` (persistent, for QEMU's `-netdev tap,ifname=…`), port of `bridge`, with
 * `mtu` (null: the bridge's), up. An existing TAP is re-attached.
 *
 * @throws ApiError `network_setup_failed` when `name` exists and is no TAP
 */
export async function ensureTap(
  run: Runner,
  links: Map<string, Link>,
  name: string,
  bridge: string,
  mtu: number | null,
): Promise<void> {
  const l = links.get(name);
  if (l && l.kind !== "tun") {
    throw new ApiError("network_setup_failed", `${name} exists on this node and is not a TAP`);
  }
  if (!l) await mustRun(run, "ip", ["tuntap", "add", "dev", name, "mode", "tap"]);
  const want = mtu ?? links.get(bridge)?.mtu ?? null;
  await mustRun(run, "ip", [
    "link",
    "set",
    "dev",
    name,
    "master",
    bridge,
    ...(want ? ["mtu", String(want)] : []),
    "up",
  ]);
}

/** Deletes link `name`; a missing link is fine. */
export async function deleteLink(run: Runner, name: string): Promise<void> {
  const r = await run("ip", ["link", "del", "dev", name]);
  if (r.code !== 0 && !/cannot find device|does not exist/i.test(r.stderr)) {
    throw new ApiError("network_setup_failed", `ip link del ${name}: ${r.stderr.trim()}`);
  }
}

/** Ensures `address` (`a.b.c.d/p`) is on `dev` (`ip addr replace`). */
export async function ensureAddress(run: Runner, dev: string, address: string): Promise<void> {
  await mustRun(run, "ip", ["addr", "replace", address, "dev", dev]);
}

/** The VXLAN flood entries (all-zero MAC) of `dev`: their destination addresses. */
export async function floodPeers(run: Runner, dev: string): Promise<string[]> {
  const out = await mustRun(run, "bridge", ["-j", "fdb", "show", "dev", dev]);
  const rows = JSON.parse(out || "[]") as { mac: string; dst?: string }[];
  return rows.filter((r) => r.mac === "00:00:00:00:00:00" && r.dst).map((r) => r.dst!);
}

/**
 * Makes `dev`'s flood entries exactly `peers` (IPv4 addresses): appends the missing ones,
 * deletes the others.
 */
export async function syncFloodPeers(run: Runner, dev: string, peers: string[]): Promise<void> {
  const have = new Set(await floodPeers(run, dev));
  const want = new Set(peers);
  for (const p of want) {
    if (have.has(p)) continue;
    await mustRun(run, "bridge", ["fdb", "append", "00:00:00:00:00:00", "dev", dev, "dst", p]);
  }
  for (const p of have) {
    if (want.has(p)) continue;
    await mustRun(run, "bridge", ["fdb", "del", "00:00:00:00:00:00", "dev", dev, "dst", p]);
  }
}
