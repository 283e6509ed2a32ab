/**
 * Learnt NIC addresses in the VM view (cp/vms/nic_addresses.ts): a NIC without an IPAM
 * address shows what its agent learnt (by MAC), replacing what it learnt before; IPAM
 * addresses are never replaced.
 */
import { assert, assertEquals } from "../assert.ts";
import { withLearntAddresses } from "../../cp/vms/nic_addresses.ts";
import type { VmNic } from "../../shared/api/networks.ts";

const lan: VmNic = { index: 0, network: "lan", mac: "52:54:00:aa:00:01", addresses: [] };
const managed: VmNic = {
  index: 1,
  network: "demo-net",
  mac: "52:54:00:aa:00:02",
  addresses: [{ address: "10.245.0.10", prefix_length: 24, source: "ipam" }],
};

Deno.test("learnt addresses: non-IPAM NICs take the agent's, by MAC; IPAM stays", () => {
  const nics = [lan, managed];
  assert(withLearntAddresses(nics, undefined) === nics, "nothing learnt: unchanged");
  assert(withLearntAddresses(undefined, []) === undefined);
  const learnt = [
    {
      mac: "52:54:00:aa:00:01",
      address: "192.168.1.50",
      prefix_length: null,
      source: "neighbour" as const,
    },
    {
      mac: "52:54:00:aa:00:02",
      address: "10.245.0.99",
      prefix_length: 24,
      source: "guest_agent" as const,
    },
  ];
  const out = withLearntAddresses(nics, learnt)!;
  assertEquals(out[0].addresses, [{
    address: "192.168.1.50",
    prefix_length: null,
    source: "neighbour",
  }]);
  assert(out[1] === managed, "an IPAM NIC takes nothing learnt");
  assert(withLearntAddresses(out, learnt) === out, "the same report: unchanged");
  const moved = withLearntAddresses(out, [{
    ...learnt[0],
    address: "192.168.1.51",
    source: "guest_agent",
    prefix_length: 24,
  }])!;
  assertEquals(moved[0].addresses, [{
    address: "192.168.1.51",
    prefix_length: 24,
    source: "guest_agent",
  }]);
  assertEquals(withLearntAddresses(moved, [])![0].addresses, [], "no longer seen: dropped");
});
