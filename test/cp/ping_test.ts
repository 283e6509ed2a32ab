/**
 * `pingNode` (cp/nodes/ping.ts): an in-process control plane dials a real `otherix-agent`
 * process over mTLS; unknown, endpoint-less and dead nodes get their stable errors.
 */
import { assert, assertEquals, assertRejects, assertStringIncludes } from "../assert.ts";
import { createJoinToken } from "../../cp/join_tokens.ts";
import { pingNode } from "../../cp/nodes/ping.ts";
import { bootstrapNode } from "../../cp/nodes/service.ts";
import { keys, type NodeRecord } from "../../cp/repo/records.ts";
import { AGENT_VERSION } from "../../agent/version.ts";
import { ApiError } from "../../shared/errors.ts";
import { createCsr, splitSans } from "../../shared/pki.ts";
import { LogCapture, startTestCp } from "./fixtures.ts";
import { startAgent, tempRoot, waitFor } from "../harness.ts";

async function token(store: Parameters<typeof createJoinToken>[0], node: string, fp: string) {
  return (await createJoinToken(store, { node_name: node }, {
    defaultTtlSeconds: 60,
    createdBy: "test",
    caFingerprint: fp,
    now: new Date(),
  })).token;
}

async function apiError(fn: () => Promise<unknown>): Promise<ApiError> {
  const e = await assertRejects(fn);
  assert(e instanceof ApiError, String(e));
  return e;
}

Deno.test("ping: a live agent answers with rtt and version; unknown, new and dead nodes fail", async (t) => {
  const root = await tempRoot("otx-ping");
  const cp = await startTestCp(`${root}/cp`, new LogCapture());
  let agent;
  try {
    agent = await startAgent({
      root,
      cpUrl: `https://127.0.0.1:${cp.agentPort}`,
      caFingerprint: cp.caFingerprint,
      nodeName: "node-a",
      token: await token(cp.ctx.store, "node-a", cp.caFingerprint),
    });
    await waitFor(
      "node-a to advertise its endpoint",
      async () => {
        const rec = (await cp.ctx.store.get<NodeRecord>(keys.node("node-a")))?.value;
        return rec?.endpoint;
      },
      60_000,
      100,
    );

    await t.step("a live agent: round trip over mTLS and the agent's version", async () => {
      const ping = await pingNode(cp.ctx, "node-a");
      assertEquals(ping.node, "node-a");
      assertEquals(ping.endpoint, `https://127.0.0.1:${agent!.port}`);
      assertEquals(ping.agent_version, AGENT_VERSION);
      assert(ping.rtt_ms > 0 && ping.rtt_ms < 5000, `rtt ${ping.rtt_ms}`);
    });

    await t.step("rtt is measured with the injected clock, in ms", async () => {
      let ticks = 0;
      const ping = await pingNode(cp.ctx, "node-a", { clock: () => (ticks++) * 12.34 });
      assertEquals(ping.rtt_ms, 12.3);
    });

    await t.step("an unknown node: 404 node_not_found", async () => {
      const e = await apiError(() => pingNode(cp.ctx, "nope"));
      assertEquals([e.code, e.status], ["node_not_found", 404]);
    });

    await t.step("a node that never heartbeated: 409 node_not_ready", async () => {
      const csr = await createCsr("node-b", splitSans([]));
      await bootstrapNode(
        cp.ctx,
        await token(cp.ctx.store, "node-b", cp.caFingerprint),
        csr.csrPem,
      );
      const e = await apiError(() => pingNode(cp.ctx, "node-b"));
      assertEquals([e.code, e.status], ["node_not_ready", 409]);
    });

    await t.step("a dead agent: 502 agent_unreachable naming the endpoint", async () => {
      await agent!.proc.stop();
      const e = await apiError(() => pingNode(cp.ctx, "node-a"));
      assertEquals([e.code, e.status], ["agent_unreachable", 502]);
      assertEquals(e.details, { endpoint: `https://127.0.0.1:${agent!.port}` });
      assertStringIncludes(e.message, "node-a");
    });

    await t.step("a silent agent: 502 after the timeout", async () => {
      // A TCP listener that accepts and never answers the TLS handshake.
      const silent = Deno.listen({ hostname: "127.0.0.1", port: 0 });
      const held: Deno.Conn[] = [];
      const accepting = (async () => {
        for await (const c of silent) held.push(c);
      })();
      try {
        const port = (silent.addr as Deno.NetAddr).port;
        await cp.ctx.store.put(keys.node("node-s"), {
          ...(await cp.ctx.store.get<NodeRecord>(keys.node("node-b")))!.value,
          name: "node-s",
          endpoint: `https://127.0.0.1:${port}`,
        });
        const e = await apiError(() => pingNode(cp.ctx, "node-s", { timeoutMs: 300 }));
        assertEquals(e.code, "agent_unreachable");
        assertStringIncludes(e.message, "no answer within 300 ms");
      } finally {
        silent.close();
        for (const c of held) c.close();
        await accepting.catch(() => {});
      }
    });
  } catch (e) {
    throw new Error(`${(e as Error).message}\n--- agent ---\n${agent?.proc.output}`);
  } finally {
    await agent?.proc.stop();
    await cp.stop();
    await Deno.remove(root, { recursive: true });
  }
});
