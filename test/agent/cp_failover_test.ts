/**
 * Failover between control-plane URLs over real mTLS (agent/cp_client.ts
 * `postToCpWithFailover`, the heartbeat loop): only a connection-level failure (refused,
 * reset, TLS failure, timeout without an answer) moves to the next replica, an HTTP error is
 * an answer, every URL gets the control-plane certificate check, and the heartbeat's
 * kept-alive connection follows the agent without leaking sockets.
 */
import { assert, assertEquals, assertRejects, assertStringIncludes } from "../assert.ts";
import type { AgentIdentity } from "../../agent/bootstrap.ts";
import { agentPaths } from "../../agent/config.ts";
import { CpAnswerError, cpTls, postToCpWithFailover } from "../../agent/cp_client.ts";
import { CpEndpoints } from "../../agent/cp_endpoints.ts";
import { startHeartbeat } from "../../agent/heartbeat.ts";
import { mtlsRenewRequester } from "../../agent/renew.ts";
import { mtlsReportSender } from "../../agent/report.ts";
import { ImageCache } from "../../agent/images.ts";
import { PoolManager } from "../../agent/pools.ts";
import { SystemInfo } from "../../agent/sysinfo.ts";
import { VmManager } from "../../agent/vms.ts";
import { AGENT_CERT_ORG, CP_CERT_ORG } from "../../shared/constants.ts";
import type { Logger } from "../../shared/log.ts";
import { createCa, issueServerCert, splitSans } from "../../shared/pki.ts";
import { serveTls, type TlsServer } from "../../shared/tls.ts";
import { startFakeCp } from "./fake_cp.ts";
import { memoryLogger, tempRoot } from "./helpers.ts";
import { startTcpProxy } from "./tcp_proxy.ts";

const FAILOVER = "control plane unreachable; trying the next replica";

async function until(what: string, pred: () => boolean, ms = 15_000): Promise<void> {
  const end = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** Parsed log lines whose `msg` contains `text`. */
function logged(lines: string[], text: string): Record<string, unknown>[] {
  return lines.map((l) => JSON.parse(l)).filter((r) => String(r.msg).includes(text));
}

/** A TLS server that is not a control plane (certificate `org`/CA given), counting requests. */
async function impostor(certs: { certPem: string; keyPem: string; caPem: string }) {
  let requests = 0;
  const server: TlsServer = await serveTls({
    hostname: "127.0.0.1",
    port: 0,
    certPem: certs.certPem,
    keyPem: certs.keyPem,
    caPem: certs.caPem,
    requireClientCert: false,
    fetch: () => {
      requests++;
      return Response.json({
        node_status: "ready",
        desired_pools: [],
        heartbeat_interval_seconds: 1,
      });
    },
  });
  return {
    url: `https://127.0.0.1:${server.port}`,
    get requests() {
      return requests;
    },
    close: () => server.close(),
  };
}

/** A TCP listener that accepts connections and never answers (a hung replica). */
function blackHole() {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const conns: Deno.Conn[] = [];
  const serving = (async () => {
    try {
      for await (const c of listener) conns.push(c);
    } catch { /* closed */ }
  })();
  return {
    url: `https://127.0.0.1:${(listener.addr as Deno.NetAddr).port}`,
    async close() {
      listener.close();
      for (const c of conns) {
        try {
          c.close();
        } catch { /* closed */ }
      }
      await serving;
    },
  };
}

/** Two paths (proxies A and B) to one fake control plane. */
async function twoPaths() {
  const cp = await startFakeCp();
  const target = { hostname: "127.0.0.1", port: Number(new URL(cp.url).port) };
  const a = startTcpProxy(target);
  const b = startTcpProxy(target);
  const cert = await cp.agentClient("node-a");
  const identity = { nodeName: "node-a", ...cert, caPem: cp.ca.certPem, bootstrapped: false };
  return {
    cp,
    a,
    b,
    identity,
    async close() {
      await a.kill();
      await b.kill();
      await cp.close();
    },
  };
}

Deno.test("failover: only a connection-level failure moves to the next replica", async (t) => {
  const p = await twoPaths();
  const tls = cpTls(p.identity);
  const report = { node_name: "node-a", vms: [], tasks: [] };
  const post = (eps: CpEndpoints, timeoutMs = 5_000, signal?: AbortSignal) =>
    postToCpWithFailover(eps, "/v1/nodes/report", report, tls, {
      timeoutMs,
      component: "report",
      signal,
    });
  try {
    await t.step("an HTTP error is an answer: no failover", async () => {
      const { log, lines } = memoryLogger();
      const eps = new CpEndpoints(p.a.url, log, [p.b.url]);
      p.cp.failReports = 1;
      p.cp.failReportsWith = "internal_error";
      const e = await assertRejects(() => post(eps));
      assert(e instanceof CpAnswerError, String(e));
      assertEquals([e.status, e.code], [500, "internal_error"]);
      assertEquals(e.message, "HTTP 500 internal_error: try again");
      assertEquals(eps.current(), p.a.url);
      assertEquals(p.b.accepted, 0, "the other replica was not tried");
      assertEquals(logged(lines, FAILOVER), []);
      p.cp.failReportsWith = "store_unavailable";
    });

    await t.step(
      "503 store_unavailable (a replica without quorum): the next one is tried",
      async () => {
        const { log, lines } = memoryLogger();
        const eps = new CpEndpoints(p.a.url, log, [p.b.url]);
        p.cp.failReports = 1;
        const before = p.cp.reports.length;
        const res = await post(eps);
        assertEquals(res.url, p.b.url);
        assertEquals(p.cp.reports.length, before + 1);
        assertEquals(logged(lines, FAILOVER).length, 1);
      },
    );

    await t.step("refused: the next replica gets the request at once", async () => {
      const { log, lines } = memoryLogger();
      const dead = startTcpProxy({ hostname: "127.0.0.1", port: 1 });
      await dead.kill();
      const eps = new CpEndpoints(dead.url, log, [p.b.url]);
      const before = p.cp.reports.length;
      const res = await post(eps);
      assertEquals(res.url, p.b.url);
      assertEquals(p.cp.reports.length, before + 1);
      assertEquals(eps.current(), p.b.url, "sticks to the replica that answered");
      const w = logged(lines, FAILOVER);
      assertEquals(w.map((l) => [l.msg, l.from, l.to]), [
        [`report: ${FAILOVER}`, dead.url, p.b.url],
      ]);
      assertStringIncludes(String(w[0].err), "ECONNREFUSED");
      assertEquals(logged(lines, "control plane reachable again").length, 1);
    });

    await t.step("a server that is not a control plane is a TLS failure", async () => {
      const node = await issueServerCert(
        p.cp.ca,
        "node-x",
        AGENT_CERT_ORG,
        splitSans(["127.0.0.1"]),
      );
      const other = await createCa();
      const foreign = await issueServerCert(other, "cp-1", CP_CERT_ORG, splitSans(["127.0.0.1"]));
      const fakeA = await impostor({ ...node, caPem: p.cp.ca.certPem });
      const fakeB = await impostor({ ...foreign, caPem: other.certPem });
      try {
        const { log, lines } = memoryLogger();
        const eps = new CpEndpoints(fakeA.url, log, [fakeB.url, p.b.url]);
        const res = await post(eps);
        assertEquals(res.url, p.b.url);
        assertEquals([fakeA.requests, fakeB.requests], [0, 0], "no request reached them");
        const errs = logged(lines, FAILOVER).map((l) => String(l.err));
        assertEquals(errs.length, 2);
        assertStringIncludes(errs[0], "is not otherix:control-plane");
        assertStringIncludes(errs[1], "certificate");
      } finally {
        await fakeA.close();
        await fakeB.close();
      }
    });

    await t.step("a timeout without an answer moves on", async () => {
      const hole = blackHole();
      try {
        const { log, lines } = memoryLogger();
        const eps = new CpEndpoints(hole.url, log, [p.b.url]);
        const res = await post(eps, 500);
        assertEquals(res.url, p.b.url);
        assertEquals(logged(lines, FAILOVER).map((l) => l.from), [hole.url]);
      } finally {
        await hole.close();
      }
    });

    await t.step("nothing answers: the last error, each URL tried once", async () => {
      const { log, lines } = memoryLogger();
      const x = startTcpProxy({ hostname: "127.0.0.1", port: 1 });
      const y = startTcpProxy({ hostname: "127.0.0.1", port: 1 });
      await x.kill();
      await y.kill();
      const eps = new CpEndpoints(x.url, log, [y.url]);
      const e = await assertRejects(() => post(eps));
      assertStringIncludes(String(e), `${y.port}`);
      assertEquals(logged(lines, FAILOVER).map((l) => [l.from, l.to]), [
        [x.url, y.url],
        [y.url, x.url],
      ]);
    });

    await t.step("the caller's abort is not a failure of the replica", async () => {
      const hole = blackHole();
      try {
        const { log, lines } = memoryLogger();
        const eps = new CpEndpoints(hole.url, log, [p.b.url]);
        const ctrl = new AbortController();
        const pending = post(eps, 5_000, ctrl.signal);
        setTimeout(() => ctrl.abort(new Error("stopping")), 100);
        const e = await assertRejects(() => pending);
        assertEquals(String(e), "Error: stopping");
        assertEquals(eps.current(), hole.url);
        assertEquals(logged(lines, FAILOVER), []);
      } finally {
        await hole.close();
      }
    });
  } finally {
    await p.close();
  }
});

Deno.test("failover: reports and renewal requests use the agent's list too", async (t) => {
  const p = await twoPaths();
  const dead = startTcpProxy({ hostname: "127.0.0.1", port: 1 });
  await dead.kill();
  try {
    await t.step("a report goes to the next replica when the current one is down", async () => {
      const { log, lines } = memoryLogger();
      const eps = new CpEndpoints(dead.url, log, [p.b.url]);
      const before = p.cp.reports.length;
      await mtlsReportSender(eps, p.identity)(
        { node_name: "node-a", vms: [], tasks: [] },
        new AbortController().signal,
      );
      assertEquals(p.cp.reports.length, before + 1);
      assertEquals(p.cp.reports.at(-1)!.peer, "node-a");
      assertEquals(logged(lines, FAILOVER).map((l) => l.msg), [`report: ${FAILOVER}`]);
    });

    await t.step(
      "reports share one kept-alive connection (no TLS handshake per report)",
      async () => {
        const { log } = memoryLogger();
        const send = mtlsReportSender(new CpEndpoints(p.b.url, log), p.identity);
        const before = p.cp.reports.length;
        for (let i = 0; i < 3; i++) {
          await send({ node_name: "node-a", vms: [], tasks: [] }, new AbortController().signal);
        }
        const ports = p.cp.reports.slice(before).map((r) => r.port);
        assertEquals(ports.length, 3);
        assertEquals(new Set(ports).size, 1, `ports: ${ports}`);
      },
    );

    await t.step("a renewal request goes to the next replica; its answer is final", async () => {
      const { log, lines } = memoryLogger();
      const eps = new CpEndpoints(dead.url, log, [p.b.url]);
      // The fake control plane has no renew route: its 404 is an answer, from B.
      const e = await assertRejects(() =>
        mtlsRenewRequester(eps)(p.identity, "csr", new AbortController().signal)
      );
      assert(e instanceof CpAnswerError, String(e));
      assertEquals(e.status, 404);
      assertEquals(eps.current(), p.b.url);
      assertEquals(logged(lines, FAILOVER).map((l) => l.msg), [`renewal: ${FAILOVER}`]);
    });
  } finally {
    await p.close();
  }
});

/** A heartbeat loop of node-a over `endpoints`. */
async function heartbeatLoop(
  p: { identity: AgentIdentity },
  endpoints: CpEndpoints,
  log: Logger,
) {
  const t = await tempRoot();
  const paths = agentPaths(t.cfg);
  const hb = startHeartbeat({
    cpUrl: endpoints.list()[0],
    endpoints,
    identity: p.identity,
    endpoint: "https://127.0.0.1:9443",
    accelerator: "tcg",
    poolsDir: paths.poolsDir,
    system: new SystemInfo(paths.stateDir, log),
    pools: new PoolManager(paths.poolsDir, `${paths.stateDir}/desired-pools.json`, log),
    vms: new VmManager({
      paths,
      qemu: t.cfg.qemu,
      accelerator: "tcg",
      hostArch: "amd64",
      images: new ImageCache({ idleTimeoutMs: 1000 }),
      log,
    }),
    initialIntervalSeconds: 1,
    requestTimeoutMs: 2_000,
    log,
  });
  return {
    hb,
    async stop() {
      await hb.stop();
      await t.cleanup();
    },
  };
}

Deno.test("failover: the heartbeat moves to the next replica without a missed beat", async (t) => {
  const p = await twoPaths();
  const { log, lines } = memoryLogger();
  const eps = new CpEndpoints(p.a.url, log, [p.b.url]);
  const loop = await heartbeatLoop(p, eps, log);
  const beats = () => p.cp.heartbeats.length;
  try {
    await t.step("steady on the first URL over one kept-alive connection", async () => {
      await until("3 heartbeats", () => beats() >= 3);
      assertEquals(p.a.accepted, 1);
      assertEquals(p.b.accepted, 0);
    });

    await t.step("the replica dies: the next heartbeat goes to the other one", async () => {
      const before = beats();
      await p.a.kill();
      await until("2 heartbeats through B", () => beats() >= before + 2);
      assertEquals(eps.current(), p.b.url);
      assertEquals(p.b.accepted, 1, "one new connection, kept alive");
      assertEquals(logged(lines, "heartbeat: failed"), [], "no heartbeat was lost");
      const w = logged(lines, FAILOVER);
      assertEquals(w.map((l) => [l.level, l.msg, l.from, l.to]), [
        ["warn", `heartbeat: ${FAILOVER}`, p.a.url, p.b.url],
      ]);
      const back = logged(lines, "heartbeat: control plane reachable again");
      assertEquals(back.map((l) => [l.level, l.cp_url]), [["info", p.b.url]]);
    });
  } finally {
    await loop.stop();
    await p.close();
  }
});

/** A list that counts the answers it is told about (to act between two heartbeats). */
class CountingEndpoints extends CpEndpoints {
  answers = 0;
  override succeeded(url: string, component: string): void {
    super.succeeded(url, component);
    this.answers++;
  }
}

Deno.test("failover: the heartbeat's idle connection to the old replica is closed", async () => {
  const p = await twoPaths();
  const { log } = memoryLogger();
  const eps = new CountingEndpoints(p.a.url, log, [p.b.url]);
  const loop = await heartbeatLoop(p, eps, log);
  try {
    await until("2 heartbeats", () => eps.answers >= 2);
    // Between two beats (the loop sleeps 1 s; nothing in flight whose answer from A would
    // rightly stick the list back to A): a report found A unreachable, the list moves on.
    // A itself is still up, and so is the loop's idle kept-alive connection to it.
    const answered = eps.answers;
    await until("the next heartbeat answered", () => eps.answers > answered);
    assertEquals(p.a.open, 1, "the kept-alive connection to A");
    eps.failed(p.a.url, new Error("reset"), "report");
    await until("a heartbeat through B", () => p.b.accepted === 1 && eps.answers > answered + 1);
    assertEquals(eps.current(), p.b.url);
    // The fake CP keeps idle connections 10 s: only the agent can have closed it this soon.
    await until("A's connection closed", () => p.a.open === 0, 3_000);
    assertEquals(p.b.open, 1);
  } finally {
    await loop.stop();
    await p.close();
  }
});

Deno.test("failover: a learnt URL that is not a control plane never gets a heartbeat", async () => {
  const p = await twoPaths();
  const node = await issueServerCert(p.cp.ca, "node-x", AGENT_CERT_ORG, splitSans(["127.0.0.1"]));
  const fake = await impostor({ ...node, caPem: p.cp.ca.certPem });
  const { log, lines } = memoryLogger();
  // As if a heartbeat had named it (the configured URL is down).
  const eps = new CpEndpoints(fake.url, log, [p.b.url]);
  const loop = await heartbeatLoop(p, eps, log);
  try {
    await until("2 heartbeats through B", () => p.cp.heartbeats.length >= 2);
    assertEquals(fake.requests, 0);
    const w = logged(lines, FAILOVER);
    assertEquals(w.map((l) => l.from), [fake.url]);
    assertStringIncludes(String(w[0].err), "is not otherix:control-plane");
  } finally {
    await loop.stop();
    await fake.close();
    await p.close();
  }
});
