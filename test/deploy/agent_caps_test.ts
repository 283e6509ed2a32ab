/**
 * The agent unit's capability set is enough for the agent's networking, and needed: the
 * agent's own network code (agent/net/ NetManager) builds and tears down a managed bridge
 * (bridge, TAP, address, iptables NAT/FORWARD rules, IP forwarding, dnsmasq dropping to
 * `nobody`, stopping it again) with every tool run under exactly the bounding set of
 * deploy/systemd/otherix-agent.service and `NoNewPrivileges` (`setpriv`), in a network
 * namespace standing for the node; without CAP_NET_ADMIN the same fails.
 *
 * @module
 */
import { join } from "node:path";
import { assert, assertEquals, assertStringIncludes } from "../assert.ts";
import { hostRunner, type Runner } from "../../agent/net/exec.ts";
import { NetManager } from "../../agent/net/manager.ts";
import { REPO_ROOT } from "../../scripts/permissions.ts";
import type { AgentNetworkSpec } from "../../shared/api/network_agent.ts";
import { ApiError } from "../../shared/errors.ts";
import { createLogger } from "../../shared/log.ts";
import { mustInNs, Namespaces, suffix } from "../agent/net_helpers.ts";
import { parseUnit } from "./helpers.ts";
import { pidAlive, waitFor } from "../harness.ts";

/** The unit's CapabilityBoundingSet as setpriv names (`net_admin`, …). */
function unitCaps(): string[] {
  const unit = parseUnit(
    Deno.readTextFileSync(join(REPO_ROOT, "deploy/systemd/otherix-agent.service")),
  );
  return unit.get("Service")!.get("CapabilityBoundingSet")!.join(" ").split(/\s+/)
    .map((c) => c.replace(/^CAP_/, "").toLowerCase());
}

/** Runs each tool in namespace `ns` with only `caps` and no new privileges. */
function capped(ns: string, caps: string[]): Runner {
  const bset = ["-all", ...caps.map((c) => `+${c}`)].join(",");
  return (cmd, args) =>
    hostRunner("ip", [
      "netns",
      "exec",
      ns,
      "setpriv",
      "--no-new-privs",
      "--inh-caps=-all",
      `--bounding-set=${bset}`,
      cmd,
      ...args,
    ]);
}

const log = createLogger("caps-test", "error");

Deno.test("agent unit: its capabilities run the agent's networking, without CAP_NET_ADMIN it fails", async (t) => {
  const s = suffix();
  const nss = new Namespaces();
  const root = await Deno.makeTempDir({ prefix: "otx-caps-" });
  const caps = unitCaps();
  assert(caps.includes("net_admin") && caps.includes("kill"), caps.join(","));
  try {
    const node = await nss.add(`otxc${s}`);
    const spec: AgentNetworkSpec = {
      name: "mb",
      type: "bridge",
      managed: true,
      bridge_name: `otc${s}`,
      mtu: 1500,
      subnet: "10.79.5.0/24",
      gateway: "10.79.5.1",
      vni: null,
    };
    const nic = { index: 0, mac: "52:54:00:79:00:01", address: "10.79.5.7", network: spec };

    await t.step(
      "with the unit's set: bridge, TAP, rules, forwarding, dnsmasq, teardown",
      async () => {
        const mgr = new NetManager({
          stateDir: join(root, "ok/state"),
          runDir: join(root, "ok/run"),
          log,
          run: capped(node, caps),
        });
        await mgr.load();
        const vm = crypto.randomUUID();
        const taps = await mgr.plumb(vm, "web", [nic]);
        assertEquals(mgr.list().map((n) => [n.name, n.state]), [["mb", "ready"]]);
        const links = await mustInNs(node, "ip", ["-o", "link", "show"]);
        assertStringIncludes(links, spec.bridge_name);
        assertStringIncludes(links, taps[0]);
        const pid = (await Deno.readTextFile(join(root, "ok/run/net/mb/dnsmasq.pid"))).trim();
        const status = await Deno.readTextFile(`/proc/${pid}/status`);
        assertEquals(/^Uid:\s+(\d+)/m.exec(status)?.[1], "65534", "dnsmasq dropped to nobody");
        await mgr.unplumb(vm);
        assert(!(await mustInNs(node, "ip", ["-o", "link", "show"])).includes(spec.bridge_name));
        // Stopped (it runs as nobody: signalling it takes CAP_KILL).
        await waitFor("dnsmasq gone", () => Promise.resolve(!pidAlive(Number(pid))), 10_000, 50);
        await mgr.close();
      },
    );

    await t.step("without CAP_NET_ADMIN: the same network fails to build", async () => {
      const mgr = new NetManager({
        stateDir: join(root, "no/state"),
        runDir: join(root, "no/run"),
        log,
        run: capped(node, caps.filter((c) => c !== "net_admin")),
        retryMs: 3_600_000,
      });
      await mgr.load();
      const err = await mgr.plumb(crypto.randomUUID(), "web", [nic]).catch((e) => e);
      assert(err instanceof ApiError, String(err));
      assertEquals(err.code, "network_setup_failed");
      await mgr.close();
    });
  } finally {
    await nss.cleanup();
    await Deno.remove(root, { recursive: true }).catch(() => {});
  }
});
