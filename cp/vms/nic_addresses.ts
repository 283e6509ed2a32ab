/**
 * The VM view's NIC addresses beyond IPAM (issue 8 "Reachability"): what the VM's agent learnt
 * for NICs Otherix did not address (observed VM `nic_addresses`: from the guest agent, else the
 * host's neighbour table; agent/nic_addresses.ts) replaces the learnt addresses a NIC had. IPAM
 * addresses are never touched, and a NIC with one takes no learnt address.
 *
 * @module
 */
import type { VmNic } from "../../shared/api/networks.ts";
import type { LearntNicAddress } from "../../shared/api/vm_runtime.ts";

/**
 * `nics` with the learnt addresses of `learnt` (by MAC) in place of the ones they had;
 * `nics` itself when nothing changes.
 *
 * @param learnt the agent's current report (absent: it learnt none, or does not look)
 */
export function withLearntAddresses(
  nics: VmNic[] | undefined,
  learnt: readonly LearntNicAddress[] | undefined,
): VmNic[] | undefined {
  if (!nics || nics.length === 0) return nics;
  let changed = false;
  const out = nics.map((nic) => {
    const ipam = nic.addresses.filter((a) => a.source === "ipam");
    if (ipam.length > 0 && ipam.length === nic.addresses.length) return nic;
    const mac = nic.mac.toLowerCase();
    const mine = ipam.length > 0 ? [] : (learnt ?? []).filter((l) => l.mac === mac).map((l) => ({
      address: l.address,
      prefix_length: l.prefix_length,
      source: l.source,
    }));
    const next = [...ipam, ...mine];
    if (JSON.stringify(next) === JSON.stringify(nic.addresses)) return nic;
    changed = true;
    return { ...nic, addresses: next };
  });
  return changed ? out : nics;
}
