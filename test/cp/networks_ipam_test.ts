/**
 * The pure parts of networks: IPv4/CIDR rules shared by the control plane and the agent,
 * IPAM (lowest free address, reserved addresses, MAC salting, release), subnet and VNI
 * choice, and the desired set each node receives (overlay peers).
 */
import { assertEquals, assertThrows } from "../assert.ts";
import {
  attach,
  detach,
  emptyNetworkAllocation,
  lowestFree,
  macFor,
} from "../../cp/networks/ipam.ts";
import { chooseSubnet, type NetworkRegistry, newNetworkRecord } from "../../cp/networks/service.ts";
import { desiredNetworksFor, underlayHostOf } from "../../cp/networks/desired.ts";
import type { NetworkRecord, NodeRecord, VmRecord } from "../../cp/repo/records.ts";
import {
  cidrsOverlap,
  formatIpv4,
  NetworkCreateRequestSchema,
  parseCidr,
  parseIpv4,
} from "../../shared/api/networks.ts";
import { AgentNetworkSpecSchema } from "../../shared/api/network_agent.ts";
import { ApiError } from "../../shared/errors.ts";

const TS = "2026-01-01T00:00:00.000Z";

const net = (over: Partial<NetworkRecord> = {}): NetworkRecord => ({
  id: "n1",
  name: "lan",
  type: "bridge",
  managed: true,
  bridge_name: "otlan0",
  mtu: 1500,
  subnet: "10.0.0.0/29",
  gateway: "10.0.0.1",
  vni: null,
  created_at: TS,
  updated_at: TS,
  ...over,
});

Deno.test("networks: IPv4 and CIDR rules", async (t) => {
  await t.step("addresses", () => {
    assertEquals(parseIpv4("10.1.2.3"), 0x0a010203);
    assertEquals(formatIpv4(0xc0a80101), "192.168.1.1");
    for (const bad of ["10.1.2", "10.1.2.256", "010.1.2.3", "a.b.c.d", " 10.1.2.3"]) {
      assertEquals(parseIpv4(bad), null, bad);
    }
  });
  await t.step("subnets: canonical, sized, not special", () => {
    assertEquals(parseCidr("10.10.0.0/24"), { network: 0x0a0a0000, prefix: 24 });
    assertEquals(parseCidr("10.10.0.1/24"), "host bits are set: did you mean 10.10.0.0/24?");
    for (
      const bad of [
        "10.0.0.0/7",
        "10.0.0.0/31",
        "127.0.0.0/8",
        "224.0.0.0/8",
        "169.254.0.0/16",
        "10.0.0.0",
      ]
    ) {
      assertEquals(typeof parseCidr(bad), "string", bad);
    }
    const c = (s: string) => parseCidr(s) as { network: number; prefix: number };
    assertEquals(cidrsOverlap(c("10.0.0.0/8"), c("10.20.0.0/16")), true);
    assertEquals(cidrsOverlap(c("10.0.0.0/25"), c("10.0.0.128/25")), false);
  });
  await t.step("create requests: the rules per type", () => {
    const ok = (b: unknown) => NetworkCreateRequestSchema.safeParse(b).success;
    assertEquals(ok({ name: "o", type: "overlay" }), true);
    assertEquals(ok({ name: "b", type: "bridge", bridge_name: "br0" }), true);
    assertEquals(
      ok({
        name: "m",
        type: "bridge",
        managed: true,
        bridge_name: "br1",
        subnet: "10.1.0.0/24",
        gateway: "10.1.0.254",
      }),
      true,
    );
    assertEquals(
      ok({
        name: "m",
        type: "bridge",
        managed: true,
        bridge_name: "br1",
        subnet: "10.1.0.0/24",
        gateway: "10.1.0.255",
      }),
      false,
    );
    assertEquals(
      ok({ name: "m", type: "bridge", managed: true, bridge_name: "br1", gateway: "10.1.0.1" }),
      false,
    );
    assertEquals(ok({ name: "o", type: "overlay", managed: true }), false);
    assertEquals(ok({ name: "b", type: "bridge", bridge_name: "bad name" }), false);
  });
  await t.step("the agent refuses what the control plane refuses", () => {
    const spec = {
      name: "lan",
      type: "bridge",
      managed: true,
      bridge_name: "otlan0",
      mtu: 1500,
      subnet: "10.0.0.0/24",
      gateway: "10.0.0.1",
      vni: null,
    };
    assertEquals(AgentNetworkSpecSchema.safeParse(spec).success, true);
    for (
      const bad of [
        { bridge_name: "oxreserved" },
        { bridge_name: "x; rm -rf /" },
        { subnet: "10.0.0.1/24" },
        { mtu: 100 },
        { vni: 7 },
        { type: "overlay", vni: null },
      ]
    ) {
      assertEquals(
        AgentNetworkSpecSchema.safeParse({ ...spec, ...bad }).success,
        false,
        JSON.stringify(bad),
      );
    }
  });
});

Deno.test("networks: IPAM", async (t) => {
  await t.step("lowest free host address; network, broadcast, gateway reserved", () => {
    const c = parseCidr("10.0.0.0/29") as { network: number; prefix: number };
    const gw = parseIpv4("10.0.0.1")!;
    assertEquals(formatIpv4(lowestFree(c, gw, new Set())!), "10.0.0.2");
    const used = new Set([2, 3, 4, 5, 6].map((i) => c.network + i));
    assertEquals(lowestFree(c, gw, used), null, ".7 is the broadcast address");
    assertEquals(formatIpv4(lowestFree(c, null, new Set())!), "10.0.0.1", "no gateway: .1");
  });

  await t.step("attach: one address and MAC per NIC; exhaustion; detach", () => {
    let alloc = emptyNetworkAllocation("n1", TS);
    const one = attach(net(), alloc, { id: "vm-1", name: "a" }, [0, 2], TS);
    assertEquals(one.nics.map((n) => [n.index, n.addresses[0].address]), [[0, "10.0.0.2"], [
      2,
      "10.0.0.3",
    ]]);
    assertEquals(one.nics[0].mac, macFor("vm-1", 0));
    alloc = one.next;
    alloc = attach(net(), alloc, { id: "vm-2", name: "b" }, [0], TS).next;
    alloc = attach(net(), alloc, { id: "vm-3", name: "c" }, [0, 1], TS).next;
    assertEquals(Object.keys(alloc.addresses).sort(), [
      "10.0.0.2",
      "10.0.0.3",
      "10.0.0.4",
      "10.0.0.5",
      "10.0.0.6",
    ]);
    const e = assertThrows(() => attach(net(), alloc, { id: "vm-4", name: "d" }, [0], TS));
    assertEquals((e as ApiError).code, "network_addresses_exhausted");
    const freed = detach(alloc, "vm-2", TS);
    assertEquals(Object.keys(freed.vms).sort(), ["vm-1", "vm-3"]);
    const again = attach(net(), freed, { id: "vm-4", name: "d" }, [0], TS);
    assertEquals(again.nics[0].addresses[0].address, "10.0.0.4", "the freed address");
  });

  await t.step("a MAC in use is salted; without IPAM no address", () => {
    const taken = emptyNetworkAllocation("n1", TS);
    taken.macs[macFor("vm-9", 0)] = "other";
    const r = attach(
      net({ subnet: null, gateway: null, managed: false }),
      taken,
      { id: "vm-9", name: "x" },
      [0],
      TS,
    );
    assertEquals(r.nics[0].mac, macFor("vm-9", 0, 1));
    assertEquals(r.nics[0].addresses, []);
    assertEquals(r.next.addresses, {});
  });
});

Deno.test("networks: server-derived values", async (t) => {
  const reg = (networks: NetworkRegistry["networks"] = {}, next = 4096): NetworkRegistry => ({
    networks,
    next_vni: next,
    updated_at: TS,
  });
  await t.step("default subnets skip the ones in use; overlaps are refused", () => {
    assertEquals(chooseSubnet(reg(), undefined), "10.245.0.0/24");
    const used = reg({ x: { subnet: "10.245.0.0/23", bridge_name: "b", vni: null } });
    assertEquals(chooseSubnet(used, undefined), "10.245.2.0/24");
    const e = assertThrows(() => chooseSubnet(used, "10.245.1.128/25"));
    assertEquals((e as ApiError).code, "network_subnet_overlap");
    assertEquals((e as ApiError).details, {
      subnet: "10.245.1.128/25",
      network: "x",
      network_subnet: "10.245.0.0/23",
    });
  });
  await t.step("VNIs count up and skip used ones; bridges are unique", () => {
    const r = reg({ o: { subnet: "10.1.0.0/24", bridge_name: "oxb4100", vni: 4100 } }, 4100);
    const rec = newNetworkRecord({ name: "p", type: "overlay" }, r, "id", TS);
    assertEquals([rec.vni, rec.bridge_name, rec.mtu, rec.gateway], [4101, "oxb4101", 1450, null]);
    const e = assertThrows(() =>
      newNetworkRecord({ name: "q", type: "bridge", bridge_name: "oxb4100" }, r, "id", TS)
    );
    assertEquals((e as ApiError).code, "conflict");
  });
});

Deno.test("networks: desired sets and overlay peers", () => {
  const vm = (name: string, node: string, nets: string[]): VmRecord =>
    ({
      name,
      node,
      nics: nets.map((n, i) => ({ index: i, network: n, mac: "52:54:00:00:00:01", addresses: [] })),
    }) as unknown as VmRecord;
  const vms = [
    vm("a", "n1", ["ovl", "lan"]),
    vm("b", "n2", ["ovl"]),
    vm("c", "n3", ["ovl"]),
    vm("d", "n1", []),
  ];
  const nodes: Record<string, Partial<NodeRecord>> = {
    n1: { status: "ready", endpoint: "https://10.0.0.1:9443" },
    n2: { status: "unreachable", endpoint: "https://node-2.lan:9443" },
    n3: { status: "gone", endpoint: "https://10.0.0.3:9443" },
  };
  const nets: Record<string, NetworkRecord> = {
    ovl: net({
      name: "ovl",
      type: "overlay",
      bridge_name: "oxb4096",
      vni: 4096,
      gateway: null,
      subnet: "10.9.0.0/24",
      mtu: 1450,
    }),
    lan: net(),
  };
  const inputs = {
    vmsOnNode: (n: string) => vms.filter((v) => v.node === n),
    vmsOnNetwork: (n: string) => vms.filter((v) => v.nics!.some((x) => x.network === n)),
    network: (n: string) => nets[n],
    node: (n: string) => nodes[n] as NodeRecord | undefined,
  };
  const d1 = desiredNetworksFor("n1", inputs);
  assertEquals(d1.networks.map((n) => [n.spec.name, n.peers]), [["lan", []], ["ovl", [
    "node-2.lan",
  ]]]);
  assertEquals(d1.networks[1].spec.vni, 4096);
  assertEquals(desiredNetworksFor("n2", inputs).networks.map((n) => n.peers), [["10.0.0.1"]]);
  assertEquals(desiredNetworksFor("n4", inputs).networks, []);
  assertEquals(underlayHostOf("https://[fd00::1]:9443"), "fd00::1");
  assertEquals(underlayHostOf(null), null);
});
