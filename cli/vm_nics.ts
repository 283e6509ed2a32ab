/**
 * A VM's NICs and their addresses as the CLI shows and uses them (`vm get`, `vm list -o wide`,
 * `vm ssh`, the VM manifest's `network`), from the VM view's `nics` (shared/api/networks.ts
 * `VmNicSchema`: each NIC's network, MAC and addresses, each address with its source: `ipam`
 * where Otherix assigned it, else `guest_agent` or `neighbour` when the node's agent learnt
 * it). A VM on the default user-mode NAT NIC only has no entry.
 *
 * @module
 */
import type { VmNic, VmNicAddress } from "../shared/api/networks.ts";
import type { Vm } from "../shared/api/vms.ts";

/** The VM's NICs in index order ([] when it has none on Otherix networks). */
export function vmNics(vm: Pick<Vm, "nics">): VmNic[] {
  return [...(vm.nics ?? [])].sort((a, b) => a.index - b.index);
}

const SOURCE_RANK: Record<VmNicAddress["source"], number> = {
  ipam: 0,
  guest_agent: 1,
  neighbour: 2,
};

/** The most trustworthy first: assigned by IPAM, then told by the guest, then seen on the host. */
function ordered(addresses: readonly VmNicAddress[]): VmNicAddress[] {
  return [...addresses].sort((a, b) => SOURCE_RANK[a.source] - SOURCE_RANK[b.source]);
}

/** `10.245.0.10/24 (ipam)`: an address as `vm get` shows it. */
export function addressText(a: VmNicAddress): string {
  return `${a.address}${a.prefix_length === null ? "" : `/${a.prefix_length}`} (${a.source})`;
}

/** Every NIC's addresses without prefix or source, in NIC order (`vm list -o wide`). */
export function allAddresses(vm: Pick<Vm, "nics">): string[] {
  return vmNics(vm).flatMap((n) => n.addresses.map((a) => a.address));
}

/**
 * What `vm ssh` dials: an address of the first NIC that has any — IPAM's, else the guest
 * agent's, else the neighbour table's — or null.
 */
export function firstAddress(vm: Pick<Vm, "nics">): string | null {
  for (const nic of vmNics(vm)) {
    const [a] = ordered(nic.addresses);
    if (a) return a.address;
  }
  return null;
}

/** The network of the VM's first NIC (index 0), or null. */
export function firstNetwork(vm: Pick<Vm, "nics">): string | null {
  return vmNics(vm)[0]?.network ?? null;
}
