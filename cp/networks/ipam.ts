/**
 * IP address management (issue 8 "IPAM in the control plane"): one allocation record per
 * network (`/network-allocations/<name>`) holding the VMs attached to it, the addresses handed
 * out and the MACs in use. It is written in the store transaction that records the VM (create)
 * or removes it (delete), guarded by the record's revision, so concurrent creates serialize per
 * network and never hand out one address twice (like cp/vms/allocations.ts for node capacity).
 *
 * Addresses (IPv4): the lowest free host address of the subnet; the network address, the
 * broadcast address and a managed bridge's gateway are never handed out. Unmanaged bridges
 * have no IPAM (the LAN's DHCP addresses their VMs): their record only lists the attached VMs,
 * which is what makes a network in use undeletable.
 *
 * MACs: `52:54:00` (QEMU's locally administered prefix) + 3 bytes of SHA-256(`<vm id>/<nic
 * index>/<salt>`), the salt raised until the MAC is unused on the network. The MAC is stored
 * with the VM, so it is stable across restarts.
 *
 * Size: the record grows by about 150 bytes per NIC; the store's value limit (360 KB) bounds
 * a network to roughly 2,000 attached NICs.
 *
 * @module
 */
import { createHash } from "node:crypto";
import {
  broadcastOf,
  type Cidr,
  cidrContains,
  formatIpv4,
  gatewayOf,
  parseCidr,
  parseIpv4,
  sizeOf,
  type VmNic,
} from "../../shared/api/networks.ts";
import { ApiError } from "../../shared/errors.ts";
import type { CpContext } from "../context.ts";
import { keys, type NetworkRecord, type VmRecord } from "../repo/records.ts";
import type { Compare, KeyValue, Op } from "../store/store.ts";

/** Who holds an address. */
export interface AddressHolder {
  vm_id: string;
  vm: string;
  nic: number;
}

/** A network's allocation (`/network-allocations/<name>`). */
export interface NetworkAllocation {
  /** The network's id (a network deleted and created again starts a new record). */
  network_id: string;
  /** Address (dotted quad) → holder. */
  addresses: Record<string, AddressHolder>;
  /** MAC → VM id. */
  macs: Record<string, string>;
  /** VM id → its name and NIC indexes on this network. */
  vms: Record<string, { name: string; nics: number[] }>;
  updated_at: string;
}

/** The allocation of a network nothing is attached to. */
export function emptyNetworkAllocation(networkId: string, ts: string): NetworkAllocation {
  return { network_id: networkId, addresses: {}, macs: {}, vms: {}, updated_at: ts };
}

/** The subnet IPAM allocates from (null: no IPAM, an unmanaged bridge). */
export function ipamSubnetOf(net: NetworkRecord): Cidr | null {
  if (net.subnet === null) return null;
  const c = parseCidr(net.subnet);
  return typeof c === "string" ? null : c;
}

/** Addresses IPAM can hand out on `net` (null: no IPAM). */
export function addressCapacity(net: NetworkRecord): number | null {
  const c = ipamSubnetOf(net);
  if (!c) return null;
  return sizeOf(c.prefix) - 2 - (net.gateway !== null ? 1 : 0);
}

/**
 * The lowest host address of `c` that is neither the network, broadcast or `gateway` address
 * nor in `used`; null when the subnet is full.
 */
export function lowestFree(c: Cidr, gateway: number | null, used: Set<number>): number | null {
  const bcast = broadcastOf(c);
  for (let ip = c.network + 1; ip < bcast; ip++) {
    if (ip !== gateway && !used.has(ip)) return ip;
  }
  return null;
}

/** The MAC of NIC `index` of VM `vmId` for `salt` (0, 1, … until unused on the network). */
export function macFor(vmId: string, index: number, salt = 0): string {
  const h = createHash("sha256").update(`${vmId}/${index}/${salt}`).digest();
  const hex = (b: number) => b.toString(16).padStart(2, "0");
  return `52:54:00:${hex(h[0])}:${hex(h[1])}:${hex(h[2])}`;
}

/**
 * Attaches NICs `indexes` of `vm` to `net`: one MAC each (unused on the network) and, with
 * IPAM, one address each.
 *
 * @returns the next allocation and the NICs (index order)
 * @throws ApiError `network_addresses_exhausted` (details: `network`, `subnet`)
 */
export function attach(
  net: NetworkRecord,
  alloc: NetworkAllocation,
  vm: { id: string; name: string },
  indexes: number[],
  ts: string,
): { next: NetworkAllocation; nics: VmNic[] } {
  const next: NetworkAllocation = {
    ...alloc,
    addresses: { ...alloc.addresses },
    macs: { ...alloc.macs },
    vms: { ...alloc.vms, [vm.id]: { name: vm.name, nics: [...indexes] } },
    updated_at: ts,
  };
  const subnet = ipamSubnetOf(net);
  const gateway = net.gateway !== null ? parseIpv4(net.gateway) : null;
  const used = new Set<number>();
  for (const a of Object.keys(next.addresses)) {
    const n = parseIpv4(a);
    if (n !== null) used.add(n);
  }
  const nics: VmNic[] = [];
  for (const index of indexes) {
    let salt = 0;
    let mac = macFor(vm.id, index, salt);
    while (next.macs[mac] !== undefined) mac = macFor(vm.id, index, ++salt);
    next.macs[mac] = vm.id;
    const nic: VmNic = { index, network: net.name, mac, addresses: [] };
    if (subnet) {
      const ip = lowestFree(subnet, gateway, used);
      if (ip === null) {
        throw new ApiError(
          "network_addresses_exhausted",
          `network "${net.name}" has no free address left in ${net.subnet}`,
          { network: net.name, subnet: net.subnet },
        );
      }
      used.add(ip);
      next.addresses[formatIpv4(ip)] = { vm_id: vm.id, vm: vm.name, nic: index };
      nic.addresses.push({ address: formatIpv4(ip), prefix_length: subnet.prefix, source: "ipam" });
    }
    nics.push(nic);
  }
  return { next, nics };
}

/** `alloc` without VM `vmId` (its addresses and MACs released). */
export function detach(alloc: NetworkAllocation, vmId: string, ts: string): NetworkAllocation {
  const { [vmId]: _gone, ...vms } = alloc.vms;
  const addresses = Object.fromEntries(
    Object.entries(alloc.addresses).filter(([, h]) => h.vm_id !== vmId),
  );
  const macs = Object.fromEntries(Object.entries(alloc.macs).filter(([, id]) => id !== vmId));
  return { ...alloc, vms, addresses, macs, updated_at: ts };
}

/** Writes to add to a transaction: guards and ops. */
export interface GuardedWrite {
  compare: Compare[];
  ops: Op[];
}

/** Reads a network and its allocation. @throws ApiError `network_not_found` */
async function readNetwork(
  ctx: CpContext,
  name: string,
): Promise<{ net: KeyValue<NetworkRecord>; alloc: KeyValue<NetworkAllocation> | null }> {
  const net = await ctx.store.get<NetworkRecord>(keys.network(name));
  if (!net) {
    throw new ApiError("network_not_found", `network "${name}" not found`, { network: name });
  }
  const alloc = await ctx.store.get<NetworkAllocation>(keys.networkAllocation(name));
  return { net, alloc };
}

/**
 * Checks that every network named exists (before anything is written).
 *
 * @throws ApiError `network_not_found` (details: `network`)
 */
export async function checkNetworksExist(ctx: CpContext, names: readonly string[]): Promise<void> {
  for (const name of new Set(names)) await readNetwork(ctx, name);
}

/**
 * The NICs of `vm` on networks `names` (NIC i on `names[i]`) and the guarded allocation
 * writes to commit with the VM record. Reads the allocations fresh: call once per transaction
 * attempt.
 *
 * @throws ApiError `network_not_found`, `network_addresses_exhausted`
 */
export async function attachWrite(
  ctx: CpContext,
  vm: { id: string; name: string },
  names: readonly string[],
): Promise<GuardedWrite & { nics: VmNic[] }> {
  const byNet = new Map<string, number[]>();
  names.forEach((n, i) => byNet.set(n, [...(byNet.get(n) ?? []), i]));
  const ts = ctx.now().toISOString();
  const compare: Compare[] = [];
  const ops: Op[] = [];
  const nics: VmNic[] = [];
  for (const [name, indexes] of byNet) {
    const { net, alloc } = await readNetwork(ctx, name);
    const key = keys.networkAllocation(name);
    const cur = alloc?.value.network_id === net.value.id
      ? alloc.value
      : emptyNetworkAllocation(net.value.id, ts);
    const { next, nics: got } = attach(net.value, cur, vm, indexes, ts);
    compare.push(
      { key: net.key, modRevision: net.modRevision },
      alloc ? { key, modRevision: alloc.modRevision } : { key, absent: true },
    );
    ops.push({ type: "put", key, value: next });
    nics.push(...got);
  }
  nics.sort((a, b) => a.index - b.index);
  return { compare, ops, nics };
}

/**
 * The guarded writes that release `vm`'s NICs from their networks' allocations, for the
 * transaction that deletes the VM record. Networks whose record is gone are skipped.
 */
export async function releaseNicsWrite(ctx: CpContext, vm: VmRecord): Promise<GuardedWrite> {
  const compare: Compare[] = [];
  const ops: Op[] = [];
  const ts = ctx.now().toISOString();
  for (const name of new Set((vm.nics ?? []).map((n) => n.network))) {
    const alloc = await ctx.store.get<NetworkAllocation>(keys.networkAllocation(name));
    if (!alloc || alloc.value.vms[vm.id] === undefined) continue;
    compare.push({ key: alloc.key, modRevision: alloc.modRevision });
    ops.push({ type: "put", key: alloc.key, value: detach(alloc.value, vm.id, ts) });
  }
  return { compare, ops };
}

/** True when `address` (dotted quad) lies in `net`'s subnet. */
export function inSubnet(net: NetworkRecord, address: string): boolean {
  const c = ipamSubnetOf(net);
  const ip = parseIpv4(address);
  return c !== null && ip !== null && cidrContains(c, ip);
}

/** A managed bridge's gateway for subnet `c` (dotted quad). */
export function gatewayAddressOf(c: Cidr): string {
  return formatIpv4(gatewayOf(c));
}
