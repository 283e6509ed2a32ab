import "reflect-metadata";
import * as x509 from "@peculiar/x509";
import { assert, assertEquals, assertRejects, assertStringIncludes } from "../assert.ts";
import { Hono } from "hono";
import { ApiError } from "../../shared/errors.ts";
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
import { createTlsClient, peerOf, requestTls, serveTls, type TlsEnv } from "../../shared/tls.ts";

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

/** A CSR for `keyAlg` (signed with `sigAlg`) requesting `dns` SANs, PEM. */
async function rawCsr(
  dns: string[],
  keyAlg: RsaHashedKeyGenParams | EcKeyGenParams | { name: string } = {
    name: "ECDSA",
    namedCurve: "P-256",
  },
  sigAlg: unknown = { name: "ECDSA", hash: "SHA-256" },
): Promise<string> {
  const keys = await crypto.subtle.generateKey(keyAlg, true, ["sign", "verify"]) as CryptoKeyPair;
  const csr = await x509.Pkcs10CertificateRequestGenerator.create({
    name: "CN=x",
    keys,
    signingAlgorithm: sigAlg as Algorithm,
    extensions: [
      new x509.SubjectAlternativeNameExtension(
        dns.map((value) => ({ type: "dns" as const, value })),
      ),
    ],
  });
  return csr.toString("pem");
}

Deno.test("pki: bad CSRs are validation_failed (never a 500); weak or odd keys are refused", async () => {
  const ca = await createCa();
  const rsa = (bits: number) => ({
    name: "RSASSA-PKCS1-v1_5",
    modulusLength: bits,
    publicExponent: new Uint8Array([1, 0, 1]),
    hash: "SHA-256",
  });
  const bad: [string, string][] = [
    ["DNS SAN with ':'", await rawCsr(["a:b"])],
    ["DNS SAN that is an invalid dotted quad", await rawCsr(["999.1.1.1"])],
    ["wildcard DNS SAN", await rawCsr(["*.lan"])],
    ["DNS SAN with a space", await rawCsr(["x y"])],
    ["too many SANs", await rawCsr(Array.from({ length: 40 }, (_, i) => `h${i}.lan`))],
    [
      "P-384 key",
      await rawCsr([], { name: "ECDSA", namedCurve: "P-384" }, { name: "ECDSA", hash: "SHA-384" }),
    ],
    ["Ed25519 key", await rawCsr([], { name: "Ed25519" }, { name: "Ed25519" })],
    ["1024-bit RSA key", await rawCsr([], rsa(1024), { name: "RSASSA-PKCS1-v1_5" })],
  ];
  for (const [what, pem] of bad) {
    const e = await assertRejects(() => signCsr(ca, pem, "node-a", AGENT_CERT_ORG), what);
    assert(e instanceof ApiError && e.code === "validation_failed", `${what}: ${e}`);
  }
  // Real host names (underscores too) and RSA >= 2048 are fine.
  const ok = await signCsr(ca, await rawCsr(["node-a.lan", "my_host"]), "node-a", AGENT_CERT_ORG);
  assert(certInfo(ok).sans.includes("my_host"));
  await signCsr(ca, await rawCsr([], rsa(2048), { name: "RSASSA-PKCS1-v1_5" }), "n", "o");
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

Deno.test("tls: requestTls accepts only the expected subject and caps the body", async () => {
  const ca = await createCa();
  const cp = await issueServerCert(ca, "cp-1", CP_CERT_ORG, splitSans(["127.0.0.1"]));
  const csr = await createCsr("node-a", splitSans(["127.0.0.1"]));
  const agent = {
    certPem: await signCsr(ca, csr.csrPem, "node-a", AGENT_CERT_ORG),
    keyPem: csr.keyPem,
  };
  let hits = 0;
  const app = new Hono<TlsEnv>()
    .get("/who", (c) => {
      hits++;
      return c.json(peerOf(c.env.incoming));
    })
    .get("/big", () => new Response("x".repeat(2048)));
  const serve = (cert: { certPem: string; keyPem: string }) =>
    serveTls({
      hostname: "127.0.0.1",
      port: 0,
      ...cert,
      caPem: ca.certPem,
      requireClientCert: false,
      fetch: app.fetch,
    });
  // An agent's (valid, same-CA) certificate where a control plane is expected: refused.
  const fakeCp = await serve(agent);
  try {
    const e = await assertRejects(() =>
      requestTls(`https://127.0.0.1:${fakeCp.port}/who`, {
        tls: { caPem: ca.certPem },
        expect: { organization: CP_CERT_ORG },
      })
    );
    assertStringIncludes(e.message, `O=${AGENT_CERT_ORG} is not ${CP_CERT_ORG}`);
    assertEquals(hits, 0);
  } finally {
    await fakeCp.close();
  }
  const realCp = await serve(cp);
  try {
    const res = await requestTls(`https://127.0.0.1:${realCp.port}/who`, {
      tls: { caPem: ca.certPem, certPem: agent.certPem, keyPem: agent.keyPem },
      expect: { organization: CP_CERT_ORG, commonName: "cp-1" },
    });
    assertEquals(res.status, 200);
    assertEquals((await res.json()).commonName, "node-a");
    const wrongName = await assertRejects(() =>
      requestTls(`https://127.0.0.1:${realCp.port}/who`, {
        tls: { caPem: ca.certPem },
        expect: { organization: CP_CERT_ORG, commonName: "cp-2" },
      })
    );
    assertStringIncludes(wrongName.message, "CN=cp-1 is not cp-2");
    const big = await assertRejects(() =>
      requestTls(`https://127.0.0.1:${realCp.port}/big`, {
        tls: { caPem: ca.certPem },
        expect: { organization: CP_CERT_ORG },
        maxBodyBytes: 1024,
      })
    );
    assertStringIncludes(big.message, "exceeds 1024 bytes");
  } finally {
    await realCp.close();
  }
});
