import { assert, assertEquals, assertRejects, assertStringIncludes } from "../assert.ts";
import {
  bootstrap,
  BootstrapError,
  certFiles,
  MAX_CA_RESPONSE_BYTES,
} from "../../agent/bootstrap.ts";
import { agentPaths, parseAgentConfig } from "../../agent/config.ts";
import {
  type CertAndKey,
  certInfo,
  createCa,
  createCsr,
  isSignedBy,
  signCsr,
  splitSans,
} from "../../shared/pki.ts";
import { AGENT_CERT_ORG } from "../../shared/constants.ts";
import { startFakeCp } from "./fake_cp.ts";
import { listDir, memoryLogger } from "./helpers.ts";

async function setup(cpUrl: string, fingerprint: string, token = "otxjoin_test-token") {
  const root = await Deno.makeTempDir({ prefix: "otx-boot-" });
  await Deno.mkdir(`${root}/etc`);
  await Deno.writeTextFile(`${root}/etc/bootstrap-token`, `  ${token}\n`);
  const cfg = parseAgentConfig(
    [
      "paths:",
      `  config_dir: ${root}/etc`,
      `  state_dir: ${root}/state`,
      `  run_dir: ${root}/run`,
      "server:",
      '  advertise_url: "https://10.9.8.7:9443"',
      "bootstrap:",
      `  cp_url: ${cpUrl}`,
      `  ca_fingerprint: "${fingerprint}"`,
      "  node_name: node-a",
    ].join("\n"),
  );
  return { root, cfg, files: certFiles(agentPaths(cfg).certDir) };
}

Deno.test("bootstrap: redeems the token, persists cert material, then reuses it", async () => {
  const cp = await startFakeCp();
  const s = await setup(cp.url, cp.fingerprint);
  try {
    const { log, lines } = memoryLogger();
    const id = await bootstrap(s.cfg, log, { hostname: () => "host-x" });
    assertEquals(id.nodeName, "node-a");
    assertEquals(id.bootstrapped, true);
    assert(lines.some((l) => l.includes("agent: bootstrap complete")));
    const info = certInfo(await Deno.readTextFile(s.files.cert));
    assertEquals([info.commonName, info.organization], ["node-a", AGENT_CERT_ORG]);
    assert(info.sans.includes("10.9.8.7") && info.sans.includes("localhost"));
    assert(await isSignedBy(id.certPem, cp.ca.certPem));
    assertEquals(await Deno.readTextFile(s.files.ca), cp.ca.certPem);
    assertEquals((await Deno.stat(s.files.key)).mode! & 0o777, 0o600);
    assertEquals((await Deno.stat(s.files.cert)).mode! & 0o777, 0o644);
    assertEquals((await Deno.stat(s.files.ca)).mode! & 0o777, 0o644);
    assertEquals(await listDir(`${s.root}/state/certs`), ["agent.crt", "agent.key", "ca.crt"]);

    // Second start: no network needed.
    await cp.close();
    const { log: log2, lines: lines2 } = memoryLogger();
    const again = await bootstrap(s.cfg, log2);
    assertEquals([again.nodeName, again.bootstrapped, again.keyPem], ["node-a", false, id.keyPem]);
    assert(lines2.some((l) => l.includes("agent: using existing cert material")));
    assertEquals(cp.bootstrapCalls, 1);

    // A key restored with a loose mode is made private again on the next start.
    await Deno.chmod(s.files.key, 0o644);
    const { log: log3, lines: lines3 } = memoryLogger();
    await bootstrap(s.cfg, log3);
    assertEquals((await Deno.stat(s.files.key)).mode! & 0o777, 0o600);
    assert(lines3.some((l) => l.includes("private key was accessible to other users")));
  } finally {
    await cp.close();
    await Deno.remove(s.root, { recursive: true });
  }
});

Deno.test("bootstrap: pinned fingerprint mismatch is fatal and writes nothing", async () => {
  const cp = await startFakeCp();
  const other = await createCa();
  const wrong = "sha256:" + "ab".repeat(32);
  const s = await setup(cp.url, wrong);
  try {
    const err = await assertRejects(() => bootstrap(s.cfg, memoryLogger().log));
    assert(err instanceof BootstrapError);
    assertEquals(
      err.message,
      `bootstrap: CA fingerprint mismatch (expected ${wrong} got ${cp.fingerprint})`,
    );
    // A MITM serving another CA with the pinned fingerprint claimed in the body.
    cp.servedCaPem = other.certPem;
    cp.servedFingerprint = cp.fingerprint;
    const s2 = await setup(cp.url, cp.fingerprint);
    const err2 = await assertRejects(() => bootstrap(s2.cfg, memoryLogger().log));
    assertStringIncludes(
      err2.message,
      "bootstrap: CA fingerprint mismatch (expected " + cp.fingerprint,
    );
    // The right CA but a wrong fingerprint field.
    cp.servedCaPem = null;
    cp.servedFingerprint = wrong;
    const err3 = await assertRejects(() => bootstrap(s2.cfg, memoryLogger().log));
    assertStringIncludes(err3.message, `served fingerprint ${wrong} does not match`);
    assertEquals(cp.bootstrapCalls, 0);
    assertEquals(await listDir(`${s.root}/state/certs`), []);
    assertEquals(await listDir(`${s2.root}/state/certs`), []);
    await Deno.remove(s2.root, { recursive: true });
  } finally {
    await cp.close();
    await Deno.remove(s.root, { recursive: true });
  }
});

Deno.test("bootstrap: a served CA bundle is refused even when its first certificate is pinned", async () => {
  const cp = await startFakeCp();
  const attacker = await createCa("attacker CA");
  const s = await setup(cp.url, cp.fingerprint);
  try {
    // A MITM appends its own CA: the pin matches the first certificate, but every
    // certificate in ca_pem would be trusted (and written to ca.crt for the mTLS server).
    cp.servedCaPem = cp.ca.certPem + attacker.certPem;
    const err = await assertRejects(() => bootstrap(s.cfg, memoryLogger().log));
    assert(err instanceof BootstrapError);
    assertStringIncludes(err.message, "served CA must be exactly one PEM certificate, got 2");
    // A private key smuggled next to the certificate is refused as well.
    cp.servedCaPem = cp.ca.certPem + attacker.keyPem;
    const err2 = await assertRejects(() => bootstrap(s.cfg, memoryLogger().log));
    assertStringIncludes(err2.message, "exactly one PEM certificate");
    assertEquals(cp.bootstrapCalls, 0);
    assertEquals(await listDir(`${s.root}/state/certs`), []);
  } finally {
    await cp.close();
    await Deno.remove(s.root, { recursive: true });
  }
});

Deno.test("bootstrap: an oversized /v1/ca answer is refused before it is buffered", async () => {
  const cp = await startFakeCp();
  const s = await setup(cp.url, cp.fingerprint);
  try {
    cp.servedCaPem = "A".repeat(MAX_CA_RESPONSE_BYTES + 1);
    const err = await assertRejects(() => bootstrap(s.cfg, memoryLogger().log));
    assertStringIncludes(
      err.message,
      `bootstrap: fetch /v1/ca: response larger than ${MAX_CA_RESPONSE_BYTES} bytes`,
    );
    assertEquals(cp.bootstrapCalls, 0);
  } finally {
    await cp.close();
    await Deno.remove(s.root, { recursive: true });
  }
});

Deno.test("bootstrap: CSR rejection and unreachable CP are fatal with the spec's messages", async () => {
  const cp = await startFakeCp();
  const s = await setup(cp.url, cp.fingerprint);
  try {
    cp.bootstrapError = { status: 401, code: "token_expired", message: "join token expired" };
    const err = await assertRejects(() => bootstrap(s.cfg, memoryLogger().log));
    assertStringIncludes(
      err.message,
      "bootstrap: CSR submission rejected by CP: HTTP 401 token_expired",
    );
    assertEquals(await listDir(`${s.root}/state/certs`), []);
  } finally {
    await cp.close();
  }
  // The CP is gone now.
  const down = await assertRejects(() => bootstrap(s.cfg, memoryLogger().log));
  assertStringIncludes(down.message, "bootstrap: fetch /v1/ca: ");
  assertStringIncludes(down.message, "connection refused");
  await Deno.remove(s.root, { recursive: true });
});

Deno.test("bootstrap: partial cert state is fatal (cert without key and vice-versa)", async () => {
  const s = await setup("https://127.0.0.1:1", "sha256:" + "0".repeat(64));
  try {
    await Deno.mkdir(`${s.root}/state/certs`, { recursive: true });
    await Deno.writeTextFile(s.files.cert, "x");
    const e1 = await assertRejects(() => bootstrap(s.cfg, memoryLogger().log));
    assertStringIncludes(e1.message, `cert ${s.files.cert} exists but key ${s.files.key} missing`);
    await Deno.remove(s.files.cert);
    await Deno.writeTextFile(s.files.key, "x");
    const e2 = await assertRejects(() => bootstrap(s.cfg, memoryLogger().log));
    assertStringIncludes(e2.message, `key ${s.files.key} exists but cert ${s.files.cert} missing`);
  } finally {
    await Deno.remove(s.root, { recursive: true });
  }
});

Deno.test("bootstrap: missing settings and token are reported", async () => {
  const root = await Deno.makeTempDir({ prefix: "otx-boot-" });
  try {
    const cfg = parseAgentConfig(`paths:\n  config_dir: ${root}/etc\n  state_dir: ${root}/state\n`);
    const e = await assertRejects(() => bootstrap(cfg, memoryLogger().log));
    assertStringIncludes(e.message, "bootstrap.cp_url and bootstrap.ca_fingerprint not set");
    const cfg2 = parseAgentConfig(
      `paths:\n  config_dir: ${root}/etc\n  state_dir: ${root}/state\nbootstrap:\n  cp_url: https://127.0.0.1:1\n  ca_fingerprint: "sha256:${
        "0".repeat(64)
      }"\n`,
    );
    const e2 = await assertRejects(() => bootstrap(cfg2, memoryLogger().log));
    assertStringIncludes(
      e2.message,
      `bootstrap: cannot read join token ${root}/etc/bootstrap-token`,
    );
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("bootstrap: an interrupted certificate renewal is completed or discarded", async (t) => {
  const ca = await createCa();
  const pair = async () => {
    const csr = await createCsr("node-a", splitSans(["127.0.0.1"]));
    return {
      keyPem: csr.keyPem,
      certPem: await signCsr(ca, csr.csrPem, "node-a", AGENT_CERT_ORG, 30),
    };
  };
  const scenario = async (
    layout: (f: ReturnType<typeof certFiles>, old: CertAndKey, next: CertAndKey) => Promise<void>,
  ) => {
    const s = await setup("https://127.0.0.1:1", "sha256:" + "0".repeat(64));
    const f = s.files;
    await Deno.mkdir(`${s.root}/state/certs`, { recursive: true });
    const [old, next] = [await pair(), await pair()];
    await Deno.writeTextFile(f.ca, ca.certPem);
    await Deno.writeTextFile(f.key, old.keyPem, { mode: 0o600 });
    await Deno.writeTextFile(f.cert, old.certPem);
    await layout(f, old, next);
    const { log, lines } = memoryLogger();
    try {
      const id = await bootstrap(s.cfg, log);
      return { id, lines, old, next, dir: await listDir(`${s.root}/state/certs`) };
    } finally {
      await Deno.remove(s.root, { recursive: true });
    }
  };
  const done = ["agent.crt", "agent.key", "ca.crt"];

  await t.step("both .next files written: promoted", async () => {
    const r = await scenario(async (f, _old, next) => {
      await Deno.writeTextFile(f.nextKey, next.keyPem, { mode: 0o600 });
      await Deno.writeTextFile(f.nextCert, next.certPem);
    });
    assertEquals([r.id.certPem, r.id.keyPem], [r.next.certPem, r.next.keyPem]);
    assertEquals(r.dir, done);
    assert(r.lines.some((l) => l.includes("completed an interrupted certificate renewal")));
  });

  await t.step("key already moved, certificate not: promoted", async () => {
    const r = await scenario(async (f, _old, next) => {
      await Deno.writeTextFile(f.key, next.keyPem, { mode: 0o600 });
      await Deno.writeTextFile(f.nextCert, next.certPem);
    });
    assertEquals([r.id.certPem, r.id.keyPem], [r.next.certPem, r.next.keyPem]);
    assertEquals(r.dir, done);
  });

  await t.step("a lone .next key (no certificate came): removed, old pair kept", async () => {
    const r = await scenario(async (f, _old, next) => {
      await Deno.writeTextFile(f.nextKey, next.keyPem, { mode: 0o600 });
    });
    assertEquals([r.id.certPem, r.id.keyPem], [r.old.certPem, r.old.keyPem]);
    assertEquals(r.dir, done);
    assert(r.lines.some((l) => l.includes("removed leftovers of an interrupted")));
  });

  await t.step("a .next certificate for no key we hold: removed, old pair kept", async () => {
    const r = await scenario(async (f, _old, next) => {
      await Deno.writeTextFile(f.nextCert, next.certPem);
    });
    assertEquals([r.id.certPem, r.id.keyPem], [r.old.certPem, r.old.keyPem]);
    assertEquals(r.dir, done);
  });
});
