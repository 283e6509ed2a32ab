/**
 * Agents fail over between control-plane replicas (issue 11), with real processes: a real
 * `otherix-api` and a real `otherix-agent` under their sandboxes. The agent's
 * `bootstrap.cp_url` is TCP proxy A in front of the control plane's agent port; the control
 * plane advertises a second path, proxy B on `127.0.0.2:<agent port>` (`server.advertise_host:
 * 127.0.0.2`, in the replica certificate through `cp_cert.additional_sans`). The agent learns B
 * from heartbeats and persists it; proxy A dies and heartbeats carry on through B without a
 * lost beat (the node stays `ready`); an agent restarted while A is still down reaches B from
 * its persisted list. (Reports and renewal use the same failover call: cp_failover_test.ts.)
 */
import { join } from "node:path";
import { assert, assertEquals } from "../assert.ts";
import { CP_ENDPOINTS_FILE } from "../../agent/cp_endpoints.ts";
import {
  type AgentHandle,
  freePort,
  startAgent,
  startApi,
  tempRoot,
  TEST_ADMIN,
  waitFor,
} from "../harness.ts";
import { startTcpProxy } from "./tcp_proxy.ts";

const FAILOVER = "control plane unreachable; trying the next replica";

/** The agent's JSON log lines from index `from` on. */
function lines(agent: AgentHandle, from = 0): Record<string, unknown>[] {
  return agent.proc.output.split("\n").filter((l) => l.startsWith("{")).slice(from)
    .map((l) => JSON.parse(l));
}

Deno.test("failover: a real agent moves to a learnt replica when its cp_url dies", async (t) => {
  const root = await tempRoot("otx-fo");
  const agentPort = freePort();
  const api = await startApi({
    root: join(root, "cp"),
    agentPort,
    config: {
      server: { advertise_host: "127.0.0.2" },
      cp_cert: { additional_sans: ["127.0.0.2"] },
      // Fast beats; a node missing 3 s of them would turn `unreachable`.
      nodes: { heartbeat_interval_seconds: 1, stale_threshold_seconds: 3 },
    },
  });
  const target = { hostname: "127.0.0.1", port: agentPort };
  const proxyA = startTcpProxy(target);
  const proxyB = startTcpProxy(target, { hostname: "127.0.0.2", port: agentPort });
  let agent: AgentHandle | undefined;

  const login = await (await fetch(`${api.url}/v1/auth/login`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(TEST_ADMIN),
  })).json();
  const call = async (method: string, path: string, body?: unknown) => {
    const res = await fetch(api.url + path, {
      method,
      headers: {
        authorization: `Bearer ${login.access_token}`,
        ...(body ? { "content-type": "application/json" } : {}),
      },
      body: body ? JSON.stringify(body) : undefined,
    });
    return { status: res.status, json: await res.json() };
  };
  const node = async () => (await call("GET", "/v1/nodes/node-1")).json;
  /** Waits until node-1 heartbeated after `since` (ms); it must be `ready` at every look. */
  const beatsAfter = async (since: number, what: string) => {
    const seen = new Set<string>();
    await waitFor(
      what,
      async () => {
        const n = await node();
        seen.add(n.status);
        return Date.parse(n.last_heartbeat_at) > since;
      },
      30_000,
      200,
    );
    assertEquals([...seen], ["ready"], "node-1 stayed ready");
  };

  const join1 = await call("POST", "/v1/nodes/join-tokens", { node_name: "node-1" });
  assertEquals(join1.status, 201, JSON.stringify(join1.json));
  const agentRoot = join(root, "agent");
  const stateFile = join(agentRoot, "var/lib/otherix", CP_ENDPOINTS_FILE);
  const start = (token?: string) =>
    startAgent({
      root: agentRoot,
      cpUrl: proxyA.url,
      caFingerprint: join1.json.ca_fingerprint,
      nodeName: "node-1",
      token,
      config: { heartbeat: { interval_seconds: 1 } },
    });

  try {
    await t.step("the agent joins through A and learns B from heartbeats", async () => {
      agent = await start(join1.json.token);
      await agent.proc.waitForOutput((o) => o.includes("agent: bootstrap complete"), 60_000);
      const persisted = await waitFor(
        "the persisted replica list",
        async () => {
          const text = await Deno.readTextFile(stateFile);
          const list = JSON.parse(text).control_planes as string[];
          return list.length === 2 ? list : null;
        },
        30_000,
        100,
      );
      assertEquals(persisted, [proxyA.url, proxyB.url]);
      assertEquals((await Deno.stat(stateFile)).mode! & 0o777, 0o600);
      await beatsAfter(Date.now(), "a heartbeat through A");
      assertEquals(proxyB.accepted, 0, "B unused while A works");
    });

    await t.step("A dies: heartbeats continue through B, the node stays ready", async () => {
      const from = lines(agent!).length;
      await proxyA.kill();
      const killedAt = Date.now();
      await agent!.proc.waitForOutput((o) => o.includes(FAILOVER), 15_000);
      // Three more beats, each checked `ready` on the way.
      await beatsAfter(killedAt + 3_000, "heartbeats through B");
      assert(proxyB.accepted >= 1);
      const after = lines(agent!, from);
      const failovers = after.filter((l) => String(l.msg).endsWith(FAILOVER));
      assertEquals(failovers.map((l) => [l.level, l.from, l.to]), [
        ["warn", proxyA.url, proxyB.url],
      ], "one Warn line for the one failover");
      assert(
        /^(heartbeat|report|renewal): /.test(String(failovers[0].msg)),
        String(failovers[0].msg),
      );
      assertEquals(after.filter((l) => l.msg === "heartbeat: failed"), [], "no beat was lost");
      assert(
        after.some((l) => String(l.msg).endsWith("control plane reachable again")),
        "an Info line when healthy again",
      );
    });

    await t.step("a restarted agent with A still down reaches B from its list", async () => {
      await agent!.proc.stop();
      const restartedAt = Date.now();
      agent = await start();
      await agent.proc.waitForOutput((o) => o.includes("heartbeat: ok"), 60_000);
      const log = lines(agent);
      const ok = log.find((l) => l.msg === "heartbeat: ok")!;
      assertEquals(ok.cp_url, proxyB.url);
      assertEquals(
        log.filter((l) => String(l.msg).endsWith(FAILOVER)).map((l) => [l.from, l.to]),
        [[proxyA.url, proxyB.url]],
      );
      await beatsAfter(restartedAt, "a heartbeat from the restarted agent");
    });
  } finally {
    await agent?.proc.stop();
    await api.proc.stop();
    await proxyA.kill();
    await proxyB.kill();
    await Deno.remove(root, { recursive: true });
  }
});
