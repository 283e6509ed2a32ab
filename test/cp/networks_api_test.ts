// deno-lint-ignore-file no-explicit-any -- JSON responses are inspected dynamically
/**
 * Networks on a real control plane with scripted agents holding real certificates:
 * validation (stable codes, nothing changed), server-derived values, overlapping subnets
 * (also under concurrent creates), IPAM in the VM's create transaction (never a duplicate
 * under parallel creates, exhaustion, release on delete), stable MACs, the NICs the agent
 * receives, deleting a network in use, and the desired sets the network controller pushes.
 */
import { assert, assertEquals, assertMatch, assertStringIncludes } from "../assert.ts";
import { keys } from "../../cp/repo/records.ts";
import { macFor, type NetworkAllocation } from "../../cp/networks/ipam.ts";
import { apiFor, LogCapture, startTestCp, until } from "./fixtures.ts";
import { NetFakeAgent, vmBody } from "./networks_helpers.ts";

Deno.test("networks: API, IPAM and desired sets", async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "otx-net-" });
  const capture = new LogCapture();
  const cp = await startTestCp(dir, capture, "", 60);
  const a = new NetFakeAgent(cp, "node-a");
  const b = new NetFakeAgent(cp, "node-b");
  try {
    for (const agent of [a, b]) {
      await agent.start();
      assertEquals((await agent.fake.heartbeat()).status, 200);
    }
    // node-b is known by host name: its peers entry must say so.
    assertEquals(
      (await b.fake.heartbeat({ endpoint: b.fake.endpoint.replace("127.0.0.1", "localhost") }))
        .status,
      200,
    );
    const api = await apiFor(cp);
    const list = async () => (await api("GET", "/v1/networks")).json.items;

    await t.step("bad input: stable codes, nothing created", async () => {
      const cases: [string, any, string][] = [
        ["unknown type", { name: "x", type: "vlan", bridge_name: "br0" }, "type"],
        ["bad CIDR", { name: "x", type: "overlay", subnet: "10.0.0.0/33" }, "subnet"],
        ["host bits", { name: "x", type: "overlay", subnet: "10.0.0.1/24" }, "subnet"],
        ["/31", { name: "x", type: "overlay", subnet: "10.0.0.0/31" }, "subnet"],
        ["loopback", { name: "x", type: "overlay", subnet: "127.1.0.0/16" }, "subnet"],
        ["not an address", { name: "x", type: "overlay", subnet: "10.0.300.0/24" }, "subnet"],
        ["MTU too small", { name: "x", type: "bridge", bridge_name: "br0", mtu: 100 }, "mtu"],
        ["MTU too big", { name: "x", type: "bridge", bridge_name: "br0", mtu: 65000 }, "mtu"],
        ["MTU not integer", { name: "x", type: "bridge", bridge_name: "br0", mtu: 1500.5 }, "mtu"],
        ["overlay bridge", { name: "x", type: "overlay", bridge_name: "br9" }, "bridge_name"],
        ["overlay mtu", { name: "x", type: "overlay", mtu: 1400 }, "mtu"],
        ["no bridge name", { name: "x", type: "bridge", managed: true }, "bridge_name"],
        ["reserved bridge", { name: "x", type: "bridge", bridge_name: "oxb1" }, "bridge_name"],
        [
          "long bridge",
          { name: "x", type: "bridge", bridge_name: "a234567890123456" },
          "bridge_name",
        ],
        ["unmanaged subnet", {
          name: "x",
          type: "bridge",
          bridge_name: "br0",
          subnet: "10.1.0.0/24",
        }, "subnet"],
        ["gateway outside", {
          name: "x",
          type: "bridge",
          managed: true,
          bridge_name: "otx0",
          subnet: "10.1.0.0/24",
          gateway: "10.2.0.1",
        }, "gateway"],
        ["unknown field", { name: "x", type: "overlay", vlan: 5 }, ""],
        ["bad name", { name: "Net_1", type: "overlay" }, "name"],
      ];
      for (const [what, body, field] of cases) {
        const r = await api("POST", "/v1/networks", body);
        assertEquals(r.status, 400, `${what}: ${r.text}`);
        assertEquals(r.json.error.code, "validation_failed", what);
        if (field) {
          assert(
            r.json.error.details.fields.some((f: any) => f.path === field),
            `${what}: ${r.text}`,
          );
        }
      }
      assertEquals(await list(), []);
      assertEquals(await cp.ctx.store.get(keys.networkRegistry), null);
    });

    await t.step("create: server-derived gateway, MTU, subnet, VNI, bridge", async () => {
      const lan = await api("POST", "/v1/networks", {
        name: "lan",
        type: "bridge",
        managed: true,
        bridge_name: "otlan0",
        subnet: "10.10.0.0/24",
      });
      assertEquals(lan.status, 201, lan.text);
      assertEquals(
        [lan.json.gateway, lan.json.mtu, lan.json.vni, lan.json.addresses],
        ["10.10.0.1", 1500, null, { total: 253, used: 0 }],
      );
      const ovl = await api("POST", "/v1/networks", { name: "ovl", type: "overlay" });
      assertEquals(ovl.status, 201, ovl.text);
      assertEquals(
        [ovl.json.subnet, ovl.json.vni, ovl.json.bridge_name, ovl.json.mtu, ovl.json.gateway],
        ["10.245.0.0/24", 4096, "oxb4096", 1450, null],
      );
      assertEquals(ovl.json.addresses, { total: 254, used: 0 });
      const ovl2 = await api("POST", "/v1/networks", { name: "ovl2", type: "overlay" });
      assertEquals([ovl2.json.subnet, ovl2.json.vni], ["10.245.1.0/24", 4097]);
      const host = await api("POST", "/v1/networks", {
        name: "host-lan",
        type: "bridge",
        bridge_name: "br0",
      });
      assertEquals(host.status, 201, host.text);
      assertEquals([host.json.managed, host.json.subnet, host.json.mtu, host.json.addresses], [
        false,
        null,
        null,
        null,
      ]);
      const got = await api("GET", "/v1/networks/ovl");
      assertEquals(got.json, ovl.json);
      assertEquals((await list()).map((n: any) => n.name), ["host-lan", "lan", "ovl", "ovl2"]);
      assertEquals((await api("GET", "/v1/networks/nope")).json.error.code, "network_not_found");
    });

    await t.step("conflicts: overlap, bridge, name; concurrent overlapping creates", async () => {
      const overlap = await api("POST", "/v1/networks", {
        name: "lan2",
        type: "overlay",
        subnet: "10.10.0.128/25",
      });
      assertEquals(overlap.status, 409, overlap.text);
      assertEquals(overlap.json.error.code, "network_subnet_overlap");
      assertEquals(overlap.json.error.details, {
        subnet: "10.10.0.128/25",
        network: "lan",
        network_subnet: "10.10.0.0/24",
      });
      const bridge = await api("POST", "/v1/networks", {
        name: "lan3",
        type: "bridge",
        bridge_name: "otlan0",
      });
      assertEquals([bridge.status, bridge.json.error.code], [409, "conflict"]);
      const dup = await api("POST", "/v1/networks", { name: "ovl", type: "overlay" });
      assertEquals([dup.status, dup.json.error.code], [409, "network_already_exists"]);
      const racing = await Promise.all([
        api("POST", "/v1/networks", { name: "big", type: "overlay", subnet: "10.20.0.0/16" }),
        api("POST", "/v1/networks", { name: "small", type: "overlay", subnet: "10.20.5.0/24" }),
      ]);
      assertEquals(
        racing.map((r) => r.status).sort(),
        [201, 409],
        racing.map((r) => r.text).join(),
      );
      const loser = racing.find((r) => r.status === 409)!;
      assertEquals(loser.json.error.code, "network_subnet_overlap");
      const winner = racing.find((r) => r.status === 201)!.json.name;
      assertEquals((await api("DELETE", `/v1/networks/${winner}`)).status, 200);
      assertEquals((await list()).length, 4);
    });

    await t.step("a VM naming a missing network: 404, nothing recorded", async () => {
      const r = await api("POST", "/v1/vms", vmBody("lost", { networks: ["lan", "nope"] }));
      assertEquals(r.status, 404, r.text);
      assertEquals(r.json.error.code, "network_not_found");
      assertEquals(r.json.error.details, { network: "nope" });
      assertEquals((await api("GET", "/v1/vms/lost")).status, 404);
      const alloc = await cp.ctx.store.get<NetworkAllocation>(keys.networkAllocation("lan"));
      assertEquals(alloc!.value.vms, {});
      const bad = await api("POST", "/v1/vms", vmBody("x", { networks: [] }));
      assertEquals([bad.status, bad.json.error.code], [400, "validation_failed"]);
    });

    let web: any;
    await t.step("a VM on two networks: addresses, MACs, the agent's NICs", async () => {
      const r = await api(
        "POST",
        "/v1/vms",
        vmBody("web", { networks: ["lan", "ovl"], node: "node-a" }),
      );
      assertEquals(r.status, 202, r.text);
      web = await until("web running", async () => {
        const v = (await api("GET", "/v1/vms/web")).json;
        return v.status === "running" ? v : null;
      });
      assertEquals(web.nics.map((n: any) => [n.index, n.network, n.addresses]), [
        [0, "lan", [{ address: "10.10.0.2", prefix_length: 24, source: "ipam" }]],
        [1, "ovl", [{ address: "10.245.0.1", prefix_length: 24, source: "ipam" }]],
      ]);
      assertEquals(web.nics.map((n: any) => n.mac), [macFor(web.id, 0), macFor(web.id, 1)]);
      for (const n of web.nics) assertMatch(n.mac, /^52:54:00(:[0-9a-f]{2}){3}$/);
      const sent = a.creates.find((c) => c.vm.name === "web")!;
      assertEquals(sent.nics!.map((n) => [n.index, n.mac, n.address, n.network.bridge_name]), [
        [0, web.nics[0].mac, "10.10.0.2", "otlan0"],
        [1, web.nics[1].mac, "10.245.0.1", "oxb4096"],
      ]);
      assertEquals(sent.nics![0].network.gateway, "10.10.0.1");
      assertEquals(sent.nics![1].network.vni, 4096);
      const lan = (await api("GET", "/v1/networks/lan")).json;
      assertEquals([lan.attached_vms, lan.addresses.used], [1, 1]);
      const plain = await api("POST", "/v1/vms", vmBody("plain", { node: "node-a" }));
      assertEquals(plain.status, 202);
      await until("plain created", () => a.creates.find((c) => c.vm.name === "plain"));
      assertEquals(a.creates.find((c) => c.vm.name === "plain")!.nics, undefined);
      assertEquals((await api("GET", "/v1/vms/plain")).json.nics, []);
    });

    await t.step("desired sets: networks of the node's VMs, overlay peers", async () => {
      await until(
        "node-a told about lan and ovl",
        () => a.desired?.networks.map((n) => n.spec.name).join() === "lan,ovl",
      );
      assertEquals(a.desired!.networks.find((n) => n.spec.name === "ovl")!.peers, []);
      assertEquals(b.desired?.networks ?? [], []);
      const r = await api("POST", "/v1/vms", vmBody("db", { networks: ["ovl"], node: "node-b" }));
      assertEquals(r.status, 202, r.text);
      await until(
        "node-a peers with node-b (by host name)",
        () =>
          JSON.stringify(a.desired?.networks.find((n) => n.spec.name === "ovl")?.peers) ===
            '["localhost"]',
      );
      await until(
        "node-b peers with node-a",
        () =>
          JSON.stringify(b.desired?.networks.find((n) => n.spec.name === "ovl")?.peers) ===
            '["127.0.0.1"]',
      );
      const db = (await api("GET", "/v1/vms/db")).json;
      assertEquals(db.nics[0].addresses[0].address, "10.245.0.2");
    });

    await t.step("delete a network in use: 409 conflict naming the VMs", async () => {
      const r = await api("DELETE", "/v1/networks/ovl");
      assertEquals(r.status, 409, r.text);
      assertEquals(r.json.error.code, "conflict");
      assertEquals(r.json.error.details, { network: "ovl", vm_count: 2, vms: ["db", "web"] });
      assertStringIncludes(r.json.error.message, "db, web");
      assertEquals((await api("GET", "/v1/networks/ovl")).status, 200);
    });

    await t.step("deleting VMs releases addresses; peers and sets follow", async () => {
      for (const name of ["db", "web", "plain"]) {
        assertEquals((await api("DELETE", `/v1/vms/${name}?force=true`)).status, 202);
      }
      for (const name of ["db", "web", "plain"]) {
        await until(
          `${name} gone`,
          async () => (await api("GET", `/v1/vms/${name}`)).status === 404,
        );
      }
      for (const n of ["lan", "ovl"]) {
        const alloc = await cp.ctx.store.get<NetworkAllocation>(keys.networkAllocation(n));
        assertEquals([alloc!.value.vms, alloc!.value.addresses, alloc!.value.macs], [{}, {}, {}]);
      }
      await until("node-a told it needs nothing", () => a.desired?.networks.length === 0);
      await until("node-b told it needs nothing", () => b.desired?.networks.length === 0);
      assertEquals((await api("DELETE", "/v1/networks/ovl")).status, 200);
      assertEquals((await api("GET", "/v1/networks/ovl")).status, 404);
      assertEquals(await cp.ctx.store.get(keys.networkAllocation("ovl")), null);
    });

    await t.step(
      "a network delete racing VM creates: never a VM on a deleted network",
      async () => {
        for (let round = 0; round < 5; round++) {
          const name = `race-${round}`;
          const made = await api("POST", "/v1/networks", { name, type: "overlay" });
          assertEquals(made.status, 201, made.text);
          const [vm, del] = await Promise.all([
            api("POST", "/v1/vms", vmBody(`${name}-vm`, { networks: [name] })),
            api("DELETE", `/v1/networks/${name}`),
          ]);
          if (del.status === 200) {
            assertEquals([vm.status, vm.json.error.code], [404, "network_not_found"], vm.text);
            assertEquals((await api("GET", `/v1/vms/${name}-vm`)).status, 404);
          } else {
            assertEquals([del.status, del.json.error.code, vm.status], [409, "conflict", 202]);
            assertEquals(del.json.error.details.vms, [`${name}-vm`]);
            assertEquals((await api("DELETE", `/v1/vms/${name}-vm?force=true`)).status, 202);
            await until(
              "vm gone",
              async () => (await api("GET", `/v1/vms/${name}-vm`)).status === 404,
            );
            assertEquals((await api("DELETE", `/v1/networks/${name}`)).status, 200);
          }
        }
      },
    );

    await t.step("parallel creates never share an address; exhaustion is 409", async () => {
      const small = await api("POST", "/v1/networks", {
        name: "tiny",
        type: "bridge",
        managed: true,
        bridge_name: "ottiny0",
        subnet: "10.30.0.0/28", // 16 - network - broadcast - gateway = 13 addresses
      });
      assertEquals(small.status, 201, small.text);
      assertEquals(small.json.addresses.total, 13);
      const results = await Promise.all(
        Array.from(
          { length: 16 },
          (_, i) => api("POST", "/v1/vms", vmBody(`p-${i}`, { networks: ["tiny"] })),
        ),
      );
      const ok = results.filter((r) => r.status === 202);
      const full = results.filter((r) => r.status === 409);
      assertEquals([ok.length, full.length], [13, 3], results.map((r) => r.text).join("\n"));
      for (const r of full) {
        assertEquals(r.json.error.code, "network_addresses_exhausted");
        assertEquals(r.json.error.details, { network: "tiny", subnet: "10.30.0.0/28" });
      }
      const vms = (await api("GET", "/v1/vms")).json.items.filter((v: any) =>
        v.name.startsWith("p-")
      );
      assertEquals(vms.length, 13);
      const addrs = vms.map((v: any) => v.nics[0].addresses[0].address).sort();
      assertEquals(new Set(addrs).size, 13);
      assertEquals(
        addrs,
        Array.from({ length: 13 }, (_, i) => `10.30.0.${i + 2}`).sort(),
        "every host address but the gateway, once",
      );
      assertEquals(new Set(vms.map((v: any) => v.nics[0].mac)).size, 13);
      const alloc = await cp.ctx.store.get<NetworkAllocation>(keys.networkAllocation("tiny"));
      assertEquals(Object.keys(alloc!.value.addresses).length, 13);
      assertEquals(Object.keys(alloc!.value.vms).length, 13);
      // Release one: the next create gets exactly that address.
      const freed = vms[0].nics[0].addresses[0].address;
      assertEquals((await api("DELETE", `/v1/vms/${vms[0].name}?force=true`)).status, 202);
      await until("freed", async () => (await api("GET", `/v1/vms/${vms[0].name}`)).status === 404);
      const again = await api("POST", "/v1/vms", vmBody("p-again", { networks: ["tiny"] }));
      assertEquals(again.status, 202, again.text);
      const v = (await api("GET", "/v1/vms/p-again")).json;
      assertEquals(v.nics[0].addresses[0].address, freed);
    });
  } finally {
    await a.close();
    await b.close();
    await cp.stop();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
});
