/**
 * Node certificate pinning and renewal on the agent-facing port (cp/nodes/certs.ts,
 * cp/nodes/agent_api.ts): an in-process control plane, agents bootstrapped through the real
 * `/v1/nodes/bootstrap` endpoint, and every call over real mTLS with the certificate under
 * test.
 */
import { assert, assertEquals, assertStringIncludes } from "../assert.ts";
import type { ControlPlane } from "../../cp/app.ts";
import { certPin, checkPin, DEFAULT_AGENT_CERT_VALIDITY_SECONDS } from "../../cp/nodes/certs.ts";
import { keys, type NodeRecord } from "../../cp/repo/records.ts";
import { AGENT_CERT_ORG, CP_CERT_ORG } from "../../shared/constants.ts";
import { ApiError } from "../../shared/errors.ts";
import { certInfo, createCsr, isSignedBy, keyMatchesCert, splitSans } from "../../shared/pki.ts";
import { requestTls } from "../../shared/tls.ts";
import { FakeAgent, LogCapture, startTestCp } from "./fixtures.ts";

/** Client material of an agent certificate. */
interface Material {
  certPem: string;
  keyPem: string;
}

/** POSTs `body` to the agent-facing `path` presenting `m`; returns status and JSON body. */
async function post(cp: ControlPlane, m: Material, path: string, body: unknown) {
  const res = await requestTls(`https://127.0.0.1:${cp.agentPort}${path}`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
    tls: { caPem: cp.ctx.pki.ca.certPem, certPem: m.certPem, keyPem: m.keyPem },
    expect: { organization: CP_CERT_ORG },
  });
  const text = await res.text();
  return { status: res.status, json: text ? JSON.parse(text) : null };
}

/** A report (the smallest authenticated call) from node `name` with `m`. */
function report(cp: ControlPlane, m: Material, name: string) {
  return post(cp, m, "/v1/nodes/report", { node_name: name, vms: [], tasks: [] });
}

/** A renewal with a fresh key and a CSR for `cn`; returns the answer and the new key. */
async function renew(cp: ControlPlane, m: Material, cn: string) {
  const csr = await createCsr(cn, splitSans(["127.0.0.1", "localhost"]));
  const res = await post(cp, m, "/v1/nodes/renew", { csr_pem: csr.csrPem });
  return { ...res, keyPem: csr.keyPem };
}

async function record(cp: ControlPlane, name: string): Promise<NodeRecord | null> {
  return (await cp.ctx.store.get<NodeRecord>(keys.node(name)))?.value ?? null;
}

async function withCp(fn: (cp: ControlPlane, logs: LogCapture) => Promise<void>) {
  const dir = await Deno.makeTempDir({ prefix: "otx-certs-" });
  const logs = new LogCapture();
  const cp = await startTestCp(dir, logs);
  try {
    await fn(cp, logs);
  } finally {
    await cp.stop();
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("certs: checkPin accepts the pinned or an unpinned certificate only", () => {
  const rec = { cert_fingerprint: "sha256:aa" } as NodeRecord;
  checkPin(rec, "n", "sha256:aa");
  checkPin({ ...rec, cert_fingerprint: null }, "n", "sha256:bb");
  checkPin({} as NodeRecord, "n", "sha256:bb"); // older record without the field
  const codeOf = (fn: () => void) => {
    try {
      fn();
    } catch (e) {
      return (e as ApiError).code;
    }
    return null;
  };
  assertEquals(codeOf(() => checkPin(rec, "n", "sha256:bb")), "unauthenticated");
  assertEquals(codeOf(() => checkPin(rec, "n", null)), "unauthenticated");
  assertEquals(codeOf(() => checkPin(null, "n", "sha256:aa")), "node_not_found");
});

Deno.test("certs: renewal over mTLS pins the new certificate and refuses the previous one", async (t) => {
  await withCp(async (cp, logs) => {
    const agent = new FakeAgent(cp, "node-a");
    await agent.bootstrap();
    const first: Material = { certPem: agent.certPem, keyPem: agent.keyPem };
    let second!: Material;
    // The renewal lifetime comes from `nodes.agent_cert_validity_seconds`.
    (cp.ctx.cfg.nodes as Record<string, unknown>).agent_cert_validity_seconds = 2 * 24 * 3600;
    try {
      await t.step("the bootstrap certificate is accepted", async () => {
        assertEquals((await report(cp, first, "node-a")).status, 204);
      });

      await t.step("renewal signs a CSR for the same CN and pins the new certificate", async () => {
        const before = Date.now();
        const res = await renew(cp, first, "node-a");
        assertEquals(res.status, 200, JSON.stringify(res.json));
        const pem: string = res.json.certificate_pem;
        assertEquals(res.json.ca_pem, cp.ctx.pki.ca.certPem);
        assert(await isSignedBy(pem, cp.ctx.pki.ca.certPem));
        assert(await keyMatchesCert(res.keyPem, pem));
        const info = certInfo(pem);
        assertEquals([info.commonName, info.organization], ["node-a", AGENT_CERT_ORG]);
        const lifetimeS = (info.notAfter.getTime() - before) / 1000;
        assert(Math.abs(lifetimeS - 2 * 24 * 3600) < 60, `lifetime ${lifetimeS} s`);
        assertEquals((await record(cp, "node-a"))?.cert_fingerprint, await certPin(pem));
        assert(logs.has("node certificate renewed", { node: "node-a" }));
        second = { certPem: pem, keyPem: res.keyPem };
      });

      await t.step("the previous certificate is refused (401), the new one works", async () => {
        const old = await report(cp, first, "node-a");
        assertEquals([old.status, old.json.error.code], [401, "unauthenticated"]);
        const hb = await post(cp, first, "/v1/nodes/heartbeat", { node_name: "node-a" });
        assertEquals([hb.status, hb.json.error.code], [401, "unauthenticated"]);
        const again = await renew(cp, first, "node-a");
        assertEquals([again.status, again.json.error.code], [401, "unauthenticated"]);
        assertEquals((await report(cp, second, "node-a")).status, 204);
      });

      await t.step("a CSR for another node or a bad CSR changes nothing", async () => {
        const pin = (await record(cp, "node-a"))?.cert_fingerprint;
        const other = await renew(cp, second, "node-b");
        assertEquals([other.status, other.json.error.code], [403, "permission_denied"]);
        const bad = await post(cp, second, "/v1/nodes/renew", { csr_pem: "not a csr" });
        assertEquals([bad.status, bad.json.error.code], [400, "validation_failed"]);
        const empty = await post(cp, second, "/v1/nodes/renew", {});
        assertEquals([empty.status, empty.json.error.code], [400, "validation_failed"]);
        assertEquals((await record(cp, "node-a"))?.cert_fingerprint, pin);
        assertEquals((await report(cp, second, "node-a")).status, 204);
      });

      await t.step("without a client certificate renewal is refused", async () => {
        const res = await requestTls(`https://127.0.0.1:${cp.agentPort}/v1/nodes/renew`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ csr_pem: "x" }),
          tls: { caPem: cp.ctx.pki.ca.certPem },
          expect: { organization: CP_CERT_ORG },
        });
        assertEquals([res.status, (await res.json()).error.code], [401, "unauthenticated"]);
      });

      await t.step("a deleted node's certificate is refused (404 node_not_found)", async () => {
        await cp.ctx.store.delete(keys.node("node-a"));
        const rep = await report(cp, second, "node-a");
        assertEquals([rep.status, rep.json.error.code], [404, "node_not_found"]);
        const res = await renew(cp, second, "node-a");
        assertEquals([res.status, res.json.error.code], [404, "node_not_found"]);
        assertEquals(await record(cp, "node-a"), null);
      });
    } finally {
      await agent.close();
    }
  });
});

Deno.test("certs: a record without a pin accepts the node's CA-signed certificate until renewal", async () => {
  await withCp(async (cp) => {
    const agent = new FakeAgent(cp, "node-c");
    await agent.bootstrap();
    try {
      const m: Material = { certPem: agent.certPem, keyPem: agent.keyPem };
      // Older data: written before pinning existed.
      const cur = (await record(cp, "node-c"))!;
      const { cert_fingerprint: _, ...older } = cur;
      await cp.ctx.store.put(keys.node("node-c"), older);
      assertEquals((await report(cp, m, "node-c")).status, 204);
      const res = await renew(cp, m, "node-c");
      assertEquals(res.status, 200);
      assertEquals(
        (await record(cp, "node-c"))?.cert_fingerprint,
        await certPin(res.json.certificate_pem),
      );
      assertEquals((await report(cp, m, "node-c")).status, 401);
    } finally {
      await agent.close();
    }
  });
});

Deno.test("certs: a re-bootstrapped node's previous certificate is refused", async () => {
  await withCp(async (cp) => {
    const first = new FakeAgent(cp, "node-r");
    const second = new FakeAgent(cp, "node-r");
    try {
      await first.bootstrap();
      const rec = await record(cp, "node-r");
      assertEquals(
        rec?.cert_fingerprint,
        await certPin(first.certPem),
        "bootstrapNode (cp/nodes/service.ts) must pin the issued certificate (certs.ts issueAgentCert)",
      );
      await second.bootstrap();
      assertEquals((await record(cp, "node-r"))?.cert_fingerprint, await certPin(second.certPem));
      const old = await report(cp, first, "node-r");
      assertEquals([old.status, old.json.error.code], [401, "unauthenticated"]);
      assertStringIncludes(old.json.error.message, "superseded");
      assertEquals((await report(cp, second, "node-r")).status, 204);
      // Bootstrap uses the configured agent-certificate lifetime too (default 365 days).
      const days = (certInfo(second.certPem).notAfter.getTime() - Date.now()) / 86400_000;
      assert(Math.abs(days - DEFAULT_AGENT_CERT_VALIDITY_SECONDS / 86400) < 0.01, `${days}`);
    } finally {
      await first.close();
      await second.close();
    }
  });
});
