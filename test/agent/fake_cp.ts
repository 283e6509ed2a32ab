/**
 * A small fake control plane for agent tests: the agent-facing TLS endpoints `/v1/ca`,
 * `/v1/nodes/bootstrap`, `/v1/nodes/heartbeat` and `/v1/nodes/report`, served with `serveTls`
 * from a CA made with `shared/pki.ts`. Records heartbeats and reports (with their arrival
 * time); behaviour is adjustable per test.
 *
 * @module
 */
import { Hono } from "hono";
import { AGENT_CERT_ORG, CP_CERT_ORG } from "../../shared/constants.ts";
import { BootstrapRequestSchema } from "../../shared/api/nodes.ts";
import {
  type DesiredPool,
  type HeartbeatRequest,
  HeartbeatRequestSchema,
  type NodeReport,
  NodeReportSchema,
} from "../../shared/api/agent.ts";
import {
  type CertAndKey,
  certFingerprint,
  createCa,
  createCsr,
  issueServerCert,
  signCsr,
  splitSans,
} from "../../shared/pki.ts";
import { peerOf, serveTls, type TlsEnv, type TlsServer } from "../../shared/tls.ts";

/** A running fake CP. */
export interface FakeCp {
  url: string;
  ca: CertAndKey;
  fingerprint: string;
  /** The token it accepts. */
  token: string;
  /** The node name it issues. */
  nodeName: string;
  heartbeats: HeartbeatRequest[];
  /** Peers (CN) of heartbeats. */
  heartbeatPeers: string[];
  /** The client port of each heartbeat's connection (one port: one kept-alive connection). */
  heartbeatPorts: number[];
  /** Reports accepted (204), in arrival order. */
  reports: ReceivedReport[];
  /** While > 0, reports are answered with {@link failReportsWith} (and counted down). */
  failReports: number;
  /** The refusal: 503 `store_unavailable` (default) or 500 `internal_error`. */
  failReportsWith: "store_unavailable" | "internal_error";
  /** Reports refused through {@link failReports}. */
  refusedReports: number;
  /**
   * Resolves with the first accepted report at index ≥ `from` (default: the next one to
   * arrive) that `pred` accepts; rejects after `ms` (default 30 000).
   */
  waitReport(
    pred: (r: NodeReport) => boolean,
    opts?: { from?: number; ms?: number },
  ): Promise<ReceivedReport>;
  desiredPools: DesiredPool[];
  /** When set, bootstrap answers this error. */
  bootstrapError: { status: number; code: string; message: string } | null;
  /** When set, `/v1/ca` serves this fingerprint instead of the real one. */
  servedFingerprint: string | null;
  /** When set, `/v1/ca` serves this CA instead. */
  servedCaPem: string | null;
  bootstrapCalls: number;
  /** A client certificate with O = control plane (to call the agent). */
  cpClient(): Promise<CertAndKey>;
  /** A client certificate with O = nodes (another agent). */
  agentClient(name: string): Promise<CertAndKey>;
  close(): Promise<void>;
}

/** A report as the fake CP received it. */
export interface ReceivedReport {
  report: NodeReport;
  /** Client certificate CN. */
  peer: string;
  /** `Date.now()` at arrival. */
  at: number;
  /** The client port of its connection (one port: one kept-alive connection). */
  port: number;
}

/** Starts a fake CP on 127.0.0.1 (random port). */
export async function startFakeCp(
  opts: { nodeName?: string; token?: string } = {},
): Promise<FakeCp> {
  const ca = await createCa();
  const serverCert = await issueServerCert(
    ca,
    "cp-1",
    CP_CERT_ORG,
    splitSans(["localhost", "127.0.0.1"]),
  );
  const state: Omit<FakeCp, "url" | "close" | "cpClient" | "agentClient"> = {
    ca,
    fingerprint: await certFingerprint(ca.certPem),
    token: opts.token ?? "otxjoin_test-token",
    nodeName: opts.nodeName ?? "node-a",
    heartbeats: [],
    heartbeatPeers: [],
    heartbeatPorts: [],
    reports: [],
    failReports: 0,
    failReportsWith: "store_unavailable",
    refusedReports: 0,
    waitReport: () => Promise.reject(new Error("not ready")),
    desiredPools: [],
    bootstrapError: null,
    servedFingerprint: null,
    servedCaPem: null,
    bootstrapCalls: 0,
  };
  const app = new Hono<TlsEnv>();
  app.get("/v1/ca", (c) =>
    c.json({
      ca_pem: state.servedCaPem ?? ca.certPem,
      fingerprint: state.servedFingerprint ?? state.fingerprint,
    }));
  app.post("/v1/nodes/bootstrap", async (c) => {
    state.bootstrapCalls++;
    if (state.bootstrapError) {
      const { status, code, message } = state.bootstrapError;
      return c.json({ error: { code, message } }, status as 401);
    }
    const body = BootstrapRequestSchema.parse(await c.req.json());
    if (body.token !== state.token) {
      return c.json({ error: { code: "unauthenticated", message: "bad token" } }, 401);
    }
    const certificate_pem = await signCsr(ca, body.csr_pem, state.nodeName, AGENT_CERT_ORG);
    return c.json({ node_name: state.nodeName, certificate_pem, ca_pem: ca.certPem });
  });
  app.post("/v1/nodes/heartbeat", async (c) => {
    const peer = peerOf(c.env.incoming);
    if (!peer.authorized || peer.organization !== AGENT_CERT_ORG) {
      return c.json({ error: { code: "unauthenticated", message: "client cert required" } }, 401);
    }
    const parsed = HeartbeatRequestSchema.safeParse(await c.req.json());
    if (!parsed.success) {
      return c.json({ error: { code: "validation_failed", message: parsed.error.message } }, 400);
    }
    state.heartbeats.push(parsed.data);
    state.heartbeatPeers.push(peer.commonName ?? "");
    state.heartbeatPorts.push(c.env.incoming.socket.remotePort ?? 0);
    return c.json({
      node_status: "ready",
      desired_pools: state.desiredPools,
      heartbeat_interval_seconds: 1,
    });
  });
  const reportWaiters: {
    pred: (r: NodeReport) => boolean;
    resolve: (r: ReceivedReport) => void;
  }[] = [];
  app.post("/v1/nodes/report", async (c) => {
    const peer = peerOf(c.env.incoming);
    if (!peer.authorized || peer.organization !== AGENT_CERT_ORG) {
      return c.json({ error: { code: "unauthenticated", message: "client cert required" } }, 401);
    }
    const parsed = NodeReportSchema.safeParse(await c.req.json());
    if (!parsed.success) {
      return c.json({ error: { code: "validation_failed", message: parsed.error.message } }, 400);
    }
    if (state.failReports > 0) {
      state.failReports--;
      state.refusedReports++;
      const code = state.failReportsWith;
      return c.json(
        { error: { code, message: "try again" } },
        code === "internal_error" ? 500 : 503,
      );
    }
    const rec = {
      report: parsed.data,
      peer: peer.commonName ?? "",
      at: Date.now(),
      port: c.env.incoming.socket.remotePort ?? 0,
    };
    state.reports.push(rec);
    for (const w of [...reportWaiters]) {
      if (w.pred(rec.report)) {
        reportWaiters.splice(reportWaiters.indexOf(w), 1);
        w.resolve(rec);
      }
    }
    return c.body(null, 204);
  });
  state.waitReport = (pred, { from = state.reports.length, ms = 30_000 } = {}) =>
    new Promise((resolve, reject) => {
      const seen = state.reports.slice(from).find((r) => pred(r.report));
      if (seen) return resolve(seen);
      const t = setTimeout(() => {
        reportWaiters.splice(reportWaiters.indexOf(w), 1);
        reject(new Error(`no matching report within ${ms} ms; got ${state.reports.length}`));
      }, ms);
      const w = {
        pred,
        resolve: (r: ReceivedReport) => {
          clearTimeout(t);
          resolve(r);
        },
      };
      reportWaiters.push(w);
    });
  const server: TlsServer = await serveTls({
    hostname: "127.0.0.1",
    port: 0,
    certPem: serverCert.certPem,
    keyPem: serverCert.keyPem,
    caPem: ca.certPem,
    requireClientCert: false,
    fetch: app.fetch,
    keepAliveTimeoutMs: 10_000,
  });
  const issueClient = async (cn: string, org: string) => {
    const csr = await createCsr(cn, splitSans([]));
    return { certPem: await signCsr(ca, csr.csrPem, cn, org), keyPem: csr.keyPem };
  };
  return Object.assign(state, {
    url: `https://127.0.0.1:${server.port}`,
    cpClient: () => issueClient("cp-1", CP_CERT_ORG),
    agentClient: (name: string) => issueClient(name, AGENT_CERT_ORG),
    close: () => server.close(),
  }) as FakeCp;
}
