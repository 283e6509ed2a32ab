/**
 * The agent protocol's network part (control plane → agent, mTLS; see shared/api/agent.ts for
 * the rest):
 * - `POST /v1/vms` takes {@link AgentVmCreateWithNicsRequestSchema}: the VM create request
 *   plus `nics` (none: QEMU user-mode NAT, as before). Each NIC carries its network's full
 *   spec, so the agent can build the network before the VM's first boot even when the desired
 *   set below has not reached it yet.
 * - `PUT /v1/networks` {@link AgentNetworksRequestSchema} → 204: the complete set of networks
 *   the node needs (those its VMs use), with each overlay's peers. Level-triggered: the agent
 *   persists it and converges its devices (creates, updates VXLAN forwarding entries); it
 *   builds only networks its local VMs use and removes a network once none does, so a missed
 *   push never leaves devices behind. 400 `validation_failed` for a bad spec.
 * - `GET /v1/networks` → {@link AgentNetworkListSchema}: what the agent has applied.
 *
 * Every field is checked with the same rules the public API uses (shared/api/networks.ts).
 *
 * @module
 */
import { z } from "zod";
import { AgentVmCreateRequestSchema } from "./agent.ts";
import { ResourceNameSchema } from "./common.ts";
import {
  BridgeNameSchema,
  CidrSchema,
  Ipv4Schema,
  MacSchema,
  MAX_NICS_PER_VM,
  MtuSchema,
  NetworkTypeSchema,
  VniSchema,
} from "./networks.ts";

/**
 * What an agent needs to know to provide a network on its node. `bridge_name` is the
 * (server-derived, for overlays) bridge NICs join; `gateway` is set for managed bridges only;
 * `vni` for overlays only.
 */
export const AgentNetworkSpecSchema = z.object({
  name: ResourceNameSchema,
  type: NetworkTypeSchema,
  managed: z.boolean(),
  bridge_name: z.string().min(1).max(15).regex(/^[A-Za-z][A-Za-z0-9_.-]*$/),
  mtu: MtuSchema.nullable(),
  subnet: CidrSchema.nullable(),
  gateway: Ipv4Schema.nullable(),
  vni: VniSchema.nullable(),
}).strict().superRefine((n, ctx) => {
  const need = (ok: boolean, path: string, message: string) => {
    if (!ok) ctx.addIssue({ code: "custom", path: [path], message });
  };
  if (n.type === "overlay") {
    need(n.vni !== null, "vni", "is required for overlays");
    need(n.subnet !== null, "subnet", "is required for overlays");
    need(n.mtu !== null, "mtu", "is required for overlays");
    need(n.gateway === null, "gateway", "must be null for overlays");
  } else {
    need(n.vni === null, "vni", "must be null for bridges");
    need(BridgeNameSchema.safeParse(n.bridge_name).success, "bridge_name", "is not allowed");
    if (n.managed) {
      need(n.subnet !== null && n.gateway !== null, "subnet", "managed bridges need a subnet");
      need(n.mtu !== null, "mtu", "is required for managed bridges");
    } else {
      need(n.subnet === null && n.gateway === null, "subnet", "unmanaged bridges have none");
    }
  }
});
/** A network spec as agents receive it. */
export type AgentNetworkSpec = z.infer<typeof AgentNetworkSpecSchema>;

/** A desired network of a node: its spec plus, for overlays, the other nodes' VTEPs. */
export const AgentDesiredNetworkSchema = z.object({
  spec: AgentNetworkSpecSchema,
  /**
   * Overlays: the underlay address (IPv4 literal or host name) of every other node that hosts
   * a VM on the network, i.e. the host of its advertised endpoint; one all-zero-MAC VXLAN
   * forwarding entry each (head-end replication of broadcasts, no multicast). Empty for
   * bridges.
   */
  peers: z.array(z.string().min(1).max(253).regex(/^[A-Za-z0-9.:-]+$/)).max(1000),
}).strict();
/** A desired network. */
export type AgentDesiredNetwork = z.infer<typeof AgentDesiredNetworkSchema>;

/** `PUT /v1/networks` body: the node's complete desired network set. */
export const AgentNetworksRequestSchema = z.object({
  networks: z.array(AgentDesiredNetworkSchema).max(1000),
}).strict();
/** `PUT /v1/networks` body. */
export type AgentNetworksRequest = z.infer<typeof AgentNetworksRequestSchema>;

/** One NIC of a VM as the agent plumbs it. */
export const AgentNicSchema = z.object({
  index: z.number().int().min(0).max(MAX_NICS_PER_VM - 1),
  mac: MacSchema,
  /** The IPAM address (null: unmanaged bridge, the guest uses DHCP). */
  address: Ipv4Schema.nullable(),
  network: AgentNetworkSpecSchema,
}).strict();
/** An agent NIC. */
export type AgentNic = z.infer<typeof AgentNicSchema>;

/** `POST /v1/vms` on an agent that plumbs NICs: the create request plus `nics`. */
export const AgentVmCreateWithNicsRequestSchema = AgentVmCreateRequestSchema.extend({
  /** The VM's NICs, index order; absent or empty: one user-mode NAT NIC. */
  nics: z.array(AgentNicSchema).max(MAX_NICS_PER_VM).optional(),
}).strict();
/** A VM create request with NICs. */
export type AgentVmCreateWithNicsRequest = z.infer<typeof AgentVmCreateWithNicsRequestSchema>;

/** What the agent has applied for one network (`GET /v1/networks`). */
export const AgentNetworkStatusSchema = z.object({
  name: z.string(),
  bridge_name: z.string(),
  /** `ready`: devices in place; `failed`: the last attempt failed (`message`). */
  state: z.enum(["ready", "failed"]),
  message: z.string().nullable(),
  /** Overlays: the VXLAN peers (resolved IPv4) in the forwarding table. */
  peers: z.array(z.string()),
  /** Local VMs with a NIC on it. */
  vm_ids: z.array(z.string()),
});
/** An applied network. */
export type AgentNetworkStatus = z.infer<typeof AgentNetworkStatusSchema>;

/** `GET /v1/networks` on the agent. */
export const AgentNetworkListSchema = z.object({ items: z.array(AgentNetworkStatusSchema) });
