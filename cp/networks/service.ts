/**
 * Networks: create, delete, views (shared/api/networks.ts has the contract).
 *
 * Uniqueness across networks (bridge names, subnets, VNIs) is kept by one small registry
 * record (`/network-registry`) that every create and delete rewrites in its transaction,
 * guarded by its revision: two concurrent creates with overlapping subnets cannot both
 * succeed. A create writes the network, its empty allocation (cp/networks/ipam.ts) and the
 * registry at once; a delete removes all three, guarded by the allocation's revision, so it
 * cannot race a VM create attaching to the network.
 *
 * Server-derived values: an overlay's VNI (the registry's counter, never reused, from
 * `VNI_RANGE.min`), its bridge `oxb<vni>` and MTU (`OVERLAY_MTU`); a managed bridge's default
 * gateway (the subnet's first host address) and MTU; a missing subnet (the first free `/24`
 * of `DEFAULT_SUBNET_POOL`).
 *
 * @module
 */
import {
  type Cidr,
  cidrsOverlap,
  DEFAULT_BRIDGE_MTU,
  DEFAULT_SUBNET_POOL,
  DEFAULT_SUBNET_PREFIX,
  formatCidr,
  type Network,
  type NetworkCreateRequest,
  OVERLAY_MTU,
  overlayBridgeName,
  parseCidr,
  sizeOf,
  VNI_RANGE,
} from "../../shared/api/networks.ts";
import { ApiError } from "../../shared/errors.ts";
import type { CpContext } from "../context.ts";
import { keys, type NetworkRecord } from "../repo/records.ts";
import type { KeyValue, Op } from "../store/store.ts";
import {
  addressCapacity,
  emptyNetworkAllocation,
  gatewayAddressOf,
  type NetworkAllocation,
} from "./ipam.ts";

/** One network's entry in the registry. */
export interface RegistryEntry {
  subnet: string | null;
  bridge_name: string;
  vni: number | null;
}

/** `/network-registry`: what must stay unique across networks. */
export interface NetworkRegistry {
  networks: Record<string, RegistryEntry>;
  /** The next VNI to hand out (VNIs are never reused). */
  next_vni: number;
  updated_at: string;
}

function emptyRegistry(ts: string): NetworkRegistry {
  return { networks: {}, next_vni: VNI_RANGE.min, updated_at: ts };
}

/** The public view of `net` with the figures of its allocation (null: none yet). */
export function networkView(net: NetworkRecord, alloc: NetworkAllocation | null): Network {
  const total = addressCapacity(net);
  const current = alloc?.network_id === net.id ? alloc : null;
  return {
    ...net,
    attached_vms: current ? Object.keys(current.vms).length : 0,
    addresses: total === null
      ? null
      : { total, used: current ? Object.keys(current.addresses).length : 0 },
  };
}

/** Reads a network. @throws ApiError `network_not_found` */
export async function getNetwork(
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
 * The subnet for a new network: `wanted` when it overlaps no registered subnet, else the first
 * free `/24` of the default pool when nothing was asked for.
 *
 * @throws ApiError `network_subnet_overlap`, `conflict` (the default pool is used up)
 */
export function chooseSubnet(
  reg: NetworkRegistry,
  wanted: string | undefined,
): string {
  const taken: [string, Cidr][] = [];
  for (const [name, e] of Object.entries(reg.networks)) {
    if (e.subnet === null) continue;
    const c = parseCidr(e.subnet);
    if (typeof c !== "string") taken.push([name, c]);
  }
  if (wanted !== undefined) {
    const c = parseCidr(wanted) as Cidr; // validated by the request schema
    const clash = taken.find(([, t]) => cidrsOverlap(t, c));
    if (clash) {
      throw new ApiError(
        "network_subnet_overlap",
        `subnet ${wanted} overlaps subnet ${formatCidr(clash[1])} of network "${clash[0]}"`,
        { subnet: wanted, network: clash[0], network_subnet: formatCidr(clash[1]) },
      );
    }
    return formatCidr(c);
  }
  const pool = parseCidr(DEFAULT_SUBNET_POOL) as Cidr;
  const step = sizeOf(DEFAULT_SUBNET_PREFIX);
  for (let n = pool.network; n < pool.network + sizeOf(pool.prefix); n += step) {
    const c = { network: n, prefix: DEFAULT_SUBNET_PREFIX };
    if (!taken.some(([, t]) => cidrsOverlap(t, c))) return formatCidr(c);
  }
  throw new ApiError(
    "conflict",
    `every /${DEFAULT_SUBNET_PREFIX} of the default subnet pool ${DEFAULT_SUBNET_POOL} is in ` +
      "use: give the network a subnet",
  );
}

/**
 * The record of a new network for `req`, given the registry (VNI, bridge and subnet rules).
 *
 * @throws ApiError `conflict` (the bridge is another network's; VNIs used up),
 *   `network_subnet_overlap`
 */
export function newNetworkRecord(
  req: NetworkCreateRequest,
  reg: NetworkRegistry,
  id: string,
  ts: string,
): NetworkRecord {
  let vni: number | null = null;
  let bridge = req.bridge_name ?? "";
  if (req.type === "overlay") {
    const used = new Set(Object.values(reg.networks).map((e) => e.vni));
    vni = Math.max(reg.next_vni, VNI_RANGE.min);
    while (used.has(vni)) vni++;
    if (vni > VNI_RANGE.max) throw new ApiError("conflict", "no VXLAN network identifier left");
    bridge = overlayBridgeName(vni);
  } else {
    const owner = Object.entries(reg.networks).find(([, e]) => e.bridge_name === bridge);
    if (owner) {
      throw new ApiError(
        "conflict",
        `bridge ${bridge} is already used by network "${owner[0]}"`,
        { bridge_name: bridge, network: owner[0] },
      );
    }
  }
  const managed = req.type === "overlay" || req.managed === true;
  const subnet = managed ? chooseSubnet(reg, req.subnet) : null;
  const isManagedBridge = req.type === "bridge" && managed;
  return {
    id,
    name: req.name,
    type: req.type,
    managed,
    bridge_name: bridge,
    mtu: req.type === "overlay"
      ? OVERLAY_MTU
      : req.mtu ?? (isManagedBridge ? DEFAULT_BRIDGE_MTU : null),
    subnet,
    gateway: isManagedBridge ? req.gateway ?? gatewayAddressOf(parseCidr(subnet!) as Cidr) : null,
    vni,
    created_at: ts,
    updated_at: ts,
  };
}

/**
 * Creates a network (synchronous: agents build it when a VM on their node needs it).
 *
 * @throws ApiError `network_already_exists`, `network_subnet_overlap`, `conflict`
 */
export async function createNetwork(
  ctx: CpContext,
  req: NetworkCreateRequest,
): Promise<Network> {
  const { store } = ctx;
  for (let attempt = 0; attempt < 50; attempt++) {
    if (await store.get(keys.network(req.name))) {
      throw new ApiError("network_already_exists", `network "${req.name}" already exists`, {
        network: req.name,
      });
    }
    const regKv = await store.get<NetworkRegistry>(keys.networkRegistry);
    const ts = ctx.now().toISOString();
    const reg = regKv?.value ?? emptyRegistry(ts);
    const net = newNetworkRecord(req, reg, crypto.randomUUID(), ts);
    const nextReg: NetworkRegistry = {
      networks: {
        ...reg.networks,
        [net.name]: { subnet: net.subnet, bridge_name: net.bridge_name, vni: net.vni },
      },
      next_vni: net.vni !== null ? net.vni + 1 : reg.next_vni,
      updated_at: ts,
    };
    const res = await store.txn({
      compare: [
        { key: keys.network(net.name), absent: true },
        regKv
          ? { key: keys.networkRegistry, modRevision: regKv.modRevision }
          : { key: keys.networkRegistry, absent: true },
      ],
      success: [
        { type: "put", key: keys.network(net.name), value: net },
        {
          type: "put",
          key: keys.networkAllocation(net.name),
          value: emptyNetworkAllocation(net.id, ts),
        },
        { type: "put", key: keys.networkRegistry, value: nextReg },
      ],
    });
    if (res.succeeded) {
      ctx.log.info("network created", {
        network: net.name,
        type: net.type,
        managed: net.managed,
        bridge: net.bridge_name,
        subnet: net.subnet,
        vni: net.vni,
      });
      return networkView(net, null);
    }
  }
  throw new ApiError("internal_error", "network create: too many concurrent updates; retry");
}

/**
 * Deletes a network no VM uses; agents remove its devices once no VM of theirs needs it.
 *
 * @returns the deleted network
 * @throws ApiError `network_not_found`, `conflict` while VMs use it (details: `network`,
 *   `vm_count`, `vms`: their names, sorted)
 */
export async function deleteNetwork(ctx: CpContext, name: string): Promise<Network> {
  const { store } = ctx;
  for (let attempt = 0; attempt < 50; attempt++) {
    const { net, alloc } = await getNetwork(ctx, name);
    const current = alloc?.value.network_id === net.value.id ? alloc.value : null;
    const vms = current ? Object.values(current.vms).map((v) => v.name).sort() : [];
    if (vms.length > 0) {
      const shown = vms.slice(0, 20).join(", ") + (vms.length > 20 ? ", …" : "");
      throw new ApiError(
        "conflict",
        `network "${name}" is used by ${vms.length} VM${vms.length === 1 ? "" : "s"}: ` +
          `${shown}; delete ${vms.length === 1 ? "it" : "them"} first`,
        { network: name, vm_count: vms.length, vms },
      );
    }
    const regKv = await store.get<NetworkRegistry>(keys.networkRegistry);
    const ts = ctx.now().toISOString();
    const ops: Op[] = [
      { type: "delete", key: net.key },
      { type: "delete", key: keys.networkAllocation(name) },
    ];
    if (regKv) {
      const { [name]: _gone, ...rest } = regKv.value.networks;
      ops.push({
        type: "put",
        key: keys.networkRegistry,
        value: { ...regKv.value, networks: rest, updated_at: ts },
      });
    }
    const res = await store.txn({
      compare: [
        { key: net.key, modRevision: net.modRevision },
        alloc
          ? { key: alloc.key, modRevision: alloc.modRevision }
          : { key: keys.networkAllocation(name), absent: true },
        regKv
          ? { key: keys.networkRegistry, modRevision: regKv.modRevision }
          : { key: keys.networkRegistry, absent: true },
      ],
      success: ops,
    });
    if (res.succeeded) {
      ctx.log.info("network deleted", { network: name, type: net.value.type });
      return networkView(net.value, current);
    }
  }
  throw new ApiError("internal_error", `network "${name}": too many concurrent updates; retry`);
}
