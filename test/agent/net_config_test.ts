/**
 * What the agent hands QEMU and the guest for NICs (pure): QEMU's TAP NIC arguments (user-mode
 * NAT without networks), the NoCloud `network-config` (v2), dnsmasq's arguments and device
 * names within Linux's 15-byte limit.
 */
import { assertEquals } from "../assert.ts";
import { buildQemuArgs, nicArgs, vmFilePaths } from "../../agent/qemu.ts";
import { networkConfigOf } from "../../agent/cloudinit.ts";
import { dnsmasqArgs, dnsmasqPaths } from "../../agent/net/dnsmasq.ts";
import { tapName, vxlanName } from "../../agent/net/names.ts";
import type { AgentNetworkSpec } from "../../shared/api/network_agent.ts";

const managed: AgentNetworkSpec = {
  name: "lan",
  type: "bridge",
  managed: true,
  bridge_name: "otlan0",
  mtu: 1500,
  subnet: "10.9.0.0/24",
  gateway: "10.9.0.1",
  vni: null,
};
const overlay: AgentNetworkSpec = {
  name: "ovl",
  type: "overlay",
  managed: true,
  bridge_name: "oxb4096",
  mtu: 1450,
  subnet: "10.245.1.0/24",
  gateway: null,
  vni: 4096,
};
const host: AgentNetworkSpec = {
  name: "home",
  type: "bridge",
  managed: false,
  bridge_name: "br0",
  mtu: null,
  subnet: null,
  gateway: null,
  vni: null,
};

Deno.test("net config: QEMU NIC arguments", () => {
  assertEquals(nicArgs([]), ["-nic", "user,model=virtio-net-pci"]);
  assertEquals(nicArgs([{ tap: "oxt12345678900", mac: "52:54:00:aa:bb:cc" }]), [
    "-netdev",
    "tap,id=net0,ifname=oxt12345678900,script=no,downscript=no",
    "-device",
    "virtio-net-pci,netdev=net0,mac=52:54:00:aa:bb:cc",
  ]);
  const files = vmFilePaths("/s/vms", "/r/vms", "11111111-2222-3333-4444-555555555555");
  const args = buildQemuArgs({
    name: "web",
    architecture: "amd64",
    accelerator: "tcg",
    vcpus: 1,
    memoryMb: 256,
    files,
    nics: [{ tap: "oxt11111111220", mac: "52:54:00:00:00:01" }, {
      tap: "oxt11111111221",
      mac: "52:54:00:00:00:02",
    }],
  });
  assertEquals(args.includes("-nic"), false, "no user-mode NIC next to TAP NICs");
  assertEquals(args.filter((a) => a === "-netdev").length, 2);
});

Deno.test("net config: network-config v2 per NIC kind", () => {
  const text = networkConfigOf([
    { index: 1, mac: "52:54:00:00:00:02", address: "10.245.1.5", network: overlay },
    { index: 0, mac: "52:54:00:00:00:01", address: "10.9.0.2", network: managed },
    { index: 2, mac: "52:54:00:00:00:03", address: null, network: host },
  ]);
  assertEquals(
    text,
    [
      "version: 2",
      "ethernets:",
      "  nic0:",
      "    match:",
      '      macaddress: "52:54:00:00:00:01"',
      "    mtu: 1500",
      "    dhcp4: false",
      "    addresses:",
      "      - 10.9.0.2/24",
      "    routes:",
      "      - to: 0.0.0.0/0",
      "        via: 10.9.0.1",
      "    nameservers:",
      "      addresses:",
      "        - 10.9.0.1",
      "  nic1:",
      "    match:",
      '      macaddress: "52:54:00:00:00:02"',
      "    mtu: 1450",
      "    dhcp4: false",
      "    addresses:",
      "      - 10.245.1.5/24",
      "  nic2:",
      "    match:",
      '      macaddress: "52:54:00:00:00:03"',
      "    dhcp4: true",
      "",
    ].join("\n"),
  );
});

Deno.test("net config: dnsmasq serves one bridge with static leases only", () => {
  const p = dnsmasqPaths("/s", "/r", "lan");
  const args = dnsmasqArgs({
    network: "lan",
    bridge: "otlan0",
    subnet: { network: 0x0a090000, prefix: 24 },
    gateway: "10.9.0.1",
    hosts: [
      { mac: "52:54:00:00:00:09", ip: "10.9.0.9", name: "b" },
      { mac: "52:54:00:00:00:02", ip: "10.9.0.2", name: "a" },
    ],
  }, p);
  for (
    const want of [
      "--pid-file=/r/net/lan/dnsmasq.pid",
      "--interface=otlan0",
      "--bind-interfaces",
      "--dhcp-range=10.9.0.0,static,255.255.255.0,12h",
      "--leasefile-ro",
      "--dhcp-option=option:router,10.9.0.1",
      "--log-facility=/s/net/lan/dnsmasq.log",
    ]
  ) assertEquals(args.includes(want), true, want);
  assertEquals(args.filter((a) => a.startsWith("--dhcp-host=")), [
    "--dhcp-host=52:54:00:00:00:02,10.9.0.2,a",
    "--dhcp-host=52:54:00:00:00:09,10.9.0.9,b",
  ]);
});

Deno.test("net config: device names fit IFNAMSIZ", () => {
  const id = "0123abcd-ef45-6789-abcd-ef0123456789";
  assertEquals(tapName(id, 7), "oxt0123abcdef7");
  assertEquals(vxlanName(16_777_215), "oxv16777215");
  for (const n of [tapName(id, 0), vxlanName(16_777_215)]) assertEquals(n.length <= 15, true);
});
