/**
 * The agent's network plumbing (agent/net/) against the real kernel, in network namespaces:
 * the NetManager runs its real tools (`ip`, `bridge`, `iptables`, `sysctl`, `dnsmasq`,
 * `pgrep`/`pkill`) inside a namespace that stands for a node, and "guests" are veth ends in
 * their own namespaces, joined to the bridges the way a TAP is:
 * - a managed bridge: bridge, gateway address, MTU, NAT/FORWARD rules, IP forwarding; a guest
 *   gets its static lease from dnsmasq over real DHCP and resolves a VM name; a TAP joins it;
 *   an agent restart finds the same dnsmasq and adds nothing twice;
 * - an overlay across two "nodes" joined by an underlay veth: guests on both sides ping each
 *   other through VXLAN; the flood entries follow the peers;
 * - refusals: a missing unmanaged bridge, a foreign link with a managed bridge's name; a failed
 *   network is tried again until it works;
 * - teardown: nothing of Otherix's is left (links, rules, dnsmasq, files).
 */
import {
  assert,
  assertEquals,
  assertMatch,
  assertRejects,
  assertStringIncludes,
} from "../assert.ts";
import { join } from "node:path";
import { NetManager } from "../../agent/net/manager.ts";
import { netnsRunner } from "../../agent/net/exec.ts";
import { tapName } from "../../agent/net/names.ts";
import type { AgentNetworkSpec, AgentNic } from "../../shared/api/network_agent.ts";
import { createLogger } from "../../shared/log.ts";
import { ApiError } from "../../shared/errors.ts";
import { mustInNs, Namespaces, sh, suffix } from "./net_helpers.ts";
import { waitFor } from "../harness.ts";

const log = createLogger("net-test", Deno.env.get("OTHERIX_TEST_VERBOSE") ? "debug" : "error");

/** Links of namespace `ns` by name: kind, master, alias, mtu. */
async function links(ns: string): Promise<Map<string, Record<string, unknown>>> {
  const out = JSON.parse(await mustInNs(ns, "ip", ["-j", "-d", "link", "show"]));
  return new Map(out.map((l: Record<string, unknown>) => [l.ifname as string, l]));
}

/** Joins a "guest" namespace to `bridge` in `node` with a veth whose guest end has `mac`. */
async function guest(
  nss: Namespaces,
  node: string,
  bridge: string,
  name: string,
  mac: string,
  addr: string | null,
): Promise<string> {
  const g = await nss.add(name);
  const host = `${name}h`;
  await nss.veth(node, host, null, g, "eth0", addr);
  await mustInNs(node, "ip", ["link", "set", host, "master", bridge]);
  await mustInNs(g, "ip", ["link", "set", "eth0", "address", mac]);
  return g;
}

const vmId = () => crypto.randomUUID();

/** The dnsmasq processes running in namespace `ns`. */
async function dnsmasqIn(ns: string): Promise<number[]> {
  const pids = (await sh("ip", ["netns", "pids", ns])).stdout.trim().split(/\s+/).filter(Boolean);
  const out: number[] = [];
  for (const pid of pids) {
    const cmd = await Deno.readTextFile(`/proc/${pid}/cmdline`).catch(() => "");
    if (cmd.split("\0")[0].endsWith("dnsmasq")) out.push(Number(pid));
  }
  return out;
}

Deno.test("net: managed bridge with DHCP, DNS and NAT; overlay across two nodes", async (t) => {
  const s = suffix();
  const nss = new Namespaces();
  const root = await Deno.makeTempDir({ prefix: "otx-net-" });
  try {
    const nodeA = await nss.add(`otxa${s}`);
    const nodeB = await nss.add(`otxb${s}`);
    await nss.veth(nodeA, "uplink", "10.78.0.1/24", nodeB, "uplink", "10.78.0.2/24");
    const mgr = (node: string, dir: string) =>
      new NetManager({
        stateDir: join(root, dir, "state"),
        runDir: join(root, dir, "run"),
        log,
        run: netnsRunner(node),
      });
    let a = mgr(nodeA, "a");
    const b = mgr(nodeB, "b");
    await a.load();
    await b.load();

    const mb: AgentNetworkSpec = {
      name: "mb",
      type: "bridge",
      managed: true,
      bridge_name: `otm${s}`,
      mtu: 1400,
      subnet: "10.77.5.0/24",
      gateway: "10.77.5.1",
      vni: null,
    };
    const vm1 = vmId();
    const nic: AgentNic = { index: 0, mac: "52:54:00:12:00:01", address: "10.77.5.7", network: mb };
    let dnsmasqPid = "";

    await t.step("managed bridge: bridge, address, rules, dnsmasq; a TAP joins", async () => {
      const taps = await a.plumb(vm1, "web", [nic]);
      assertEquals(taps, [tapName(vm1, 0)]);
      const l = await links(nodeA);
      const br = l.get(mb.bridge_name)!;
      assertEquals([br.ifalias, br.mtu], ["otherix:mb", 1400]);
      assertEquals((br.linkinfo as { info_kind: string }).info_kind, "bridge");
      const tap = l.get(taps[0])!;
      assertEquals([tap.master, tap.mtu], [mb.bridge_name, 1400]);
      assertStringIncludes(
        await mustInNs(nodeA, "ip", ["-4", "addr", "show", "dev", mb.bridge_name]),
        "10.77.5.1/24",
      );
      assertEquals((await mustInNs(nodeA, "sysctl", ["-n", "net.ipv4.ip_forward"])).trim(), "1");
      const nat = await mustInNs(nodeA, "iptables", ["-t", "nat", "-S", "POSTROUTING"]);
      assertMatch(nat, /-s 10\.77\.5\.0\/24 ! -d 10\.77\.5\.0\/24 .*otherix:mb.* -j MASQUERADE/);
      const fwd = await mustInNs(nodeA, "iptables", ["-S", "FORWARD"]);
      assertEquals(fwd.split("\n").filter((x) => x.includes("otherix:mb")).length, 2);
      dnsmasqPid = (await Deno.readTextFile(join(root, "a/run/net/mb/dnsmasq.pid"))).trim();
      const args = (await Deno.readTextFile(`/proc/${dnsmasqPid}/cmdline`)).split("\0");
      assertEquals(args[0], "dnsmasq");
      assert(args.includes(`--interface=${mb.bridge_name}`), args.join(" "));
      assert(args.includes("--dhcp-host=52:54:00:12:00:01,10.77.5.7,web"), args.join(" "));
      assert(args.includes("--host-record=web,10.77.5.7"), args.join(" "));
      assertEquals(a.list().map((n) => [n.name, n.state, n.vm_ids]), [["mb", "ready", [vm1]]]);
    });

    await t.step("a guest gets its static lease over DHCP and resolves VM names", async () => {
      const g = await guest(nss, nodeA, mb.bridge_name, `otg${s}`, nic.mac, null);
      const script = join(root, "udhcpc.sh");
      await Deno.writeTextFile(
        script,
        '#!/bin/sh\n[ "$1" = bound ] && ip addr add "$ip/$mask" dev "$interface" && ' +
          'echo "lease $ip/$mask router $router dns $dns"\nexit 0\n',
      );
      await Deno.chmod(script, 0o755);
      const dnsmasqLog = () => Deno.readTextFile(join(root, "a/state/net/mb/dnsmasq.log"));
      const lease = await mustInNs(g, "busybox", [
        "udhcpc",
        "-i",
        "eth0",
        "-n",
        "-q",
        "-t",
        "5",
        "-T",
        "1",
        "-s",
        script,
      ]).catch(async (e) => {
        throw new Error(`${e.message}\n--- dnsmasq.log ---\n${await dnsmasqLog()}`);
      });
      assertStringIncludes(lease, "lease 10.77.5.7/24 router 10.77.5.1 dns 10.77.5.1");
      const dns = await mustInNs(g, "busybox", ["nslookup", "web", "10.77.5.1"]);
      assertStringIncludes(dns, "10.77.5.7");
      // The node reaches its guest (what "the host pings a VM" means on this node).
      await mustInNs(nodeA, "busybox", ["ping", "-c", "1", "-W", "2", "10.77.5.7"]);
      // NAT: the guest reaches the other node's underlay address, which has no route back
      // to 10.77.5.0/24: only a masqueraded reply can arrive.
      await mustInNs(g, "ip", ["route", "add", "default", "via", "10.77.5.1"]);
      await mustInNs(g, "busybox", ["ping", "-c", "1", "-W", "2", "10.78.0.2"]);
    });

    await t.step("an agent restart and a VM restart find everything in place", async () => {
      a = mgr(nodeA, "a");
      await a.load();
      a.register(vm1, "web", [nic]);
      await a.converge();
      assertEquals(await dnsmasqIn(nodeA), [Number(dnsmasqPid)]);
      const fwd = await mustInNs(nodeA, "iptables", ["-S", "FORWARD"]);
      assertEquals(fwd.split("\n").filter((x) => x.includes("otherix:mb")).length, 2);
      const nat = await mustInNs(nodeA, "iptables", ["-t", "nat", "-S", "POSTROUTING"]);
      assertEquals(nat.split("\n").filter((x) => x.includes("otherix:mb")).length, 1);
      // The VM's next start (QEMU again) finds its TAP and changes nothing.
      assertEquals(await a.plumb(vm1, "web", [nic]), [tapName(vm1, 0)]);
      assertEquals(await dnsmasqIn(nodeA), [Number(dnsmasqPid)]);
      assertEquals((await links(nodeA)).get(tapName(vm1, 0))!.master, mb.bridge_name);
    });

    const ovl: AgentNetworkSpec = {
      name: "ovl",
      type: "overlay",
      managed: true,
      bridge_name: "oxb5000",
      mtu: 1450,
      subnet: "10.79.0.0/24",
      gateway: null,
      vni: 5000,
    };
    const vmA = vmId();
    const vmB = vmId();
    await t.step("overlay: guests on two nodes ping each other over VXLAN", async () => {
      // A desired network is built for the node's VMs: one (registered) VM per node.
      a.register(vmA, "ga", [{
        index: 0,
        mac: "52:54:00:12:00:0a",
        address: "10.79.0.2",
        network: ovl,
      }]);
      b.register(vmB, "gb", [{
        index: 0,
        mac: "52:54:00:12:00:0b",
        address: "10.79.0.3",
        network: ovl,
      }]);
      await a.setDesired([{ spec: mb, peers: [] }, { spec: ovl, peers: ["10.78.0.2"] }]);
      await b.setDesired([{ spec: ovl, peers: ["10.78.0.1"] }]);
      for (const [node, peer] of [[nodeA, "10.78.0.2"], [nodeB, "10.78.0.1"]]) {
        const l = await links(node);
        assertEquals(l.get("oxv5000")!.master, "oxb5000");
        assertEquals([l.get("oxv5000")!.mtu, l.get("oxb5000")!.ifalias], [1450, "otherix:ovl"]);
        const fdb = JSON.parse(
          await mustInNs(node, "bridge", ["-j", "fdb", "show", "dev", "oxv5000"]),
        );
        assertEquals(
          fdb.filter((e: { mac: string }) => e.mac === "00:00:00:00:00:00").map((
            e: { dst: string },
          ) => e.dst),
          [peer],
        );
      }
      const ga = await guest(nss, nodeA, "oxb5000", `otx${s}`, "52:54:00:12:00:0a", "10.79.0.2/24");
      const gb = await guest(nss, nodeB, "oxb5000", `oty${s}`, "52:54:00:12:00:0b", "10.79.0.3/24");
      await mustInNs(ga, "ip", ["link", "set", "eth0", "mtu", "1450"]);
      await mustInNs(gb, "ip", ["link", "set", "eth0", "mtu", "1450"]);
      await mustInNs(ga, "busybox", ["ping", "-c", "2", "-W", "3", "10.79.0.3"]);
      await mustInNs(gb, "busybox", ["ping", "-c", "1", "-W", "3", "10.79.0.2"]);
      assertEquals(b.list().map((n) => [n.name, n.state, n.peers]), [["ovl", "ready", [
        "10.78.0.1",
      ]]]);
    });

    await t.step("peers follow the desired set; host names resolve", async () => {
      const c = new NetManager({
        stateDir: join(root, "b", "state"),
        runDir: join(root, "b", "run"),
        log,
        run: netnsRunner(nodeB),
        resolve: (h) => Promise.resolve(h === "node-a.lan" ? "10.78.0.1" : null),
      });
      await c.load();
      c.register(vmB, "gb", [{
        index: 0,
        mac: "52:54:00:12:00:0b",
        address: "10.79.0.3",
        network: ovl,
      }]);
      await c.setDesired([{ spec: ovl, peers: ["node-a.lan", "10.78.0.9", "ghost.lan"] }]);
      const fdb = JSON.parse(
        await mustInNs(nodeB, "bridge", ["-j", "fdb", "show", "dev", "oxv5000"]),
      );
      assertEquals(
        fdb.filter((e: { mac: string }) => e.mac === "00:00:00:00:00:00").map((
          e: { dst: string },
        ) => e.dst).sort(),
        ["10.78.0.1", "10.78.0.9"],
      );
      assertEquals(c.list()[0].message, "peers not resolved: ghost.lan");
      await c.setDesired([{ spec: ovl, peers: ["10.78.0.1"] }]);
      const after = JSON.parse(
        await mustInNs(nodeB, "bridge", ["-j", "fdb", "show", "dev", "oxv5000"]),
      );
      assertEquals(
        after.filter((e: { mac: string }) => e.mac === "00:00:00:00:00:00").map((
          e: { dst: string },
        ) => e.dst),
        ["10.78.0.1"],
      );
    });

    await t.step("refusals: a missing host bridge, a foreign link's name", async () => {
      const host: AgentNetworkSpec = {
        name: "host",
        type: "bridge",
        managed: false,
        bridge_name: `nob${s}`,
        mtu: null,
        subnet: null,
        gateway: null,
        vni: null,
      };
      const id = vmId();
      const e = await assertRejects(() =>
        a.plumb(id, "x", [{ index: 0, mac: "52:54:00:12:00:02", address: null, network: host }])
      );
      assert(e instanceof ApiError && e.code === "network_setup_failed", String(e));
      assertStringIncludes(e.message, `bridge nob${s} does not exist on this node`);
      assertEquals((await links(nodeA)).has(tapName(id, 0)), false);
      await a.unplumb(id);
      await mustInNs(nodeA, "ip", ["link", "add", `fb${s}`, "type", "bridge"]);
      const foreign: AgentNetworkSpec = {
        ...mb,
        name: "foreign",
        bridge_name: `fb${s}`,
        subnet: "10.77.6.0/24",
        gateway: "10.77.6.1",
      };
      const f = await assertRejects(() =>
        a.plumb(id, "x", [{
          index: 0,
          mac: "52:54:00:12:00:03",
          address: "10.77.6.2",
          network: foreign,
        }])
      );
      assertStringIncludes((f as Error).message, "is not Otherix's bridge for otherix:foreign");
      await a.unplumb(id);
      assert((await links(nodeA)).has(`fb${s}`), "a foreign bridge is never removed");
      assertEquals(
        (await mustInNs(nodeA, "iptables", ["-t", "nat", "-S"])).includes("otherix:foreign"),
        false,
      );
    });

    await t.step("a failed network is tried again until it works", async () => {
      const c = new NetManager({
        stateDir: join(root, "c", "state"),
        runDir: join(root, "c", "run"),
        log,
        run: netnsRunner(nodeA),
        retryMs: 100,
      });
      await c.load();
      const lan: AgentNetworkSpec = {
        name: "lan",
        type: "bridge",
        managed: false,
        bridge_name: `hb${s}`,
        mtu: null,
        subnet: null,
        gateway: null,
        vni: null,
      };
      await c.setDesired([{ spec: lan, peers: [] }]);
      assertEquals(c.list(), [], "nothing is built for a network no local VM uses");
      const id = vmId();
      c.register(id, "x", [{ index: 0, mac: "52:54:00:12:00:04", address: null, network: lan }]);
      await c.converge();
      assertEquals(c.list().map((n) => n.state), ["failed"]);
      await mustInNs(nodeA, "ip", ["link", "add", `hb${s}`, "type", "bridge"]);
      await waitFor(
        "the host bridge picked up",
        () => Promise.resolve(c.list()[0]?.state === "ready"),
        10_000,
        50,
      );
      await c.unplumb(id);
      assertEquals(c.list(), []);
      await c.close();
      assert((await links(nodeA)).has(`hb${s}`), "a host bridge is never removed");
      await mustInNs(nodeA, "ip", ["link", "del", `hb${s}`]);
    });

    await t.step("teardown: nothing of Otherix's is left", async () => {
      // The VMs go: their networks go with them, whatever the desired set still says.
      await a.unplumb(vm1);
      await a.unplumb(vmA);
      await b.unplumb(vmB);
      for (const node of [nodeA, nodeB]) {
        const l = await links(node);
        const ours = [...l.values()].filter((x) =>
          String(x.ifname).startsWith("ox") || String(x.ifalias ?? "").startsWith("otherix:")
        );
        assertEquals(ours.map((x) => x.ifname), []);
        assertEquals(l.has(`otm${s}`), false);
        for (const table of ["filter", "nat"]) {
          const rules = await mustInNs(node, "iptables", ["-t", table, "-S"]);
          assertEquals(rules.includes("otherix:"), false, rules);
        }
        assertEquals(await dnsmasqIn(node), []);
      }
      assertEquals(a.list(), []);
      assertEquals((await sh("ls", [join(root, "a/state/net")])).stdout.trim().split("\n").sort(), [
        "applied.json",
        "desired.json",
      ]);
    });
  } finally {
    await nss.cleanup();
    if (!Deno.env.get("OTHERIX_KEEP_TEST_ROOT")) {
      await Deno.remove(root, { recursive: true }).catch(() => {});
    }
  }
});
