/**
 * A VM's NICs as its agent plumbs them (shared/api/network_agent.ts `AgentNic`): each NIC's
 * MAC and IPAM address from the VM record, with its network's current spec, so the agent can
 * build the network before the VM's first boot.
 *
 * @module
 */
import type { AgentNic } from "../../shared/api/network_agent.ts";
import { ApiError } from "../../shared/errors.ts";
import type { CpContext } from "../context.ts";
import { keys, type NetworkRecord, type VmRecord } from "../repo/records.ts";
import { agentSpecOf } from "./desired.ts";

/**
 * The agent NICs of `vm` (empty: no networks, user-mode NAT).
 *
 * @throws ApiError `network_not_found` when a NIC's network record is gone (it cannot be
 *   deleted while the VM uses it)
 */
export async function agentNicsOf(ctx: CpContext, vm: VmRecord): Promise<AgentNic[]> {
  const out: AgentNic[] = [];
  const nets = new Map<string, NetworkRecord>();
  for (const nic of vm.nics ?? []) {
    let net = nets.get(nic.network);
    if (!net) {
      net = (await ctx.store.get<NetworkRecord>(keys.network(nic.network)))?.value;
      if (!net) {
        throw new ApiError("network_not_found", `network "${nic.network}" not found`, {
          network: nic.network,
        });
      }
      nets.set(nic.network, net);
    }
    out.push({
      index: nic.index,
      mac: nic.mac,
      address: nic.addresses.find((a) => a.source === "ipam")?.address ?? null,
      network: agentSpecOf(net),
    });
  }
  return out;
}
