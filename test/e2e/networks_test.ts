/**
 * Networks end to end (issue 8 "Tests"), on one machine: two agent "nodes", each a real
 * `otherix-agent` process in its own network namespace with its own underlay address, joined
 * by a bridge in the root namespace where the control plane and the image server listen.
 *
 * A managed bridge on node 1 and an overlay across both; one VM per node, booted from the
 * offline test image under real QEMU (one boot each, both in this test): the guests configure
 * their NICs from the NoCloud `network-config`, get their IPAM addresses, ping each other
 * across nodes over VXLAN, the first reaches the root namespace through the managed bridge's
 * NAT, and node 1's host pings it on the bridge. The CLI lists and shows the networks. Deleting
 * everything leaves no bridge, VXLAN device, TAP, rule or dnsmasq on either node.
 *
 * @module
 */
import { join } from "node:path";
import { assert, assertEquals, assertMatch, assertStringIncludes } from "../assert.ts";
import {
  freePort,
  pgrep,
  pidAlive,
  type Proc,
  runCli,
  startAgent,
  startApi,
  tempRoot,
  TEST_ADMIN,
  waitFor,
} from "../harness.ts";
import { ensureTestImage, TEST_IMAGE_LOGIN, TEST_IMAGE_SHELL_PROMPT } from "../test_image.ts";
import { must, mustInNs, Namespaces, sh, suffix } from "../agent/net_helpers.ts";

// deno-lint-ignore no-explicit-any
type Json = any;

/** A serial console over the control plane's WebSocket. */
class Console {
  output = "";
  #ws: WebSocket;
  constructor(ws: WebSocket) {
    this.#ws = ws;
    ws.binaryType = "arraybuffer";
    const dec = new TextDecoder();
    ws.onmessage = (e) => {
      this.output += typeof e.data === "string" ? e.data : dec.decode(e.data, { stream: true });
    };
  }
  send(text: string): void {
    this.#ws.send(new TextEncoder().encode(text));
  }
  /** Waits until the output after `from` contains `needle`; returns the index after it. */
  expect(needle: string, from = 0, ms = 120_000): Promise<number> {
    return waitFor(
      `console shows ${JSON.stringify(needle)}`,
      () => {
        const i = this.output.indexOf(needle, from);
        return Promise.resolve(i >= 0 ? i + needle.length : null);
      },
      ms,
      50,
    );
  }
  close(): void {
    this.#ws.close();
  }
}

/** The Otherix devices, rules and dnsmasq processes left in namespace `ns`. */
async function leftovers(ns: string): Promise<string[]> {
  const out: string[] = [];
  const links = JSON.parse(await mustInNs(ns, "ip", ["-j", "-d", "link", "show"]));
  for (const l of links) {
    const kind = l.linkinfo?.info_kind ?? "";
    if (
      String(l.ifname).startsWith("ox") || String(l.ifalias ?? "").startsWith("otherix:") ||
      kind === "tun" || kind === "vxlan" || kind === "bridge"
    ) out.push(`link ${l.ifname} (${kind})`);
  }
  for (const table of ["filter", "nat"]) {
    for (const r of (await mustInNs(ns, "iptables", ["-t", table, "-S"])).split("\n")) {
      if (r.includes("otherix:")) out.push(`rule ${r}`);
    }
  }
  const pids = (await sh("ip", ["netns", "pids", ns])).stdout.trim().split(/\s+/).filter(Boolean);
  for (const pid of pids) {
    const cmd = await Deno.readTextFile(`/proc/${pid}/cmdline`).catch(() => "");
    if (cmd.split("\0")[0].endsWith("dnsmasq")) out.push(`dnsmasq pid ${pid}`);
  }
  return out;
}

Deno.test({
  name: "networks e2e: managed bridge + overlay across two namespaced nodes, real QEMU",
  sanitizeResources: false,
  sanitizeOps: false,
}, async (t) => {
  const s = suffix();
  const nss = new Namespaces();
  const root = await tempRoot("otx-nete2e");
  const procs: Proc[] = [];
  let image: Deno.HttpServer<Deno.NetAddr> | null = null;
  const hostBridge = `otxe${s}`;
  try {
    // Underlay: a bridge in the root namespace (10.88.0.1) with one veth per node.
    await must("ip", ["link", "add", hostBridge, "type", "bridge"]);
    nss.hostLinks.push(hostBridge);
    await must("ip", ["addr", "add", "10.88.0.1/24", "dev", hostBridge]);
    await must("ip", ["link", "set", hostBridge, "up"]);
    const nodes = [
      { name: "node-1", ns: await nss.add(`otxn1${s}`), ip: "10.88.0.2", veth: `ote1${s}` },
      { name: "node-2", ns: await nss.add(`otxn2${s}`), ip: "10.88.0.3", veth: `ote2${s}` },
    ];
    for (const n of nodes) {
      await nss.veth(null, n.veth, null, n.ns, "eth0", `${n.ip}/24`);
      await must("ip", ["link", "set", n.veth, "master", hostBridge]);
    }

    const img = await Deno.readFile((await ensureTestImage()).path);
    image = Deno.serve(
      { hostname: "10.88.0.1", port: 0, onListen() {} },
      () => new Response(img),
    );
    const imageUrl = `http://10.88.0.1:${image.addr.port}/images/otherix-test.img`;
    const agentPort = freePort();
    const api = await startApi({
      root: join(root, "cp"),
      agentPort,
      config: {
        server: { agent_listen: `10.88.0.1:${agentPort}` },
        storage_pools: { allowed_path_prefixes: [`${root}/`] },
        workers: { lease_ttl_seconds: 2, poll_interval_ms: 500 },
      },
    });
    procs.push(api.proc);
    const login = await fetch(`${api.url}/v1/auth/login`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(TEST_ADMIN),
    });
    const token = (await login.json()).access_token;
    const call = async (method: string, path: string, body?: unknown) => {
      const res = await fetch(api.url + path, {
        method,
        headers: {
          authorization: `Bearer ${token}`,
          ...(body === undefined ? {} : { "content-type": "application/json" }),
        },
        body: body === undefined ? undefined : JSON.stringify(body),
      });
      const text = await res.text();
      let json: Json = null;
      try {
        json = JSON.parse(text);
      } catch { /* text */ }
      return { status: res.status, json, text };
    };
    const cliEnv = { HOME: root, OTHERIX_SERVER: api.url, OTHERIX_API_TOKEN: token };

    for (const n of nodes) {
      const join1 = await call("POST", "/v1/nodes/join-tokens", { node_name: n.name });
      const port = freePort();
      const agent = await startAgent({
        root: join(root, n.name),
        cpUrl: `https://10.88.0.1:${agentPort}`,
        caFingerprint: join1.json.ca_fingerprint,
        nodeName: n.name,
        token: join1.json.token,
        port,
        wrap: ["ip", "netns", "exec", n.ns],
        config: {
          server: { listen: `${n.ip}:${port}`, advertise_url: `https://${n.ip}:${port}` },
          qemu: { accelerator: "tcg" },
        },
      });
      procs.push(agent.proc);
      await agent.proc.waitForOutput((o) => o.includes("agent: bootstrap complete"), 60_000);
    }
    await waitFor(
      "both default pools ready",
      async () => {
        const pools = (await call("GET", "/v1/pools")).json.items ?? [];
        return pools.filter((p: Json) => p.status === "ready").length === 2;
      },
      60_000,
      200,
    );

    const mgmtBridge = `otm${s}`;
    await t.step("networks: created through the CLI, listed", async () => {
      const mgmt = await runCli([
        "network",
        "create",
        "mgmt",
        "--type",
        "bridge",
        "--managed",
        "--bridge-name",
        mgmtBridge,
        "--subnet",
        "10.89.0.0/24",
      ], cliEnv);
      assertEquals(mgmt.code, 0, mgmt.stderr);
      assertStringIncludes(mgmt.stdout, "network mgmt created");
      assertStringIncludes(mgmt.stdout, "gateway: 10.89.0.1");
      const ovl = await runCli(
        ["network", "create", "ovl", "--type", "overlay", "--subnet", "10.90.0.0/24"],
        cliEnv,
      );
      assertEquals(ovl.code, 0, ovl.stderr);
      const list = await runCli(["network", "list"], cliEnv);
      assertEquals(list.code, 0, list.stderr);
      const rows = list.stdout.trim().split("\n").map((l) => l.trim().split(/\s+/));
      assertEquals(rows[0], ["NAME", "TYPE", "MANAGED", "BRIDGE", "SUBNET", "VNI", "VMS", "AGE"]);
      assertEquals(rows.slice(1).map((r) => r.slice(0, 7)), [
        ["mgmt", "bridge", "yes", mgmtBridge, "10.89.0.0/24", "-", "0"],
        ["ovl", "overlay", "yes", "oxb4096", "10.90.0.0/24", "4096", "0"],
      ]);
      const yaml = await runCli(["network", "get", "ovl", "-o", "yaml"], cliEnv);
      assertEquals(yaml.code, 0, yaml.stderr);
      assertStringIncludes(yaml.stdout, "kind: Network");
      assertStringIncludes(yaml.stdout, "type: overlay");
      const missing = await runCli(
        ["vm", "create", "nope", "--image-url", imageUrl, "--network", "nope"],
        cliEnv,
      );
      assertEquals(missing.code, 1);
      assertStringIncludes(missing.stderr, "network_not_found");
    });

    let a: Json, b: Json;
    await t.step("one VM per node boots with its IPAM addresses", async () => {
      const create = (name: string, node: string, networks: string[]) =>
        runCli([
          "vm",
          "create",
          name,
          "--image-url",
          imageUrl,
          "--memory-mb",
          "256",
          "--disk-gib",
          "1",
          "--node",
          node,
          ...networks.flatMap((n) => ["--network", n]),
        ], cliEnv);
      const [ra, rb] = await Promise.all([
        create("vm-a", "node-1", ["mgmt", "ovl"]),
        create("vm-b", "node-2", ["ovl"]),
      ]);
      assertEquals([ra.code, rb.code], [0, 0], ra.stderr + rb.stderr);
      const running = (name: string) =>
        waitFor(
          `${name} running`,
          async () => {
            const v = (await call("GET", `/v1/vms/${name}`)).json;
            if (v?.status === "failed") {
              throw new Error(`${name} failed: ${JSON.stringify(v.error)}`);
            }
            return v?.status === "running" ? v : null;
          },
          180_000,
          200,
        );
      [a, b] = await Promise.all([running("vm-a"), running("vm-b")]);
      // The creates raced: either VM may hold the overlay's first address.
      assertEquals(a.nics.map((n: Json) => n.network), ["mgmt", "ovl"]);
      assertEquals(a.nics[0].addresses[0].address, "10.89.0.2");
      assertEquals(b.nics.map((n: Json) => n.network), ["ovl"]);
      assertEquals(
        [a.nics[1].addresses[0].address, b.nics[0].addresses[0].address].sort(),
        ["10.90.0.1", "10.90.0.2"],
      );
      // The guests configured their NICs from network-config (serial console lines).
      const booted = (name: string, needle: string) =>
        waitFor(
          `${name} configured its NICs`,
          async () => {
            const res = await call("GET", `/v1/vms/${name}/console-log?tail_bytes=65536`);
            return res.text.includes(needle) ? res.text : null;
          },
          180_000,
          500,
        );
      const logA = await booted("vm-a", "otherix-test-image: net nic1");
      assertStringIncludes(logA, `otherix-test-image: net nic0 eth0 ${a.nics[0].mac} 10.89.0.2/24`);
      assertStringIncludes(
        logA,
        `otherix-test-image: net nic1 eth1 ${a.nics[1].mac} ${a.nics[1].addresses[0].address}/24`,
      );
      const logB = await booted("vm-b", "otherix-test-image: net nic0");
      assertStringIncludes(
        logB,
        `otherix-test-image: net nic0 eth0 ${b.nics[0].mac} ${b.nics[0].addresses[0].address}/24`,
      );
    });

    await t.step("the nodes: bridge, VXLAN peers, TAPs, dnsmasq", async () => {
      const [n1, n2] = nodes;
      const l1 = JSON.parse(await mustInNs(n1.ns, "ip", ["-j", "-d", "link", "show"]));
      const byName = new Map(l1.map((l: Json) => [l.ifname, l]));
      assertEquals((byName.get(mgmtBridge) as Json).ifalias, "otherix:mgmt");
      const taps = l1.filter((l: Json) => l.linkinfo?.info_kind === "tun");
      assertEquals(taps.map((l: Json) => l.master).sort(), [mgmtBridge, "oxb4096"].sort());
      await waitFor(
        "VXLAN flood entries point at the other node",
        async () => {
          const peers = async (ns: string) =>
            JSON.parse(await mustInNs(ns, "bridge", ["-j", "fdb", "show", "dev", "oxv4096"]))
              .filter((e: Json) => e.mac === "00:00:00:00:00:00").map((e: Json) => e.dst);
          return JSON.stringify(await peers(n1.ns)) === '["10.88.0.3"]' &&
            JSON.stringify(await peers(n2.ns)) === '["10.88.0.2"]';
        },
        30_000,
        200,
      );
      const d = (await leftovers(n1.ns)).filter((x) => x.startsWith("dnsmasq"));
      assertEquals(d.length, 1, "one dnsmasq on node-1");
      assertEquals((await leftovers(n2.ns)).filter((x) => x.startsWith("dnsmasq")), []);
    });

    await t.step("the host pings the VM on the managed bridge", async () => {
      await mustInNs(nodes[0].ns, "busybox", ["ping", "-c", "2", "-W", "5", "10.89.0.2"]);
    });

    await t.step("the VMs ping each other over the overlay; NAT to the uplink", async () => {
      const ticket = await call("POST", "/v1/vms/vm-a/console");
      assertEquals(ticket.status, 201, ticket.text);
      const ws = new WebSocket(api.url.replace(/^http/, "ws") + ticket.json.websocket_path);
      await new Promise((res, rej) => {
        ws.onopen = res;
        ws.onerror = () => rej(new Error("console WebSocket failed"));
      });
      const con = new Console(ws);
      try {
        await waitFor(
          "login prompt",
          async () => {
            con.send("\n");
            await new Promise((r) => setTimeout(r, 500));
            return con.output.includes("login:");
          },
          120_000,
          0,
        );
        con.send(`${TEST_IMAGE_LOGIN}\n`);
        let at = await con.expect(TEST_IMAGE_SHELL_PROMPT);
        // The markers are quoted apart so the echoed command line does not contain them.
        const bAddr = b.nics[0].addresses[0].address;
        con.send(`ping -c 3 -W 5 ${bAddr}; echo "ping""-b=$?"\n`);
        at = await con.expect("ping-b=", at);
        const overlay = con.output.slice(at - 400, at + 4);
        assertMatch(con.output.slice(at, at + 2), /^0/, `ping over the overlay:\n${overlay}`);
        assertStringIncludes(overlay, "3 packets received");
        // 10.88.0.1 (the root namespace) has no route back to 10.89.0.0/24: only a reply to
        // the masqueraded node address arrives.
        con.send('ping -c 2 -W 5 10.88.0.1; echo "ping""-nat=$?"\n');
        at = await con.expect("ping-nat=", at);
        assertMatch(
          con.output.slice(at, at + 2),
          /^0/,
          `ping through NAT:\n${con.output.slice(at - 400)}`,
        );
      } finally {
        con.close();
      }
      const get = await runCli(["network", "get", "ovl"], cliEnv);
      assertStringIncludes(get.stdout, "attached_vms: 2");
      assertStringIncludes(get.stdout, "addresses: used 2/254");
    });

    await t.step("a network in use cannot be deleted", async () => {
      const r = await runCli(["network", "delete", "ovl", "--force"], cliEnv);
      assertEquals(r.code, 1);
      assertStringIncludes(r.stderr, "conflict");
      assertStringIncludes(r.stderr, "vm-a, vm-b");
    });

    await t.step("deleting everything leaves nothing on either node", async () => {
      for (const name of ["vm-a", "vm-b"]) {
        const r = await runCli(["vm", "delete", name, "--force", "--wait"], cliEnv);
        assertEquals(r.code, 0, r.stderr);
      }
      for (const name of ["mgmt", "ovl"]) {
        const r = await runCli(["network", "delete", name, "--force"], cliEnv);
        assertEquals(r.code, 0, r.stderr);
        assertStringIncludes(r.stdout, `network ${name} deleted`);
      }
      for (const n of nodes) {
        await waitFor(
          `${n.name} clean`,
          async () => {
            const left = await leftovers(n.ns);
            return left.length === 0 ? true : null;
          },
          30_000,
          250,
        ).catch(async (e) => {
          throw new Error(`${e.message}: ${(await leftovers(n.ns)).join("; ")}`);
        });
      }
      assertEquals(pgrep("-name", "guest=vm-", root).filter(pidAlive), [], "no QEMU left");
      assert((await call("GET", "/v1/networks")).json.items.length === 0);
    });
  } finally {
    for (const p of procs.reverse()) await p.stop().catch(() => {});
    await image?.shutdown().catch(() => {});
    await nss.cleanup();
    if (!Deno.env.get("OTHERIX_KEEP_TEST_ROOT")) {
      await Deno.remove(root, { recursive: true }).catch(() => {});
    }
  }
});
