/**
 * Agent certificate renewal (agent/renew.ts): the schedule with an injected clock against a
 * CA-backed requester, refusal of answers that are not for our key, and a real `otherix-agent`
 * process that renews against an in-process control plane without a join token.
 */
import { assert, assertEquals, assertRejects, assertStringIncludes } from "../assert.ts";
import { type AgentIdentity, certFiles } from "../../agent/bootstrap.ts";
import { renewalDueAt, type RenewRequester, startRenewer } from "../../agent/renew.ts";
import { createJoinToken } from "../../cp/join_tokens.ts";
import { certPin } from "../../cp/nodes/certs.ts";
import { bootstrapNode } from "../../cp/nodes/service.ts";
import { keys, type NodeRecord } from "../../cp/repo/records.ts";
import { updateKey } from "../../cp/store/store.ts";
import { AGENT_CERT_ORG, CP_CERT_ORG } from "../../shared/constants.ts";
import {
  type CertAndKey,
  certInfo,
  createCa,
  createCsr,
  keyMatchesCert,
  signCsr,
  splitSans,
} from "../../shared/pki.ts";
import { requestTls } from "../../shared/tls.ts";
import { LogCapture, startTestCp } from "../cp/fixtures.ts";
import { startAgent, tempRoot, waitFor } from "../harness.ts";
import { listDir, memoryLogger } from "./helpers.ts";

const DAY_MS = 24 * 3600 * 1000;

/** An identity for `node` signed by `ca` with `validityDays`, written to `certDir`. */
async function identityIn(
  certDir: string,
  ca: CertAndKey,
  node: string,
  validityDays: number,
): Promise<AgentIdentity> {
  const csr = await createCsr(node, splitSans(["127.0.0.1", "localhost"]));
  const certPem = await signCsr(ca, csr.csrPem, node, AGENT_CERT_ORG, validityDays);
  const f = certFiles(certDir);
  await Deno.mkdir(certDir, { recursive: true });
  await Deno.writeTextFile(f.ca, ca.certPem);
  await Deno.writeTextFile(f.key, csr.keyPem, { mode: 0o600 });
  await Deno.writeTextFile(f.cert, certPem);
  return { nodeName: node, certPem, keyPem: csr.keyPem, caPem: ca.certPem, bootstrapped: false };
}

/** A requester that signs like the control plane (or as `tamper` says), counting calls. */
function caRequester(ca: CertAndKey, tamper?: "other-key" | "other-cn") {
  const calls: AgentIdentity[] = [];
  const request: RenewRequester = async (identity, csrPem) => {
    calls.push(identity);
    let csr = csrPem;
    if (tamper === "other-key") csr = (await createCsr(identity.nodeName, splitSans([]))).csrPem;
    const cn = tamper === "other-cn" ? "someone-else" : identity.nodeName;
    const certPem = await signCsr(ca, csr, cn, AGENT_CERT_ORG, 30);
    return { certificate_pem: certPem, ca_pem: ca.certPem };
  };
  return { request, calls };
}

Deno.test("renew: due at 2/3 of notBefore..notAfter", async () => {
  const ca = await createCa();
  const dir = await Deno.makeTempDir({ prefix: "otx-renew-" });
  try {
    const id = await identityIn(dir, ca, "node-a", 30);
    const info = certInfo(id.certPem);
    const { dueAt, notAfter } = renewalDueAt(id.certPem);
    const start = info.notBefore.getTime();
    assertEquals(notAfter.getTime(), info.notAfter.getTime());
    assertEquals(dueAt.getTime(), start + Math.round((notAfter.getTime() - start) * 2 / 3));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("renew: renews only once due, writes the pair atomically and switches identity", async (t) => {
  const ca = await createCa();
  const dir = await Deno.makeTempDir({ prefix: "otx-renew-" });
  const files = certFiles(dir);
  let identity = await identityIn(dir, ca, "node-a", 30);
  const first = identity;
  const { dueAt } = renewalDueAt(first.certPem);
  let clock = new Date(dueAt.getTime() - 1000);
  const { request, calls } = caRequester(ca);
  const { log, lines } = memoryLogger();
  const renewed: AgentIdentity[] = [];
  const renewer = startRenewer({
    certDir: dir,
    identity: () => identity,
    onRenewed: (next) => {
      identity = next;
      renewed.push(next);
    },
    request,
    log,
    now: () => clock,
  });
  try {
    await t.step("not due: the check at start sends nothing", async () => {
      assertEquals(await renewer.check(), false);
      assertEquals(calls.length, 0);
      assertEquals(await Deno.readTextFile(files.cert), first.certPem);
    });

    await t.step("due: a CSR for the same node, authenticated with the current cert", async () => {
      clock = new Date(dueAt.getTime() + 1);
      assertEquals(await renewer.check(), true);
      assertEquals(calls.length, 1);
      assertEquals(calls[0].certPem, first.certPem);
      assertEquals(renewed.length, 1);
      const next = renewed[0];
      assert(next.certPem !== first.certPem && next.keyPem !== first.keyPem);
      assertEquals([next.nodeName, next.caPem], ["node-a", first.caPem]);
      assertEquals(await Deno.readTextFile(files.cert), next.certPem);
      assertEquals(await Deno.readTextFile(files.key), next.keyPem);
      assert(await keyMatchesCert(next.keyPem, next.certPem));
      assertEquals((await Deno.stat(files.key)).mode! & 0o777, 0o600);
      assertEquals(await listDir(dir), ["agent.crt", "agent.key", "ca.crt"]);
      assertEquals(certInfo(next.certPem).sans.sort(), certInfo(first.certPem).sans.sort());
      const line = lines.find((l) => l.includes("certificate renewed"));
      assert(line, lines.join("\n"));
      assertEquals(JSON.parse(line).not_after, certInfo(next.certPem).notAfter.toISOString());
    });

    await t.step("the new certificate is not due until 2/3 of its own lifetime", async () => {
      clock = new Date(renewalDueAt(identity.certPem).dueAt.getTime() - 1000);
      assertEquals(await renewer.check(), false);
      assertEquals(calls.length, 1);
    });
  } finally {
    await renewer.stop();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("renew: an answer for another key or node is refused and changes nothing", async () => {
  const ca = await createCa();
  for (const tamper of ["other-key", "other-cn"] as const) {
    const dir = await Deno.makeTempDir({ prefix: "otx-renew-" });
    try {
      const identity = await identityIn(dir, ca, "node-a", 30);
      const { request } = caRequester(ca, tamper);
      const renewer = startRenewer({
        certDir: dir,
        identity: () => identity,
        onRenewed: () => {
          throw new Error("must not switch");
        },
        request,
        log: memoryLogger().log,
        now: () => new Date(Date.now() + 29 * DAY_MS),
        retryMs: 3600_000,
      });
      try {
        const err = await assertRejects(() => renewer.check());
        assertStringIncludes(err.message, tamper === "other-key" ? "our key" : "CN=someone-else");
      } finally {
        await renewer.stop();
      }
      assertEquals(await Deno.readTextFile(certFiles(dir).cert), identity.certPem);
      assertEquals(await listDir(dir), ["agent.crt", "agent.key", "ca.crt"]);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  }
});

Deno.test("renew: a failed renewal is logged and retried with backoff", async () => {
  const ca = await createCa();
  const dir = await Deno.makeTempDir({ prefix: "otx-renew-" });
  try {
    const identity = await identityIn(dir, ca, "node-a", 30);
    let attempts = 0;
    const { log, lines } = memoryLogger();
    const renewer = startRenewer({
      certDir: dir,
      identity: () => identity,
      onRenewed: () => {},
      request: () => {
        attempts++;
        return Promise.reject(new Error("HTTP 401 unauthenticated: superseded"));
      },
      log,
      now: () => new Date(Date.now() + 29 * DAY_MS),
      retryMs: 5,
      maxRetryMs: 20,
    });
    try {
      await waitFor("three attempts", () => Promise.resolve(attempts >= 3), 10_000, 5);
    } finally {
      await renewer.stop();
    }
    const failed = lines.filter((l) => l.includes("certificate renewal failed"));
    assert(failed.length >= 2, lines.join("\n"));
    assertStringIncludes(failed[0], "superseded");
    assertEquals(JSON.parse(failed[0]).retry_in_ms, 5);
    assertEquals(JSON.parse(failed[1]).retry_in_ms, 10);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("renew: a real agent renews over mTLS without a token; the old cert is refused", async () => {
  const root = await tempRoot("otx-renew");
  const logs = new LogCapture();
  const cp = await startTestCp(`${root}/cp`, logs);
  // Renewed certificates live a day (no second renewal during the test).
  (cp.ctx.cfg.nodes as Record<string, unknown>).agent_cert_validity_seconds = 24 * 3600;
  let agent;
  try {
    // Register node-a, then give its agent a 20 s certificate, pinned: due after ~13 s.
    const tok = await createJoinToken(cp.ctx.store, { node_name: "node-a" }, {
      defaultTtlSeconds: 60,
      createdBy: "test",
      caFingerprint: cp.caFingerprint,
      now: new Date(),
    });
    await bootstrapNode(cp.ctx, tok.token, (await createCsr("node-a", splitSans([]))).csrPem);
    const certDir = `${root}/var/lib/otherix/certs`;
    const old = await identityIn(certDir, cp.ctx.pki.ca, "node-a", 20 / 86400);
    const oldPin = await certPin(old.certPem);
    await updateKey<NodeRecord>(cp.ctx.store, keys.node("node-a"), (cur) => ({
      ...cur!,
      cert_fingerprint: oldPin,
    }));
    agent = await startAgent({
      root,
      cpUrl: `https://127.0.0.1:${cp.agentPort}`,
      caFingerprint: cp.caFingerprint,
      nodeName: "node-a",
    });
    await agent.proc.waitForOutput((o) => o.includes("certificate renewed"), 40_000);
    const renewedAt = new Date();
    const line = agent.proc.output.split("\n").find((l) => l.includes("certificate renewed"))!;
    assertEquals(agent.proc.output.includes("bootstrap: fetching cluster CA"), false);

    const files = certFiles(certDir);
    const certPem = await Deno.readTextFile(files.cert);
    const keyPem = await Deno.readTextFile(files.key);
    assert(certPem !== old.certPem);
    assert(await keyMatchesCert(keyPem, certPem));
    assertEquals((await Deno.stat(files.key)).mode! & 0o777, 0o600);
    assertEquals(await listDir(certDir), ["agent.crt", "agent.key", "ca.crt"]);
    assertEquals(JSON.parse(line).not_after, certInfo(certPem).notAfter.toISOString());
    assertEquals(
      (await cp.ctx.store.get<NodeRecord>(keys.node("node-a")))?.value.cert_fingerprint,
      await certPin(certPem),
    );

    const post = (m: { certPem: string; keyPem: string }) =>
      requestTls(`https://127.0.0.1:${cp.agentPort}/v1/nodes/report`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ node_name: "node-a", vms: [], tasks: [] }),
        tls: { caPem: cp.ctx.pki.ca.certPem, ...m },
        expect: { organization: CP_CERT_ORG },
      });
    const refused = await post(old);
    const body = await refused.json();
    assertEquals([refused.status, body.error.code], [401, "unauthenticated"]);
    assertStringIncludes(body.error.message, "superseded"); // the pin, not the expiry
    const accepted = await post({ certPem, keyPem });
    await accepted.body?.cancel();
    assertEquals(accepted.status, 204);

    // The agent's own heartbeats carry on with the new certificate.
    await waitFor(
      "a heartbeat after the renewal",
      // Liveness is kept in memory (a heartbeat that changes nothing is not written).
      () => Promise.resolve((cp.ctx.liveness?.get("node-a") ?? 0) > renewedAt.getTime()),
      15_000,
      100,
    );
  } catch (e) {
    throw new Error(`${(e as Error).message}\n--- agent ---\n${agent?.proc.output}`);
  } finally {
    await agent?.proc.stop();
    await cp.stop();
    await Deno.remove(root, { recursive: true });
  }
});
