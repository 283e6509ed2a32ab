/**
 * What each node's agent must provide (pure): the networks its VMs use, each with, for
 * overlays, the underlay addresses of the other nodes hosting VMs on it (their VXLAN tunnel
 * endpoints; one all-zero-MAC forwarding entry each on the agent). Sent by the network
 * controller as `PUT /v1/networks` (shared/api/network_agent.ts).
 *
 * A node's underlay address is the host of the endpoint its agent advertises (the address the
 * control plane dials it at). Nodes without an endpoint, and `gone` nodes, are no peers.
 *
 * @module
 */
import type {
  AgentDesiredNetwork,
  AgentNetworkSpec,
  AgentNetworksRequest,
} from "../../shared/api/network_agent.ts";
import type { NetworkRecord, NodeRecord, VmRecord } from "../repo/records.ts";

/** The spec an agent receives for `net`. */
export function agentSpecOf(net: NetworkRecord): AgentNetworkSpec {
  return {
    name: net.name,
    type: net.type,
    managed: net.managed,
    bridge_name: net.bridge_name,
    mtu: net.mtu,
    subnet: net.subnet,
    gateway: net.gateway,
    vni: net.vni,
  };
}

/** The host of an advertised endpoint (`https://10.0.0.5:9443` → `10.0.0.5`), or null. */
export function underlayHostOf(endpoint: string | null): string | null {
  if (!endpoint) return null;
  try {
    const host = new URL(endpoint).hostname.replace(/^\[|\]$/g, "");
    return host || null;
  } catch {
    return null;
  }
}

/** Lookups {@link desiredNetworksFor} reads (informer caches in the control plane). */
export interface DesiredInputs {
  /** The VMs placed on a node. */
  vmsOnNode(node: string): VmRecord[];
  /** The VMs with a NIC on a network. */
  vmsOnNetwork(network: string): VmRecord[];
  network(name: string): NetworkRecord | undefined;
  node(name: string): NodeRecord | undefined;
}

/** The networks of VM `vm`'s NICs (distinct). */
export function networksOf(vm: VmRecord): string[] {
  return [...new Set((vm.nics ?? []).map((n) => n.network))];
}

/**
 * The desired network set of node `node`: every network a VM placed there has a NIC on
 * (by name), overlays with their peers (sorted, distinct, without `node` itself).
 */
export function desiredNetworksFor(node: string, inp: DesiredInputs): AgentNetworksRequest {
  const names = new Set<string>();
  for (const vm of inp.vmsOnNode(node)) for (const n of networksOf(vm)) names.add(n);
  const networks: AgentDesiredNetwork[] = [];
  for (const name of [...names].sort()) {
    const net = inp.network(name);
    if (!net) continue; // deleted meanwhile (cannot be while a VM uses it)
    const peers = new Set<string>();
    if (net.type === "overlay") {
      for (const vm of inp.vmsOnNetwork(name)) {
        if (vm.node === node) continue;
        const other = inp.node(vm.node);
        if (!other || other.status === "gone") continue;
        const host = underlayHostOf(other.endpoint);
        if (host) peers.add(host);
      }
    }
    networks.push({ spec: agentSpecOf(net), peers: [...peers].sort() });
  }
  return { networks };
}

/**
 * The nodes whose desired set may change when VM `vm` appears, moves or goes: its own node
 * and every node hosting a VM on one of its overlays (their peers change).
 */
export function nodesAffectedByVm(vm: VmRecord, inp: DesiredInputs): string[] {
  const out = new Set<string>([vm.node]);
  for (const name of networksOf(vm)) {
    if (inp.network(name)?.type !== "overlay") continue;
    for (const other of inp.vmsOnNetwork(name)) out.add(other.node);
  }
  return [...out];
}

/**
 * The nodes whose peers may change when node `node`'s endpoint or status changes: those
 * sharing an overlay with it (and itself).
 */
export function nodesAffectedByNode(node: string, inp: DesiredInputs): string[] {
  const out = new Set<string>([node]);
  for (const vm of inp.vmsOnNode(node)) {
    for (const name of networksOf(vm)) {
      if (inp.network(name)?.type !== "overlay") continue;
      for (const other of inp.vmsOnNetwork(name)) out.add(other.node);
    }
  }
  return [...out];
}
