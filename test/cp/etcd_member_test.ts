/**
 * A supervised etcd member (cp/cluster/etcd_member.ts), membership over TLS
 * (cp/cluster/etcd_admin.ts) and the promote loop (cp/cluster/promote.ts) on real `etcd`
 * processes (Debian `etcd-server` 3.4) with certificates made by shared/pki.ts, on free
 * loopback ports. etcd trusts a CA of its own that issues to replicas only, apart from the
 * cluster CA that also issues agents' certificates (see etcd_member.ts: whoever holds a
 * certificate etcd trusts owns the store). One member is shared by the steps, as one
 * replica's member lives through them: start, kill -9, TLS refusals, a learner joining and
 * promoted, status, removal, stop.
 */
import { join } from "node:path";
import { assert, assertEquals, assertMatch, assertRejects } from "../assert.ts";
import { freePort, pidAlive, waitFor } from "../harness.ts";
import { EtcdAdmin, type EtcdTlsPem } from "../../cp/cluster/etcd_admin.ts";
import {
  EtcdMember,
  type EtcdMemberOptions,
  type EtcdTlsFiles,
} from "../../cp/cluster/etcd_member.ts";
import { EtcdClient } from "../../cp/store/etcd_client.ts";
import { PromoteLoop } from "../../cp/cluster/promote.ts";
import { ApiError } from "../../shared/errors.ts";
import { createLogger, type Logger } from "../../shared/log.ts";
import { type CertAndKey, createCa, issueServerCert, splitSans } from "../../shared/pki.ts";

const ETCD = Deno.env.get("OTHERIX_TEST_ETCD") ?? "/usr/bin/etcd";
/** Short raft timings (etcd accepts election ≥ 5 × heartbeat) and quick polling. */
const TIMINGS = {
  heartbeatMs: 50,
  electionMs: 500,
  probeIntervalMs: 50,
  restartMinMs: 200,
  stopGraceMs: 5_000,
  startTimeoutMs: 20_000,
};

/** Log lines, parsed. */
class Lines {
  all: Record<string, unknown>[] = [];
  raw: string[] = [];
  logger(): Logger {
    return createLogger("api", "debug", (l) => {
      this.raw.push(l);
      this.all.push(JSON.parse(l));
      if (Deno.env.get("OTHERIX_TEST_VERBOSE")) console.error(l);
    });
  }
  find(msg: string, fields: Record<string, unknown> = {}): Record<string, unknown> | undefined {
    return this.all.find((l) =>
      l.msg === msg && Object.entries(fields).every(([k, v]) => l[k] === v)
    );
  }
}

/** A certificate written to files (0600) plus its PEMs. */
interface Issued {
  files: EtcdTlsFiles;
  pem: EtcdTlsPem;
}

async function writeCert(
  dir: string,
  name: string,
  ca: CertAndKey,
  cert: CertAndKey,
): Promise<Issued> {
  const files = {
    caFile: join(dir, `${name}-ca.crt`),
    certFile: join(dir, `${name}.crt`),
    keyFile: join(dir, `${name}.key`),
  };
  await Deno.writeTextFile(files.caFile, ca.certPem, { mode: 0o600 });
  await Deno.writeTextFile(files.certFile, cert.certPem, { mode: 0o600 });
  await Deno.writeTextFile(files.keyFile, cert.keyPem, { mode: 0o600 });
  return { files, pem: { caPem: ca.certPem, certPem: cert.certPem, keyPem: cert.keyPem } };
}

/** A replica certificate for etcd (client and peer), issued by `ca`. */
async function replicaCert(dir: string, ca: CertAndKey, name: string): Promise<Issued> {
  const sans = splitSans(["localhost", "127.0.0.1", "::1", name]);
  return await writeCert(dir, name, ca, await issueServerCert(ca, name, "otherix-cp", sans));
}

/** A kv client of the store's kind (etcd's JSON gateway), to put and read data. */
function kvClient(endpoint: string, pem: EtcdTlsPem) {
  const client = new EtcdClient({ endpoints: [endpoint], tls: pem });
  const b64 = (s: string) => btoa(s);
  return {
    put: async (key: string, value: string) => {
      await client.call("kv/put", { key: b64(key), value: b64(value) });
    },
    get: async (key: string, serializable = false): Promise<string | null> => {
      const res = await client.call<{ kvs?: { value?: string }[] }>(
        "kv/range",
        { key: b64(key), serializable },
        { idempotent: true },
      );
      const v = res.kvs?.[0]?.value;
      return v === undefined ? null : atob(v);
    },
    close: () => client.close(),
  };
}

/** `GET /health` with `pem`'s client certificate (none when `pem.certPem` is empty). */
async function healthWith(url: string, pem: EtcdTlsPem): Promise<string> {
  const client = Deno.createHttpClient(
    pem.certPem
      ? { caCerts: [pem.caPem], cert: pem.certPem, key: pem.keyPem }
      : { caCerts: [pem.caPem] },
  );
  try {
    const res = await fetch(`${url}/health`, { client, signal: AbortSignal.timeout(5_000) });
    return await res.text();
  } finally {
    client.close();
  }
}

Deno.test("etcd member: supervised, TLS only, learners promoted to voters, members removed", async (t) => {
  const started = performance.now();
  const dir = await Deno.makeTempDir({ dir: "/tmp", prefix: "otx-etcd-member-" });
  const lines = new Lines();
  const log = lines.logger();
  const ca = await createCa("otherix etcd CA");
  const clusterCa = await createCa("otherix cluster CA");
  const certA = await replicaCert(dir, ca, "cp-a");
  const certB = await replicaCert(dir, ca, "cp-b");
  const url = (port: number) => `https://127.0.0.1:${port}`;
  const a = { client: url(freePort()), peer: url(freePort()) };
  const b = { client: url(freePort()), peer: url(freePort()) };
  const memberOpts = (
    name: string,
    ports: { client: string; peer: string },
    cert: Issued,
    initialCluster: string,
    state: "new" | "existing",
  ): EtcdMemberOptions => ({
    binary: ETCD,
    name,
    dataDir: join(dir, name, "etcd"),
    clientUrl: ports.client,
    peerUrl: ports.peer,
    tls: cert.files,
    initialCluster,
    initialClusterState: state,
    log,
    timings: TIMINGS,
  });
  const memberA = new EtcdMember(memberOpts("cp-a", a, certA, `cp-a=${a.peer}`, "new"));
  let memberB = null as EtcdMember | null;
  const admin = new EtcdAdmin({ endpoints: [a.client], tls: certA.pem, timeoutMs: 3_000 });
  const kv = kvClient(a.client, certA.pem);
  let idB = "";

  try {
    await t.step("a one-member cluster starts under mutual TLS and answers health", async () => {
      await memberA.start();
      assertEquals(memberA.state, "running");
      assert(memberA.pid !== null && pidAlive(memberA.pid));
      assert(await memberA.healthy());
      assertEquals((await Deno.stat(join(dir, "cp-a", "etcd"))).mode! & 0o777, 0o700);
      assertEquals((await Deno.stat(memberA.etcdDataDir)).mode! & 0o777, 0o700);
      assertEquals((await Deno.stat(memberA.logPath)).mode! & 0o777, 0o600);
      const members = await admin.listMembers();
      assertEquals(members.map((m) => [m.name, m.isLearner, m.clientUrls]), [
        ["cp-a", false, [a.client]],
      ]);
      assertMatch(members[0].id, /^[0-9a-f]{16}$/);
      assert(lines.find("etcd member started", { etcd_member: "cp-a" }));
      // A clean start says nothing alarming.
      assertEquals(lines.all.filter((l) => l.level === "warn" || l.level === "error"), []);
      await kv.put("/survives/kill", "yes");
    });

    await t.step("kill -9 of etcd: the supervisor restarts it and the data survives", async () => {
      const old = memberA.pid!;
      Deno.kill(old, "SIGKILL");
      await waitFor(
        "etcd restarted and healthy",
        async () =>
          memberA.pid !== null && memberA.pid !== old && memberA.state === "running" &&
          await memberA.healthy(),
        20_000,
        50,
      );
      assert(!pidAlive(old));
      assertEquals(memberA.restarts, 1);
      const exit = lines.find("etcd exited unexpectedly; restarting it", { pid: old });
      assert(exit, "the crash is logged");
      assertEquals(exit.signal, "SIGKILL");
      assertEquals(exit.restart_in_ms, TIMINGS.restartMinMs);
      assert(lines.find("etcd member restarted and healthy", { pid: memberA.pid }));
      assertEquals(await kv.get("/survives/kill"), "yes");
    });

    await t.step(
      "only certificates of etcd's CA are let in: not agents' cluster-CA ones",
      async () => {
        // Positive control: the replica's own certificate.
        assertEquals(JSON.parse(await healthWith(a.client, certA.pem)).health, "true");
        // No client certificate at all.
        await assertRejects(() => healthWith(a.client, { ...certA.pem, certPem: "", keyPem: "" }));
        // A cluster-CA certificate, what every agent holds (even one named like a replica).
        for (const [cn, org] of [["node-1", "otherix-agent"], ["cp-a", "otherix-cp"]]) {
          const cert = await issueServerCert(
            clusterCa,
            cn,
            org,
            splitSans(["localhost", "127.0.0.1"]),
          );
          const pem = { caPem: ca.certPem, certPem: cert.certPem, keyPem: cert.keyPem };
          await assertRejects(() => healthWith(a.client, pem));
          const other = new EtcdAdmin({ endpoints: [a.client], tls: pem, timeoutMs: 2_000 });
          try {
            const e = await assertRejects(() => other.listMembers());
            assertEquals((e as ApiError).code, "store_unavailable");
          } finally {
            other.close();
          }
        }
        // etcd says why, and we pass it on.
        await waitFor(
          "refusal forwarded",
          () => {
            const l = lines.find("etcd: rejected connection", { etcd_member: "cp-a" });
            return Promise.resolve(l !== undefined);
          },
          5_000,
          50,
        );
      },
    );

    await t.step("bad membership input: stable codes, nothing changed", async () => {
      const before = await admin.listMembers();
      const codeOf = async (fn: () => Promise<unknown>) =>
        ((await assertRejects(fn)) as ApiError).code;
      assertEquals(
        await codeOf(() => admin.addLearner("http://127.0.0.1:1", "x")),
        "validation_failed",
      );
      assertEquals(await codeOf(() => admin.addLearner(b.peer, "bad name!")), "validation_failed");
      assertEquals(await codeOf(() => admin.addLearner(b.peer, "cp-a")), "conflict");
      assertEquals(await codeOf(() => admin.addLearner(a.peer, "cp-c")), "conflict");
      assertEquals(await codeOf(() => admin.promote("zz")), "validation_failed");
      assertEquals(await codeOf(() => admin.promote(before[0].id)), "conflict");
      assertEquals(await codeOf(() => admin.remove("123456789abcdef0")), "not_found");
      assertEquals(await admin.listMembers(), before);
    });

    await t.step(
      "a second member joins as a learner; the promote loop makes it a voter",
      async () => {
        const added = await admin.addLearner(b.peer, "cp-b");
        idB = added.member.id;
        assertEquals(added.initialCluster, `cp-a=${a.peer},cp-b=${b.peer}`);
        assertEquals(added.member.isLearner, true);
        memberB = new EtcdMember(
          memberOpts("cp-b", b, certB, added.initialCluster, added.initialClusterState),
        );
        await memberB.start();
        const learner = (await admin.listMembers()).find((m) => m.id === idB);
        assertEquals(learner?.name, "cp-b");
        // The learner serves reads of the data it replicated.
        const kvB = kvClient(b.client, certB.pem);
        try {
          await waitFor(
            "learner replicated",
            async () => (await kvB.get("/survives/kill", true)) === "yes",
            10_000,
            50,
          );
        } finally {
          kvB.close();
        }
        const loop = new PromoteLoop({ membership: admin, log, intervalMs: 100 });
        loop.start();
        try {
          await waitFor(
            "cp-b promoted",
            async () => (await admin.listMembers()).every((m) => !m.isLearner),
            10_000,
            50,
          );
          await waitFor(
            "loop done",
            () => Promise.resolve(loop.learners().length === 0),
            5_000,
            20,
          );
        } finally {
          await loop.stop();
        }
        const promoted = lines.find("etcd learner promoted to voter", { member_id: idB });
        assert(promoted, "the promotion is logged");
        assertEquals(promoted.name, "cp-b");
        assertEquals(loop.stuck(), []);
      },
    );

    await t.step("members: two healthy voters and one leader", async () => {
      const st = await admin.clusterStatus();
      assertEquals(st.members.map((m) => [m.name, m.isLearner, m.healthy, m.error]), [
        ["cp-a", false, true, null],
        ["cp-b", false, true, null],
      ]);
      assertEquals(st.members.filter((m) => m.isLeader).length, 1);
      assert(st.members.some((m) => m.id === st.leaderId));
      for (const m of st.members) {
        assertEquals(m.status!.memberId, m.id);
        assertEquals(m.status!.leaderId, st.leaderId);
        assert(m.status!.raftIndex > 0 && m.status!.dbSizeBytes > 0);
        assertEquals(m.status!.errors, []);
      }
    });

    await t.step("remove-member: the removed member stops and is not restarted", async () => {
      const removedPid = memberB!.pid!;
      // etcd refuses (conflict, "unhealthy cluster") until the members have been connected
      // for its 5 s health interval; a removal it accepts is final.
      await waitFor(
        "removal accepted",
        async () => {
          try {
            await admin.remove(idB);
            return true;
          } catch (e) {
            if ((e as ApiError).code !== "conflict") throw e;
            return false;
          }
        },
        15_000,
        200,
      );
      await waitFor("cp-b gone", () => Promise.resolve(memberB!.state === "removed"), 15_000, 50);
      assertEquals(memberB!.pid, null);
      assert(!pidAlive(removedPid));
      assertEquals((await admin.listMembers()).map((m) => m.name), ["cp-a"]);
      assert(lines.all.some((l) =>
        l.etcd_member === "cp-b" && l.level === "error" &&
        String(l.msg).startsWith("etcd member was removed from the cluster")
      ));
      assertEquals(memberB!.restarts, 0);
      await memberB!.stop();
      assertEquals(memberB!.state, "stopped");
      assertEquals(await kv.get("/survives/kill"), "yes");
    });

    await t.step("stop: SIGTERM ends etcd; stop is idempotent", async () => {
      const pid = memberA.pid!;
      const before = lines.all.length;
      await memberA.stop();
      assert(!pidAlive(pid));
      // Stopping is quiet: etcd's shutdown chatter stays in its own log.
      assertEquals(lines.all.slice(before).filter((l) => l.level !== "info"), []);
      assertEquals([memberA.state, memberA.pid], ["stopped", null]);
      await memberA.stop();
      assert(lines.find("etcd member stopped", { etcd_member: "cp-a" }));
    });

    await t.step("a start etcd cannot make rejects with etcd's own words", async () => {
      const taken = Deno.listen({ hostname: "127.0.0.1", port: 0 });
      const port = (taken.addr as Deno.NetAddr).port;
      const c = { client: url(freePort()), peer: url(port) };
      const memberC = new EtcdMember(memberOpts("cp-c", c, certA, `cp-c=${c.peer}`, "new"));
      try {
        const e = await assertRejects(() => memberC.start());
        assertMatch(e.message, /exited during start/);
        assertMatch(e.message, /address already in use/);
        assertEquals([memberC.state, memberC.pid], ["stopped", null]);
      } finally {
        taken.close();
        await memberC.stop();
      }
      const missing = new EtcdMember({
        ...memberOpts("cp-d", c, certA, `cp-d=${c.peer}`, "new"),
        binary: join(dir, "no-such-etcd"),
      });
      assertMatch((await assertRejects(() => missing.start())).message, /cannot run etcd/);
    });

    await t.step("no key material reaches our log or etcd's", async () => {
      const body = (pem: string) => pem.split("\n").filter((l) => l && !l.startsWith("-----"));
      const keyLines = [...body(certA.pem.keyPem), ...body(certB.pem.keyPem)];
      const etcdLog = await Deno.readTextFile(memberA.logPath);
      assert(etcdLog.length > 0 && lines.raw.length > 0);
      for (const k of keyLines) {
        assert(!lines.raw.some((l) => l.includes(k)), "our log holds no key");
        assert(!etcdLog.includes(k), "etcd's log holds no key");
      }
    });
  } finally {
    kv.close();
    admin.close();
    await memberB?.stop();
    await memberA.stop();
    await Deno.remove(dir, { recursive: true }).catch((e) =>
      console.error(`cleanup of ${dir}: ${e}`)
    );
    console.log(`etcd member test: ${Math.round(performance.now() - started)} ms`);
  }
});
