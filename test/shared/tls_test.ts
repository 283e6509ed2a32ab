import { assert, assertEquals, assertRejects } from "../assert.ts";
import { Hono } from "hono";
import { AGENT_CERT_ORG, CP_CERT_ORG } from "../../shared/constants.ts";
import {
  certFingerprint,
  certInfo,
  createCa,
  createCsr,
  isSignedBy,
  issueServerCert,
  keyMatchesCert,
  signCsr,
  splitSans,
} from "../../shared/pki.ts";
import { createTlsClient, peerOf, serveTls, type TlsEnv } from "../../shared/tls.ts";

Deno.test("pki: a CSR signed by the CA gets CN = node name, not the CSR subject", async () => {
  const ca = await createCa();
  const { csrPem, keyPem } = await createCsr("evil-name", splitSans(["10.1.2.3", "node-a"]));
  const certPem = await signCsr(ca, csrPem, "node-a", AGENT_CERT_ORG);
  const info = certInfo(certPem);
  assertEquals(info.commonName, "node-a");
  assertEquals(info.organization, AGENT_CERT_ORG);
  assert(info.sans.includes("10.1.2.3"));
  assert(await isSignedBy(certPem, ca.certPem));
  assert(await keyMatchesCert(keyPem, certPem));
  assert(/^sha256:[0-9a-f]{64}$/.test(await certFingerprint(ca.certPem)));
});

Deno.test("pki: a certificate from another CA does not verify", async () => {
  const ca = await createCa();
  const other = await createCa();
  const cert = await issueServerCert(other, "cp", CP_CERT_ORG, splitSans(["localhost"]));
  assertEquals(await isSignedBy(cert.certPem, ca.certPem), false);
});

Deno.test("tls: mutual TLS with node:https server and Deno fetch client", async () => {
  const ca = await createCa();
  const server = await issueServerCert(
    ca,
    "cp-1",
    CP_CERT_ORG,
    splitSans(["localhost", "127.0.0.1"]),
  );
  const csr = await createCsr("node-a", splitSans([]));
  const clientCert = await signCsr(ca, csr.csrPem, "node-a", AGENT_CERT_ORG);
  const app = new Hono<TlsEnv>().get("/who", (c) => c.json(peerOf(c.env.incoming)));
  const srv = await serveTls({
    hostname: "127.0.0.1",
    port: 0,
    certPem: server.certPem,
    keyPem: server.keyPem,
    caPem: ca.certPem,
    requireClientCert: false,
    fetch: app.fetch,
  });
  try {
    const withCert = createTlsClient({
      caPem: ca.certPem,
      certPem: clientCert,
      keyPem: csr.keyPem,
    });
    const res = await fetch(`https://127.0.0.1:${srv.port}/who`, { client: withCert });
    assertEquals(await res.json(), {
      authorized: true,
      commonName: "node-a",
      organization: AGENT_CERT_ORG,
    });
    withCert.close();
    const anon = createTlsClient({ caPem: ca.certPem });
    const res2 = await fetch(`https://localhost:${srv.port}/who`, { client: anon });
    assertEquals((await res2.json()).authorized, false);
    anon.close();
    // A client that does not trust the server's CA refuses the connection.
    const other = await createCa();
    const wrong = createTlsClient({ caPem: other.certPem });
    await assertRejects(() => fetch(`https://127.0.0.1:${srv.port}/who`, { client: wrong }));
    wrong.close();
  } finally {
    await srv.close();
  }
});
