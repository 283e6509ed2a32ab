/**
 * Networks (spec 001 "Declarative manifests": the `Network` kind's fields `type`, `managed`,
 * `bridgeName`, `mtu`, `subnet`, `gateway`; issue 8 "Networks"; the kind's `vlan` is not
 * offered: the create request refuses it as an unknown field). Three kinds:
 * - `bridge` (unmanaged): NICs join a Linux bridge the host already has (e.g. `br0`, bridged to
 *   the LAN); the guest asks the LAN's DHCP for its address (no IPAM).
 * - `bridge` with `managed: true`: the agent of every node hosting a VM on it creates the bridge
 *   `bridge_name` (MTU `mtu`), gives it the `gateway` address, runs dnsmasq on it (DHCP with one
 *   static lease per NIC, DNS) and NATs the subnet to the host's uplink. Each node's bridge is
 *   its own L2 segment with the same subnet (addresses stay unique cluster-wide: IPAM is the
 *   control plane's); use an overlay to join VMs across nodes.
 * - `overlay`: one L2 segment across nodes over VXLAN (unicast; UDP {@link VXLAN_PORT}): the
 *   control plane allocates the VNI and the addresses; `bridge_name` (`oxb<vni>`) and `mtu`
 *   ({@link OVERLAY_MTU}) are server-derived. No gateway, no NAT.
 *
 * Addresses (IPv4 only) of managed bridges and overlays are allocated by the control plane in
 * the transaction that records the VM (cp/networks/ipam.ts); the network address, the
 * broadcast address and a managed bridge's gateway (by default its first host address) are
 * never handed out.
 *
 * Public API (reads: `vm:read`, every role; writes: `cluster:manage`, admin):
 * - `POST /v1/networks` {@link NetworkCreateRequestSchema} → 201 {@link NetworkSchema};
 *   400 `validation_failed` (unknown type, bad CIDR, MTU out of range, a field the type
 *   forbids), 409 `network_already_exists`, 409 `network_subnet_overlap` (details:
 *   `{subnet, network, network_subnet}`), 409 `conflict` (another network uses the bridge);
 * - `GET /v1/networks?limit=&cursor=` → `{items: Network[], next_cursor}` (by name);
 * - `GET /v1/networks/{name}` → Network; 404 `network_not_found`;
 * - `DELETE /v1/networks/{name}` → 200 the deleted Network; 404 `network_not_found`, 409
 *   `conflict` while VMs use it (details: `{network, vm_count, vms: [names]}`).
 *
 * VMs name their networks at create time (`networks` of shared/api/vms.ts, first NIC first:
 * 404 `network_not_found`, 409 `network_addresses_exhausted`); the VM view lists its NICs
 * ({@link VmNicSchema}).
 *
 * @module
 */
import { z } from "zod";
import { ListQuerySchema, ResourceNameSchema, TimestampSchema } from "./common.ts";

/** Network kinds. */
export const NetworkTypeSchema = z.enum(["bridge", "overlay"]);
/** A network kind. */
export type NetworkType = z.infer<typeof NetworkTypeSchema>;

/** MTU bounds, bytes (1280: IPv6's minimum, so guests keep IPv6 working; 9000: jumbo). */
export const MTU_LIMITS = { min: 1280, max: 9000 } as const;
/** MTU of a managed bridge created without one, bytes. */
export const DEFAULT_BRIDGE_MTU = 1500;
/** MTU of overlay networks, bytes: 1500 minus the 50 bytes of VXLAN over IPv4. */
export const OVERLAY_MTU = 1450;
/** The VXLAN UDP port (IANA). */
export const VXLAN_PORT = 4789;
/** VNIs the control plane allocates (24 bits; the low ones are left to the host's own use). */
export const VNI_RANGE = { min: 4096, max: 16_777_215 } as const;
/** Subnet prefix lengths accepted (30: the smallest with a gateway and one guest). */
export const PREFIX_LIMITS = { min: 8, max: 30 } as const;
/** Most NICs one VM may have (one PCI slot each). */
export const MAX_NICS_PER_VM = 8;
/**
 * Where managed bridges and overlays created without a `subnet` get one: the first `/24` of
 * this range that overlaps no other network.
 */
export const DEFAULT_SUBNET_POOL = "10.245.0.0/16";
/** Prefix length of the subnets taken from {@link DEFAULT_SUBNET_POOL}. */
export const DEFAULT_SUBNET_PREFIX = 24;
/**
 * Interface names starting with this are Otherix's own devices on the nodes (overlay bridges
 * `oxb<vni>`, VXLAN devices `oxv<vni>`, TAPs `oxt…`): a network's `bridge_name` may not.
 */
export const RESERVED_DEVICE_PREFIX = "ox";

/** The bridge of the overlay with VNI `vni` on every node (server-derived `bridge_name`). */
export function overlayBridgeName(vni: number): string {
  return `oxb${vni}`;
}

// ---------------------------------------------------------------------------------------------
// IPv4 arithmetic (one implementation for the control plane, the agent and the CLI)

/** An IPv4 address as an unsigned 32-bit number, or null when `s` is not dotted-quad. */
export function parseIpv4(s: string): number | null {
  const m = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(s);
  if (!m) return null;
  let n = 0;
  for (let i = 1; i <= 4; i++) {
    if (m[i].length > 1 && m[i].startsWith("0")) return null; // no octal-looking octets
    const o = Number(m[i]);
    if (o > 255) return null;
    n = n * 256 + o;
  }
  return n;
}

/** Dotted-quad form of an unsigned 32-bit address. */
export function formatIpv4(n: number): string {
  return [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join(".");
}

/** A parsed IPv4 subnet: network address and prefix length. */
export interface Cidr {
  /** The network address (host bits zero), unsigned 32-bit. */
  network: number;
  prefix: number;
}

/** Number of addresses in a prefix (2^(32-prefix)). */
export function sizeOf(prefix: number): number {
  return 2 ** (32 - prefix);
}

/**
 * Parses `a.b.c.d/p`. Returns a reason string instead when it is malformed, has host bits
 * set, or its prefix is outside {@link PREFIX_LIMITS}.
 */
export function parseCidr(s: string): Cidr | string {
  const m = /^([0-9.]+)\/(\d{1,2})$/.exec(s);
  if (!m) return "must be an IPv4 subnet in CIDR form, e.g. 10.10.0.0/24";
  const addr = parseIpv4(m[1]);
  const prefix = Number(m[2]);
  if (addr === null) return `${m[1]} is not an IPv4 address`;
  if (prefix < PREFIX_LIMITS.min || prefix > PREFIX_LIMITS.max) {
    return `prefix length must be between /${PREFIX_LIMITS.min} and /${PREFIX_LIMITS.max}`;
  }
  if (addr % sizeOf(prefix) !== 0) {
    const net = addr - (addr % sizeOf(prefix));
    return `host bits are set: did you mean ${formatIpv4(net)}/${prefix}?`;
  }
  const first = addr >>> 24;
  if (first === 0 || first === 127 || first >= 224) {
    return "must not be in 0.0.0.0/8, 127.0.0.0/8 (loopback) or 224.0.0.0/3 (multicast, reserved)";
  }
  if (addr >= parseIpv4("169.254.0.0")! && addr < parseIpv4("169.255.0.0")!) {
    return "must not be in 169.254.0.0/16 (link-local)";
  }
  return { network: addr, prefix };
}

/** `c` as `a.b.c.d/p`. */
export function formatCidr(c: Cidr): string {
  return `${formatIpv4(c.network)}/${c.prefix}`;
}

/** True when the two subnets share at least one address. */
export function cidrsOverlap(a: Cidr, b: Cidr): boolean {
  const aEnd = a.network + sizeOf(a.prefix);
  const bEnd = b.network + sizeOf(b.prefix);
  return a.network < bEnd && b.network < aEnd;
}

/** True when address `ip` (unsigned 32-bit) is inside `c`. */
export function cidrContains(c: Cidr, ip: number): boolean {
  return ip >= c.network && ip < c.network + sizeOf(c.prefix);
}

/** The gateway of a managed bridge on `c`: its first host address. */
export function gatewayOf(c: Cidr): number {
  return c.network + 1;
}

/** The broadcast address of `c`. */
export function broadcastOf(c: Cidr): number {
  return c.network + sizeOf(c.prefix) - 1;
}

/** The dotted netmask of a prefix length, e.g. 24 → `255.255.255.0`. */
export function netmaskOf(prefix: number): string {
  return formatIpv4((2 ** 32 - sizeOf(prefix)) >>> 0);
}

// ---------------------------------------------------------------------------------------------
// Field rules shared by the control plane and the agent (what the agent would refuse, the
// control plane refuses first)

/** An IPv4 address in dotted-quad form. */
export const Ipv4Schema = z.string().refine(
  (s) => parseIpv4(s) !== null,
  "must be an IPv4 address (dotted quad)",
);

/** An IPv4 subnet `a.b.c.d/p` with host bits zero, /8–/30, not loopback/multicast/link-local. */
export const CidrSchema = z.string().superRefine((s, ctx) => {
  const c = parseCidr(s);
  if (typeof c === "string") ctx.addIssue({ code: "custom", message: c });
});

/**
 * A Linux bridge name: 1–15 characters (IFNAMSIZ - 1), a letter first, then letters, digits,
 * `_`, `.`, `-`; not starting with {@link RESERVED_DEVICE_PREFIX} (Otherix's own devices).
 */
export const BridgeNameSchema = z.string()
  .regex(
    /^[A-Za-z][A-Za-z0-9_.-]{0,14}$/,
    "must be a Linux interface name: 1-15 characters, a letter first, then letters, digits, " +
      "'_', '.', '-'",
  )
  .refine(
    (s) => !s.toLowerCase().startsWith(RESERVED_DEVICE_PREFIX),
    `names starting with "${RESERVED_DEVICE_PREFIX}" are reserved for Otherix's own devices`,
  );

/** An MTU in bytes within {@link MTU_LIMITS}. */
export const MtuSchema = z.number().int().min(MTU_LIMITS.min, `must be at least ${MTU_LIMITS.min}`)
  .max(MTU_LIMITS.max, `must be at most ${MTU_LIMITS.max}`);

/** A unicast MAC address, lowercase, colon-separated. */
export const MacSchema = z.string().regex(
  /^[0-9a-f][02468ace](:[0-9a-f]{2}){5}$/,
  "must be a unicast MAC address (lowercase, colon-separated)",
);

/** A VXLAN network identifier. */
export const VniSchema = z.number().int().min(1).max(VNI_RANGE.max);

// ---------------------------------------------------------------------------------------------
// Public API

/** `POST /v1/networks` body (rules per type: see the module doc). */
export const NetworkCreateRequestSchema = z.object({
  name: ResourceNameSchema,
  type: NetworkTypeSchema,
  /** `bridge` only: Otherix creates and runs the bridge (default false). */
  managed: z.boolean().optional(),
  /** `bridge` only (required): the host bridge to join, or the one to create when managed. */
  bridge_name: BridgeNameSchema.optional(),
  /** `bridge` only: MTU of the bridge and the NICs, bytes (managed default 1500). */
  mtu: MtuSchema.optional(),
  /**
   * Managed bridges and overlays: the IPv4 subnet the addresses come from (default: a free
   * `/24` of {@link DEFAULT_SUBNET_POOL}); an unmanaged bridge takes none (the LAN's DHCP
   * addresses its VMs).
   */
  subnet: CidrSchema.optional(),
  /**
   * Managed bridges only: the nodes' address on the bridge (router, DNS server and NAT of the
   * VMs), a host address of `subnet`, which must then be given (default: its first host
   * address).
   */
  gateway: Ipv4Schema.optional(),
}).strict().superRefine((r, ctx) => {
  const forbid = (field: keyof typeof r, why: string) => {
    if (r[field] !== undefined) ctx.addIssue({ code: "custom", path: [field], message: why });
  };
  if (r.type === "overlay") {
    const derived = "is server-derived for overlay networks and must not be given";
    forbid("bridge_name", derived);
    forbid("mtu", derived);
    forbid("managed", "applies to bridge networks only (an overlay is always managed)");
    forbid("gateway", "applies to managed bridges only (an overlay has no gateway)");
    return;
  }
  if (r.bridge_name === undefined) {
    ctx.addIssue({
      code: "custom",
      path: ["bridge_name"],
      message: "is required for bridge networks",
    });
  }
  if (!r.managed) {
    forbid(
      "subnet",
      "applies to managed bridges and overlays only (an unmanaged bridge's VMs take their " +
        "addresses from the LAN's DHCP)",
    );
    forbid("gateway", "applies to managed bridges only");
  } else if (r.gateway !== undefined) {
    const c = r.subnet !== undefined ? parseCidr(r.subnet) : null;
    const gw = parseIpv4(r.gateway);
    if (r.subnet === undefined) {
      ctx.addIssue({ code: "custom", path: ["gateway"], message: "needs subnet to be given" });
    } else if (c !== null && typeof c !== "string" && gw !== null) {
      if (!cidrContains(c, gw) || gw === c.network || gw === broadcastOf(c)) {
        ctx.addIssue({
          code: "custom",
          path: ["gateway"],
          message: `must be a host address of ${r.subnet}`,
        });
      }
    }
  }
});
/** Network create body (input form). */
export type NetworkCreateRequestInput = z.input<typeof NetworkCreateRequestSchema>;
/** Network create body. */
export type NetworkCreateRequest = z.infer<typeof NetworkCreateRequestSchema>;

/** A network as the public API serves it. */
export const NetworkSchema = z.object({
  id: z.string().uuid(),
  name: z.string(),
  type: NetworkTypeSchema,
  /** True for managed bridges and overlays. */
  managed: z.boolean(),
  /** The bridge NICs join on each node (`oxb<vni>` for overlays). */
  bridge_name: z.string(),
  /** Bytes; null: an unmanaged bridge's own MTU. */
  mtu: z.number().int().nullable(),
  /** Null for unmanaged bridges. */
  subnet: z.string().nullable(),
  /** The nodes' address on a managed bridge (DHCP, DNS, NAT); null otherwise. */
  gateway: z.string().nullable(),
  /** The VXLAN network identifier of an overlay; null for bridges. */
  vni: z.number().int().nullable(),
  /** VMs with a NIC on the network. */
  attached_vms: z.number().int().min(0),
  /** Addresses IPAM can hand out / has handed out (null: no IPAM, unmanaged bridge). */
  addresses: z.object({
    total: z.number().int().min(0),
    used: z.number().int().min(0),
  }).nullable(),
  created_at: TimestampSchema,
  updated_at: TimestampSchema,
});
/** A network. */
export type Network = z.infer<typeof NetworkSchema>;

/** `GET /v1/networks` query. */
export const NetworkListQuerySchema = ListQuerySchema;

/** Where a NIC address is known from (only `ipam` is filled by the control plane today). */
export const NicAddressSourceSchema = z.enum(["ipam", "guest_agent", "neighbour"]);

/** One address of a NIC. */
export const VmNicAddressSchema = z.object({
  address: z.string(),
  /** Prefix length of the subnet (null when unknown). */
  prefix_length: z.number().int().min(0).max(32).nullable(),
  source: NicAddressSourceSchema,
});
/** A NIC address. */
export type VmNicAddress = z.infer<typeof VmNicAddressSchema>;

/**
 * A VM's NIC (VM view `nics`): its network, its MAC (chosen at create time, stored with the
 * VM: stable across restarts) and its addresses. A VM created without networks has no entry
 * here (its one NIC is QEMU user-mode NAT, unreachable from outside).
 */
export const VmNicSchema = z.object({
  /** 0 for the first NIC (the one a manifest round-trips). */
  index: z.number().int().min(0).max(MAX_NICS_PER_VM - 1),
  network: z.string(),
  mac: MacSchema,
  addresses: z.array(VmNicAddressSchema),
});
/** A VM NIC. */
export type VmNic = z.infer<typeof VmNicSchema>;

/** The `networks` of a VM create request: network names, first NIC first. */
export const VmNetworksSchema = z.array(ResourceNameSchema).min(1).max(
  MAX_NICS_PER_VM,
  `a VM has at most ${MAX_NICS_PER_VM} NICs`,
);
