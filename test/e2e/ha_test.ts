/**
 * High availability on etcd (issue 11), with real processes on one machine: three
 * `otherix-api` replicas on loopback (own ports and data dirs, each supervising its own etcd
 * member over TLS), a real agent running QEMU, joins with pinned CAs.
 *
 * One cluster is shared by the steps (they build on each other):
 * 1. the first replica starts a new cluster; a join with a wrong CA pin fails with spec 000's
 *    message and leaves the data dir empty;
 * 2. two replicas join (the first under write load) and the promote loop makes them voters;
 *    `GET /v1/cluster/members` shows three healthy voters and one leader;
 * 3. kill -9 the replica whose worker holds a running VM-create task: another replica
 *    finishes it; one QEMU, one VM record; the agent fails over;
 * 4. with one replica of three down, reads and writes go on; with two down, writes are
 *    refused `store_unavailable`, `/readyz` is 503 and cached reads say they are stale;
 * 5. the two restart and the cluster heals;
 * 6. a replica whose on-disk CA differs from the store's refuses to start (CA divergence).
 */
import { join } from "node:path";
import { assert, assertEquals, assertMatch } from "../assert.ts";
import {
  type AgentHandle,
  type ApiHandle,
  freePort,
  pgrep,
  Proc,
  runCli,
  startAgent,
  tempRoot,
  TEST_ADMIN,
  waitFor,
  writeApiConfig,
} from "../harness.ts";
import {
  adminClient,
  crashReplica,
  joinArgs,
  newReplica,
  type Replica,
  replicaConfig,
  startReplica,
} from "../ha_cluster.ts";
import { ensureTestImage } from "../test_image.ts";
import { denoRunArgs, REPO_ROOT } from "../../scripts/permissions.ts";
import { createCa } from "../../shared/pki.ts";
import { openEtcdStore } from "../../cp/store/etcd.ts";
import type { Store } from "../../cp/store/store.ts";

// deno-lint-ignore no-explicit-any
type Json = any;

Deno.test("HA on etcd: joins, failover of tasks and agents, quorum loss, healing", async (t) => {
  const root = await tempRoot("otx-ha");
  const poolsDir = join(root, "agent/var/lib/otherix/pools");
  const replicas = ["cp-1", "cp-2", "cp-3"].map((name) => newReplica(root, name));
  const [r1, r2, r3] = replicas;
  const ha = { poolsDir };
  const start = (r: Replica, args: string[] = []) => startReplica(r, ha, args);
  const client = adminClient;
  const crash = crashReplica;
  // The image server: `/slow/` trickles until `release` (holds a VM create mid-task).
  const image = await Deno.readFile((await ensureTestImage()).path);
  let released = false;
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, (req) => {
    const slow = new URL(req.url).pathname.startsWith("/slow/");
    let off = 0;
    const body = new ReadableStream<Uint8Array>({
      async pull(ctrl) {
        if (off >= image.length) return ctrl.close();
        if (slow && !released) await new Promise((r) => setTimeout(r, 100));
        const n = slow && !released ? 64 * 1024 : image.length;
        ctrl.enqueue(image.slice(off, off + n));
        off += n;
      },
    });
    return new Response(body, { headers: { "content-length": String(image.length) } });
  });
  let agent: AgentHandle | undefined;
  let probe: Store | undefined;
  // The steps build on each other: after a failure the rest would only time out.
  let failed = false;
  const step = async (name: string, fn: () => Promise<void>) => {
    if (!failed && !(await t.step(name, fn))) failed = true;
  };
  try {
    let api1!: Awaited<ReturnType<typeof client>>;
    let fingerprint = "";

    await step("the first replica starts a new cluster on its own etcd member", async () => {
      await start(r1);
      api1 = await client(r1.api!.url);
      const members = await api1("GET", "/v1/cluster/members");
      assertEquals(members.status, 200);
      assertEquals(members.json.backend, "etcd");
      assertEquals(members.json.controller_leader, "cp-1");
      assertEquals(members.json.members.map((m: Json) => [m.name, m.role, m.healthy]), [
        ["cp-1", "voter", true],
      ]);
    });

    const mint = async () => {
      const res = await api1("POST", "/v1/cluster/join-tokens", {});
      assertEquals(res.status, 201, JSON.stringify(res.json));
      fingerprint = res.json.ca_fingerprint;
      assertEquals(res.json.servers[0], r1.api!.agentUrl, "the answering replica first");
      return res.json.token as string;
    };
    const joinVia1 = (token: string, pin = fingerprint) => joinArgs(r1.api!.agentUrl, token, pin);

    await t.step(
      "a wrong CA pin fails the join with the spec's message; nothing is written",
      async () => {
        const token = await mint();
        const wrong = `sha256:${"0".repeat(64)}`;
        const err = await start(r2, joinVia1(token, wrong)).then(() => null, (e) => e as Error);
        assert(err, "the join must fail");
        assertMatch(err.message, /cluster CA fingerprint mismatch: pinned sha256:0{64}/);
        const pki = await Array.fromAsync(Deno.readDir(join(r2.root, "var/lib/otherix/api")))
          .then((es) => es.map((e) => e.name)).catch((): string[] => []);
        assert(!pki.includes("cluster.json") && !pki.includes("etcd"), pki.join(","));
      },
    );

    await step("a replica joins under write load and becomes a voter", async () => {
      const token = await mint();
      let writing = true;
      let writes = 0;
      const load = (async () => {
        while (writing) {
          const res = await api1("POST", "/v1/nodes/join-tokens", { node_name: `n${writes}` });
          assertEquals(res.status, 201);
          writes++;
        }
      })();
      try {
        await start(r2, joinVia1(token));
      } finally {
        writing = false;
        await load;
      }
      assert(writes > 0, "writes went on during the join");
      await waitFor("cp-2 a voter", async () => {
        const m = (await api1("GET", "/v1/cluster/members")).json.members as Json[];
        return m.find((x) => x.name === "cp-2")?.role === "voter";
      }, 30_000);
      await start(r3, joinVia1(await mint()));
      await waitFor("three voters", async () => {
        const m = (await api1("GET", "/v1/cluster/members")).json.members as Json[];
        return m.length === 3 && m.every((x) => x.role === "voter" && x.healthy);
      }, 30_000);
      const api3 = await client(r3.api!.url);
      const seen = await api3("GET", "/v1/cluster/members");
      assertEquals(seen.json.members.filter((m: Json) => m.is_leader).length, 1);
      assertEquals(seen.json.members.map((m: Json) => m.api_url), [
        r1.api!.url,
        r2.api!.url,
        r3.api!.url,
      ]);
      // The CLI against the replicas, a dead endpoint first in its list.
      const login = await fetch(`${r2.api!.url}/v1/auth/login`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(TEST_ADMIN),
      });
      const env = {
        HOME: root,
        NO_COLOR: "1",
        OTHERIX_SERVER: `http://127.0.0.1:${freePort()},${r2.api!.url},${r3.api!.url}`,
        OTHERIX_API_TOKEN: (await login.json()).access_token,
      };
      const members = await runCli(["cluster", "members"], env);
      assertEquals(members.code, 0, members.stderr);
      assertMatch(members.stdout, /^store: etcd; controllers led by cp-1\n/);
      for (const name of ["cp-1", "cp-2", "cp-3"]) {
        assertMatch(members.stdout, new RegExp(`\\n${name} +voter +(yes|no) +healthy `));
      }
      const minted = await runCli(["cluster", "join-token", "create", "-o", "json"], env);
      assertEquals(minted.code, 0, minted.stderr);
      assertEquals(JSON.parse(minted.stdout).ca_fingerprint, fingerprint);
      // Every replica serves the same store: the token minted on cp-1 is listed on cp-3.
      const shared = await api1("POST", "/v1/nodes/join-tokens", { node_name: "shared" });
      assertEquals((await api3("DELETE", `/v1/nodes/join-tokens/${shared.json.id}`)).status, 204);
    });

    let taskId = "";
    await step("kill -9 of the replica running a VM create: another finishes it", async () => {
      const join1 = await api1("POST", "/v1/nodes/join-tokens", { node_name: "node-1" });
      agent = await startAgent({
        root: join(root, "agent"),
        cpUrl: r1.api!.agentUrl,
        caFingerprint: fingerprint,
        nodeName: "node-1",
        token: join1.json.token,
      });
      await waitFor("default pool ready", async () => {
        const pools = (await api1("GET", "/v1/pools")).json.items ?? [];
        return pools.some((p: Json) => p.status === "ready");
      }, 60_000);
      const created = await api1("POST", "/v1/vms", {
        name: "ha-vm",
        image_url: `http://127.0.0.1:${server.addr.port}/slow/ha.img`,
        architecture: "amd64",
        vcpus: 1,
        memory_mb: 128,
        disk_gib: 1,
      });
      assertEquals(created.status, 202, JSON.stringify(created.json));
      taskId = created.json.id;
      // The claim names the worker (`<replica>/<random>`) running the task.
      const etcdDir = join(r1.api!.dataDir, "pki");
      probe = await openEtcdStore({
        endpoints: replicas.map((r) => `https://127.0.0.1:${r.clientPort}`),
        tls: {
          caPem: await Deno.readTextFile(join(etcdDir, "etcd-ca.crt")),
          certPem: await Deno.readTextFile(join(etcdDir, "etcd.crt")),
          keyPem: await Deno.readTextFile(join(etcdDir, "etcd.key")),
        },
      });
      const claim = await waitFor("the task claimed, downloading", async () => {
        const c = await probe!.get<{ worker: string }>(`/task-claims/${taskId}`);
        const task = (await api1("GET", `/v1/tasks/${taskId}`)).json;
        return c && /download/i.test(task?.progress ?? "") ? c.value : null;
      }, 60_000);
      const owner = replicas.find((r) => claim.worker.startsWith(`${r.name}/`))!;
      assert(owner, claim.worker);
      await crash(owner);
      released = true;
      const survivor = replicas.find((r) => r !== owner)!;
      const api = await client(survivor.api!.url);
      const task = await waitFor("the task finished elsewhere", async () => {
        const t = (await api("GET", `/v1/tasks/${taskId}`)).json;
        return t?.status === "succeeded" || t?.status === "failed" ? t : null;
      }, 90_000);
      assertEquals(task.status, "succeeded", JSON.stringify(task));
      const vms = (await api("GET", "/v1/vms")).json.items as Json[];
      assertEquals(vms.filter((v) => v.name === "ha-vm").length, 1);
      await waitFor(
        "ha-vm running",
        async () => (await api("GET", "/v1/vms/ha-vm")).json?.status === "running",
        60_000,
      );
      assertEquals(pgrep("qemu-system", "guest=ha-vm", agent.runDir).length, 1, "one QEMU");
      // Restart the crashed replica (no join: its data dir knows the cluster).
      await start(owner);
    });

    await step("one replica down: reads and writes go on; two down: writes refused", async () => {
      await crash(r3);
      const api2 = await client(r2.api!.url);
      // An API token (what `otherix config add cluster` stores) for the reads without quorum.
      const minted = await api2("POST", "/v1/users/me/api-tokens", { name: "ha" });
      assertEquals(minted.status, 201, JSON.stringify(minted.json));
      const apiToken = minted.json.plaintext_token as string;
      // If cp-3 led etcd, the others elect a new leader first (election timeout 500 ms here).
      await waitFor(
        "a write on cp-2",
        async () =>
          (await api2("POST", "/v1/nodes/join-tokens", { node_name: "x1" })).status === 201,
        15_000,
      );
      assertEquals((await api2("GET", "/v1/vms/ha-vm")).status, 200, "a read with 2 of 3");
      await crash(r1);
      await waitFor("cp-2 sees the store unavailable", async () => {
        const res = await fetch(`${r2.api!.url}/readyz`);
        const body = await res.json();
        return res.status === 503 && body.error?.code === "store_unavailable";
      }, 30_000);
      const refused = await api2("POST", "/v1/nodes/join-tokens", { node_name: "x2" });
      assertEquals([refused.status, refused.json?.error?.code], [503, "store_unavailable"]);
      const cached = await api2("GET", "/v1/vms/ha-vm");
      assertEquals(cached.status, 200, JSON.stringify(cached.json));
      assertMatch(cached.headers.get("warning") ?? "", /^110 - "Response is Stale/);
      const withToken = await fetch(`${r2.api!.url}/v1/vms/ha-vm`, {
        headers: { authorization: `Bearer ${apiToken}` },
      });
      assertEquals([withToken.status, (await withToken.json()).name], [200, "ha-vm"]);
      assertMatch(withToken.headers.get("warning") ?? "", /^110 /);
    });

    await step("the two restart and the cluster heals", async () => {
      await Promise.all([start(r1), start(r3)]);
      const api2 = await client(r2.api!.url);
      await waitFor("three healthy voters", async () => {
        const m = (await api2("GET", "/v1/cluster/members")).json.members as Json[];
        return m.length === 3 && m.every((x) => x.role === "voter" && x.healthy);
      }, 60_000);
      const ok = await api2("POST", "/v1/nodes/join-tokens", { node_name: "x3" });
      assertEquals(ok.status, 201);
      assertEquals((await api2("GET", "/v1/vms/ha-vm")).headers.get("warning"), null);
    });

    await step("backup of the live cluster restores as a new one-member cluster", async () => {
      const run = async (args: string[], roots: ApiHandle["roots"]) => {
        const proc = new Proc(
          "api-cli",
          new Deno.Command(Deno.execPath(), {
            args: denoRunArgs("otherix-api", roots, args),
            cwd: REPO_ROOT,
            stdout: "piped",
            stderr: "piped",
          }),
        );
        const status = await proc.status();
        assertEquals(status.code, 0, proc.output);
        return proc.output;
      };
      const file = join(r2.api!.dataDir, "backup.otx");
      const said = await run(
        ["backup", "--config", r2.api!.configFile, "--to", file],
        r2.api!.roots,
      );
      assertMatch(said, /backup: \d+ keys at store revision \d+, CA material included/);
      const r4 = newReplica(root, "cp-4");
      replicas.push(r4);
      const paths = await writeApiConfig({
        root: r4.root,
        publicPort: r4.publicPort,
        agentPort: r4.agentPort,
        config: replicaConfig(r4, ha),
      });
      const copy = join(paths.dataDir, "backup.otx");
      await Deno.copyFile(file, copy);
      assertMatch(
        await run(["restore", "--config", paths.configFile, "--from", copy], paths.roots),
        /restored \d+ keys/,
      );
      await start(r4);
      const api4 = await client(r4.api!.url); // the admin's login came back
      assertEquals((await api4("GET", "/v1/vms/ha-vm")).json?.name, "ha-vm");
      const members = (await api4("GET", "/v1/cluster/members")).json.members as Json[];
      assertEquals(members.map((m) => [m.name, m.role]), [["cp-4", "voter"]]);
      await r4.api!.proc.stop();
    });

    await step("an on-disk CA that differs from the store's fails the boot", async () => {
      await r3.api!.proc.stop();
      const caPath = join(r3.api!.dataDir, "pki/ca.crt");
      const good = await Deno.readTextFile(caPath);
      await Deno.writeTextFile(caPath, (await createCa()).certPem);
      const proc = new Proc(
        "api",
        new Deno.Command(Deno.execPath(), {
          args: denoRunArgs("otherix-api", r3.api!.roots, ["--config", r3.api!.configFile]),
          cwd: REPO_ROOT,
          stdout: "piped",
          stderr: "piped",
        }),
      );
      const status = await proc.status();
      assertEquals(status.code, 1);
      assertMatch(
        proc.output,
        /cluster CA divergence: on-disk CA .* does not match active etcd CA/,
      );
      await Deno.writeTextFile(caPath, good);
      await start(r3);
    });

    await step("remove-member: a stopped replica's member leaves the cluster", async () => {
      await r3.api!.proc.stop();
      const api2 = await client(r2.api!.url);
      const login = await fetch(`${r2.api!.url}/v1/auth/login`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(TEST_ADMIN),
      });
      const env = {
        HOME: root,
        NO_COLOR: "1",
        OTHERIX_SERVER: r2.api!.url,
        OTHERIX_API_TOKEN: (await login.json()).access_token,
      };
      const removed = await runCli(["cluster", "remove-member", "cp-3", "--force"], env);
      assertEquals([removed.code, removed.stdout], [0, "member cp-3 removed\n"], removed.stderr);
      const res = await api2("GET", "/v1/cluster/members");
      assertEquals(res.json.members.map((m: Json) => m.name), ["cp-1", "cp-2"]);
      const again = await api2("DELETE", "/v1/cluster/members/cp-3");
      assertEquals([again.status, again.json.error.code], [404, "not_found"]);
    });
  } finally {
    released = true;
    await probe?.close();
    await agent?.proc.stop().catch(() => {});
    for (const r of replicas) await r.api?.proc.stop().catch(() => {});
    for (const pid of pgrep("qemu-system", join(root, "agent"))) Deno.kill(pid, "SIGKILL");
    for (const pid of pgrep("etcd", root)) Deno.kill(pid, "SIGKILL");
    await server.shutdown();
    await Deno.remove(root, { recursive: true }).catch(() => {});
  }
});
