/**
 * The replica registry (cp/cluster/replicas.ts) and the controller leader on a real control
 * plane: the replica registers its advertised URLs under a lease, heartbeat responses carry
 * them (`control_planes`), the lone replica leads, and a graceful stop removes the record and
 * resigns at once.
 */
import { assert, assertEquals } from "../assert.ts";
import { apiFor, FakeAgent, LogCapture, startTestCp, until } from "./fixtures.ts";
import { agentUrls, replicaRecord, REPLICAS_PREFIX } from "../../cp/cluster/replicas.ts";
import { CONTROLLER_LEADER_KEY } from "../../cp/cluster/leader.ts";
import { openKvStore } from "../../cp/store/kv.ts";
import type { Replica } from "../../shared/api/cluster.ts";

Deno.test("replica registry: registered, advertised to agents, gone after stop", async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "otx-replicas-" });
  const cp = await startTestCp(dir, new LogCapture(), "  advertise_host: 127.0.0.1\n");
  let stopped = false;
  const agent = new FakeAgent(cp, "node-a");
  try {
    const name = cp.ctx.pki.replicaName;
    const own = `https://127.0.0.1:${cp.agentPort}`;

    await t.step("the replica's record: advertised URLs, attached to a lease", async () => {
      const kv = await cp.ctx.store.get<Replica>(`${REPLICAS_PREFIX}${name}`);
      assert(kv, "registered");
      assertEquals(kv.value.api_url, `http://127.0.0.1:${cp.publicPort}`);
      assertEquals(kv.value.agent_url, own);
      assert(kv.lease, "attached to a lease");
    });

    await t.step("the lone replica leads the controllers", async () => {
      assert(cp.ctx.election?.isLeader());
      const kv = await cp.ctx.store.get<{ identity: string }>(CONTROLLER_LEADER_KEY);
      assertEquals(kv?.value.identity, name);
    });

    await t.step(
      "GET /v1/cluster/members: the one embedded member, its URLs, the leader",
      async () => {
        const api = await apiFor(cp);
        const res = await api("GET", "/v1/cluster/members");
        assertEquals(res.status, 200, res.text);
        assertEquals(res.json, {
          backend: "embedded",
          controller_leader: name,
          members: [{
            name,
            id: null,
            role: "voter",
            is_leader: true,
            healthy: true,
            error: null,
            peer_urls: [],
            client_urls: [],
            api_url: `http://127.0.0.1:${cp.publicPort}`,
            agent_url: own,
            learner_since: null,
          }],
        });
      },
    );

    await t.step("heartbeat responses list every live replica, this one first", async () => {
      await agent.bootstrap();
      const other = replicaRecord({
        name: "aaa-other",
        host: "192.0.2.10",
        publicPort: 6443,
        publicTls: true,
        agentPort: 6444,
        version: "test",
        startedAt: new Date(),
      });
      const lease = await cp.ctx.store.grant(30);
      await cp.ctx.store.put(`${REPLICAS_PREFIX}aaa-other`, other, { lease });
      await until(
        "cache sees the other replica",
        () => Promise.resolve(cp.ctx.cache!.replicas.list().length === 2),
      );
      const hb = await agent.heartbeat();
      assertEquals(hb.status, 200);
      assertEquals(hb.body.control_planes, [own, "https://192.0.2.10:6444"]);
      await cp.ctx.store.revoke(lease);
      await until(
        "the other replica is gone",
        () => Promise.resolve(cp.ctx.cache!.replicas.list().length === 1),
      );
      assertEquals((await agent.heartbeat()).body.control_planes, [own]);
    });

    await t.step("a graceful stop removes the record and the leader key", async () => {
      await agent.close();
      await cp.stop();
      stopped = true;
      const store = await openKvStore(`${dir}/store.kv`);
      try {
        assertEquals((await store.range(REPLICAS_PREFIX)).kvs, []);
        assertEquals(await store.get(CONTROLLER_LEADER_KEY), null);
      } finally {
        await store.close();
      }
    });
  } finally {
    if (!stopped) {
      await agent.close();
      await cp.stop();
    }
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("agentUrls: self first, then by name, de-duplicated", () => {
  const r = (name: string, host: string) =>
    replicaRecord({
      name,
      host,
      publicPort: 1,
      publicTls: false,
      agentPort: 2,
      version: "v",
      startedAt: new Date(0),
    });
  assertEquals(
    agentUrls(
      [r("c", "10.0.0.3"), r("a", "10.0.0.1"), r("b", "10.0.0.2"), r("d", "10.0.0.1")],
      "b",
    ),
    ["https://10.0.0.2:2", "https://10.0.0.1:2", "https://10.0.0.3:2"],
  );
  assertEquals(r("v6", "fd00::1").agent_url, "https://[fd00::1]:2");
});
