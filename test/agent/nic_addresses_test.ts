/**
 * Learning the addresses of NICs Otherix did not address (agent/nic_addresses.ts): the real
 * neighbour table of a network namespace whose "guest" end (a veth with the NIC's MAC) was
 * talked to, a QEMU-guest-agent speaker on a unix socket (the protocol: guest-sync, then
 * guest-network-get-interfaces), and the watcher's preference (guest agent, else neighbour
 * table; IPAM NICs left alone). Needs root (network namespaces).
 */
import { join } from "node:path";
import { assert, assertEquals, assertMatch } from "../assert.ts";
import {
  guestAgentAddresses,
  NicAddressWatcher,
  parseNeighbours,
  readNeighbours,
} from "../../agent/nic_addresses.ts";
import { hostRunner, netnsRunner } from "../../agent/net/exec.ts";
import { createLogger } from "../../shared/log.ts";

const MAC = "52:54:00:12:34:56";
const log = createLogger("test", "error");

async function sh(cmd: string, args: string[]): Promise<string> {
  const r = await hostRunner(cmd, args);
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(" ")}: ${r.stderr}`);
  return r.stdout;
}

Deno.test("neighbour table: the guest end's MAC resolves to its address (real netns)", async () => {
  const tag = crypto.randomUUID().slice(0, 6);
  const [host, guest] = [`otna-h-${tag}`, `otna-g-${tag}`];
  await sh("ip", ["netns", "add", host]);
  await sh("ip", ["netns", "add", guest]);
  try {
    await sh("ip", [
      "-n",
      host,
      "link",
      "add",
      "h0",
      "type",
      "veth",
      "peer",
      "name",
      "g0",
      "netns",
      guest,
    ]);
    await sh("ip", ["-n", guest, "link", "set", "g0", "address", MAC]);
    await sh("ip", ["-n", host, "addr", "add", "10.77.0.1/24", "dev", "h0"]);
    await sh("ip", ["-n", guest, "addr", "add", "10.77.0.2/24", "dev", "g0"]);
    await sh("ip", ["-n", host, "link", "set", "h0", "up"]);
    await sh("ip", ["-n", guest, "link", "set", "g0", "up"]);
    // The host talks to the guest once (a TCP SYN; refused is fine): ARP fills the table.
    await hostRunner("ip", [
      "netns",
      "exec",
      host,
      "bash",
      "-c",
      "timeout 2 bash -c 'echo > /dev/tcp/10.77.0.2/9' || true",
    ]);
    const table = await readNeighbours(netnsRunner(host));
    const entry = table.find((n) => n.mac === MAC);
    assert(entry, JSON.stringify(table));
    assertEquals([entry.address, entry.dev], ["10.77.0.2", "h0"]);

    const changes: string[] = [];
    const w = new NicAddressWatcher({
      log,
      onChange: (id) => changes.push(id),
      neighbours: () => readNeighbours(netnsRunner(host)),
    });
    w.watch("vm-1", [{ mac: MAC.toUpperCase(), ipam: false }], null);
    w.watch("vm-2", [{ mac: MAC, ipam: true }], null);
    await w.poll();
    assertEquals(w.addresses("vm-1"), [
      { mac: MAC, address: "10.77.0.2", prefix_length: null, source: "neighbour" },
    ]);
    assertEquals(w.addresses("vm-2"), [], "an IPAM NIC is not looked up");
    assertEquals(changes, ["vm-1"]);
    await w.poll();
    assertEquals(changes, ["vm-1"], "the same addresses: no change announced");
    w.forget("vm-1");
    assertEquals([w.addresses("vm-1"), changes], [undefined, ["vm-1", "vm-1"]]);
  } finally {
    await hostRunner("ip", ["netns", "del", host]);
    await hostRunner("ip", ["netns", "del", guest]);
  }
});

Deno.test("neighbour table output: entries without a link-layer address or dead are left out", () => {
  const json = JSON.stringify([
    { dst: "192.0.2.1", dev: "eth0", lladdr: "02:FC:00:00:00:05", state: ["REACHABLE"] },
    { dst: "192.0.2.9", dev: "eth0", state: ["FAILED"] },
    { dst: "192.0.2.8", dev: "eth0", lladdr: "02:fc:00:00:00:08", state: ["INCOMPLETE"] },
    { dst: "fe80::1", dev: "eth0", lladdr: "02:fc:00:00:00:05", state: ["STALE"] },
  ]);
  assertEquals(parseNeighbours(json), [
    { address: "192.0.2.1", mac: "02:fc:00:00:00:05", dev: "eth0", state: ["REACHABLE"] },
  ]);
  assertEquals(parseNeighbours(""), []);
});

/** A guest agent on a unix socket answering like qemu-ga (or never, when `silent`). */
function fakeGuestAgent(path: string, silent = false): { close(): void; seen: string[] } {
  const listener = Deno.listen({ transport: "unix", path });
  const seen: string[] = [];
  const conns: Deno.Conn[] = [];
  (async () => {
    for await (const conn of listener) {
      conns.push(conn);
      (async () => {
        const dec = new TextDecoder();
        let buf = "";
        const p = new Uint8Array(4096);
        for (;;) {
          const n = await conn.read(p).catch(() => null);
          if (n === null) return;
          buf += dec.decode(p.subarray(0, n));
          let nl;
          while ((nl = buf.indexOf("\n")) >= 0) {
            const cmd = JSON.parse(buf.slice(0, nl));
            buf = buf.slice(nl + 1);
            seen.push(cmd.execute);
            if (silent) continue;
            const reply = cmd.execute === "guest-sync" ? { return: cmd.arguments.id } : {
              return: [
                { name: "lo", "hardware-address": "00:00:00:00:00:00", "ip-addresses": [] },
                {
                  name: "eth0",
                  "hardware-address": MAC,
                  "ip-addresses": [
                    { "ip-address-type": "ipv4", "ip-address": "192.168.1.50", prefix: 24 },
                    {
                      "ip-address-type": "ipv6",
                      "ip-address": "fe80::5054:ff:fe12:3456",
                      prefix: 64,
                    },
                  ],
                },
              ],
            };
            // A stale reply first: guest-sync's id tells them apart.
            if (cmd.execute === "guest-sync") {
              await conn.write(new TextEncoder().encode('{"return": 1}\n'));
            }
            await conn.write(
              new Uint8Array([0xff, ...new TextEncoder().encode(JSON.stringify(reply) + "\n")]),
            );
          }
        }
      })();
    }
  })().catch(() => {});
  return {
    seen,
    close: () => {
      listener.close();
      for (const c of conns) c.close();
    },
  };
}

Deno.test("guest agent: its IPv4 addresses by MAC; a silent one times out; preferred over the table", async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "otx-qga-" });
  try {
    await t.step("guest-sync, then guest-network-get-interfaces", async () => {
      const qga = fakeGuestAgent(join(dir, "qga.sock"));
      try {
        const got = await guestAgentAddresses(join(dir, "qga.sock"));
        assertEquals([...got], [
          ["00:00:00:00:00:00", []],
          [MAC, [{ address: "192.168.1.50", prefix: 24 }]],
        ]);
        assertEquals(qga.seen, ["guest-sync", "guest-network-get-interfaces"]);
      } finally {
        qga.close();
      }
    });

    await t.step("a guest without an agent: no answer in time", async () => {
      const qga = fakeGuestAgent(join(dir, "silent.sock"), true);
      try {
        const started = performance.now();
        let err: unknown;
        try {
          await guestAgentAddresses(join(dir, "silent.sock"), 200);
        } catch (e) {
          err = e;
        }
        assertMatch(String(err), /did not answer within 200 ms/);
        assert(performance.now() - started < 2000);
      } finally {
        qga.close();
      }
    });

    await t.step("the watcher prefers the guest agent over the neighbour table", async () => {
      const qga = fakeGuestAgent(join(dir, "pref.sock"));
      try {
        const w = new NicAddressWatcher({
          log,
          onChange: () => {},
          neighbours: () =>
            Promise.resolve([{ address: "192.168.1.77", mac: MAC, dev: "br0", state: ["STALE"] }]),
        });
        w.watch("vm", [{ mac: MAC, ipam: false }], join(dir, "pref.sock"));
        await w.poll();
        assertEquals(w.addresses("vm"), [
          { mac: MAC, address: "192.168.1.50", prefix_length: 24, source: "guest_agent" },
        ]);
        w.watch("vm", [{ mac: MAC, ipam: false }], join(dir, "none.sock"));
        await w.poll();
        assertEquals(w.addresses("vm")?.map((a) => [a.address, a.source]), [[
          "192.168.1.77",
          "neighbour",
        ]]);
      } finally {
        qga.close();
      }
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
