// deno-lint-ignore-file no-explicit-any -- JSON responses are inspected dynamically
/**
 * Process-level test of the real `otherix-api`: started from source under the permission
 * sandbox `scripts/permissions.ts` generates, with a temporary data dir, exercised over real
 * HTTP/TLS, then restarted on the same data dir.
 */
import { assert, assertEquals, assertMatch, assertNotEquals } from "../assert.ts";
import { denoRunArgs } from "../../scripts/permissions.ts";
import { AGENT_CERT_ORG } from "../../shared/constants.ts";
import { certInfo, createCsr, splitSans, toHex } from "../../shared/pki.ts";
import { createTlsClient } from "../../shared/tls.ts";
import { waitFor } from "../harness.ts";

const ADMIN = { email: "admin@otherix.test", password: "correct-horse-battery-staple" };

interface Started {
  child: Deno.ChildProcess;
  output: () => string;
  publicUrl: string;
  agentUrl: string;
  fingerprint: string;
  done: Promise<void>;
}

/** Starts the real binary and waits for its `otherix-api started` log line. */
async function startApi(cfgFile: string, dataDir: string): Promise<Started> {
  const child = new Deno.Command("deno", {
    args: denoRunArgs("otherix-api", { config: cfgFile, state: dataDir, run: dataDir }, [
      "--config",
      cfgFile,
    ]),
    env: {
      OTHERIX_BOOTSTRAP_ADMIN_EMAIL: ADMIN.email,
      OTHERIX_BOOTSTRAP_ADMIN_PASSWORD: ADMIN.password,
    },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let out = "";
  const dec = new TextDecoder();
  const pump = async (s: ReadableStream<Uint8Array>) => {
    for await (const c of s) out += dec.decode(c, { stream: true });
  };
  const done = Promise.all([pump(child.stdout), pump(child.stderr)]).then(() => {});
  const deadline = Date.now() + 30_000;
  for (;;) {
    const line = out.split("\n").find((l) => l.includes('"otherix-api started"'));
    if (line) {
      const rec = JSON.parse(line);
      return {
        child,
        output: () => out,
        publicUrl: `http://127.0.0.1:${rec.public_port}`,
        agentUrl: `https://127.0.0.1:${rec.agent_port}`,
        fingerprint: rec.ca_fingerprint,
        done,
      };
    }
    if (Date.now() > deadline) {
      try {
        child.kill("SIGKILL");
      } catch { /* gone */ }
      await done;
      throw new Error(`otherix-api did not start:\n${out}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function stopApi(p: Started | null): Promise<number | null> {
  if (!p) return null;
  try {
    p.child.kill("SIGTERM");
  } catch { /* already gone */ }
  const t = setTimeout(() => {
    try {
      p.child.kill("SIGKILL");
    } catch { /* gone */ }
  }, 10_000);
  const status = await p.child.status;
  clearTimeout(t);
  await p.done;
  return status.code;
}

interface Res {
  status: number;
  json: any;
  text: string;
}

async function call(
  base: string,
  method: string,
  path: string,
  opts: { token?: string; body?: unknown; client?: Deno.HttpClient; raw?: string } = {},
): Promise<Res> {
  const headers: Record<string, string> = { "content-type": "application/json" };
  if (opts.token) headers.authorization = `Bearer ${opts.token}`;
  const res = await fetch(base + path, {
    method,
    headers,
    client: opts.client,
    body: opts.raw ?? (opts.body === undefined ? undefined : JSON.stringify(opts.body)),
  });
  const text = await res.text();
  let json: any = null;
  try {
    json = JSON.parse(text);
  } catch { /* not JSON */ }
  return { status: res.status, json, text };
}

async function sha256OfPemDer(pem: string): Promise<string> {
  const b64 = pem.replace(/-----[^-]+-----/g, "").replace(/\s+/g, "");
  const der = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  return "sha256:" + toHex(new Uint8Array(await crypto.subtle.digest("SHA-256", der)));
}

function heartbeat(nodeName: string, poolsDir: string, poolsReady: boolean) {
  return {
    node_name: nodeName,
    endpoint: "https://127.0.0.1:1",
    architecture: "amd64",
    accelerator: "tcg",
    agent_version: "test",
    pools_dir: poolsDir,
    resources: {
      cpu_cores_total: 8,
      load_average_1m: 0,
      memory_total_mib: 16384,
      memory_available_mib: 8192,
      system_disk_total_bytes: 1e12,
      system_disk_available_bytes: 5e11,
    },
    pools: poolsReady
      ? [{
        name: "default",
        path: `${poolsDir}/default`,
        status: "ready",
        message: null,
        total_bytes: 1e12,
        available_bytes: 5e11,
        images: [],
      }]
      : [],
    vms: [],
  };
}

Deno.test({
  name: "otherix-api process: auth, PKI, bootstrap, heartbeat, VM validation, restart",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const root = await Deno.makeTempDir({ prefix: "otx-api-" });
    const dataDir = `${root}/data`;
    const cfgFile = `${root}/api.yaml`;
    const poolsDir = `${root}/agent/pools`;
    await Deno.writeTextFile(
      cfgFile,
      [
        "server:",
        "  listen: 127.0.0.1:0",
        "  agent_listen: 127.0.0.1:0",
        "store:",
        `  data_dir: ${dataDir}`,
        "nodes:",
        "  heartbeat_interval_seconds: 1",
        "  stale_threshold_seconds: 2",
        "storage_pools:",
        `  allowed_path_prefixes: ["${root}/agent/pools/"]`,
        "images:", // images come from loopback: opt in (refused by default)
        "  url_policy: {allow_loopback: true}",
        "workers:",
        "  poll_interval_ms: 100",
        "log:",
        "  level: debug",
        "",
      ].join("\n"),
    );
    let api: Started | null = null;
    const clients: Deno.HttpClient[] = [];
    try {
      api = await startApi(cfgFile, dataDir);
      const P = api.publicUrl;
      const out1 = api.output();
      assert(out1.includes('"bootstrap admin created"') && out1.includes(ADMIN.email));
      assert(!out1.includes(ADMIN.password), "the password is never logged");
      for (const line of out1.trim().split("\n")) JSON.parse(line); // structured logs only

      // health
      assertEquals((await call(P, "GET", "/healthz")).status, 200);
      assertEquals((await call(P, "GET", "/readyz")).json, { status: "ok" });

      // login
      const wrong = await call(P, "POST", "/v1/auth/login", {
        body: { email: ADMIN.email, password: "nope" },
      });
      const unknown = await call(P, "POST", "/v1/auth/login", {
        body: { email: "ghost@otherix.test", password: "nope" },
      });
      assertEquals([wrong.status, wrong.json.error.code], [401, "unauthenticated"]);
      assertEquals(unknown.json.error.message, wrong.json.error.message);
      const login = await call(P, "POST", "/v1/auth/login", { body: ADMIN });
      assertEquals(login.status, 200);
      assertEquals(login.json.token_type, "Bearer");
      assertEquals(login.json.expires_in, 900);
      const jwt: string = login.json.access_token;
      const me = await call(P, "GET", "/v1/users/me", { token: jwt });
      assertEquals([me.json.email, me.json.role], [ADMIN.email, "admin"]);

      // unauthenticated
      for (const token of [undefined, "garbage", "otx_" + "A".repeat(43), jwt + "x"]) {
        const r = await call(P, "GET", "/v1/vms", { token });
        assertEquals([r.status, r.json.error.code], [401, "unauthenticated"], String(token));
      }

      // API tokens: secret shown once
      const tok = await call(P, "POST", "/v1/users/me/api-tokens", {
        token: jwt,
        body: { name: "cli", description: "operator workstation" },
      });
      assertEquals(tok.status, 201);
      assertMatch(tok.json.plaintext_token, /^otx_[A-Za-z0-9_-]{43,}$/);
      const apiToken: string = tok.json.plaintext_token;
      const listed = await call(P, "GET", "/v1/users/me/api-tokens", { token: jwt });
      assertEquals(listed.json.items.map((t: { id: string }) => t.id), [tok.json.id]);
      assert(!listed.text.includes(apiToken) && !listed.text.includes("plaintext_token"));
      assertEquals((await call(P, "GET", "/v1/users/me", { token: apiToken })).json.role, "admin");

      // RBAC
      const viewer = { email: "viewer@otherix.test", password: "viewer-password" };
      assertEquals(
        (await call(P, "POST", "/v1/users", { token: jwt, body: { ...viewer, role: "viewer" } }))
          .status,
        201,
      );
      const vjwt = (await call(P, "POST", "/v1/auth/login", { body: viewer })).json.access_token;
      const denied = await call(P, "POST", "/v1/vms", {
        token: vjwt,
        body: { name: "x", image_url: "http://h/i.img", architecture: "amd64" },
      });
      assertEquals([denied.status, denied.json.error.code], [403, "permission_denied"]);
      assertEquals(
        (await call(P, "POST", "/v1/nodes/join-tokens", { token: vjwt, body: { node_name: "n" } }))
          .json.error.code,
        "permission_denied",
      );
      assertEquals((await call(P, "GET", "/v1/vms", { token: vjwt })).status, 200);

      // CA over the agent port; fingerprint = sha256(DER of <data_dir>/pki/ca.crt)
      const caPem = await Deno.readTextFile(`${dataDir}/pki/ca.crt`);
      const anon = createTlsClient({ caPem });
      clients.push(anon);
      const A = api.agentUrl;
      const ca = await call(A, "GET", "/v1/ca", { client: anon });
      assertEquals(ca.json.fingerprint, await sha256OfPemDer(caPem));
      assertEquals(ca.json.fingerprint, api.fingerprint);
      assertEquals((await call(A, "GET", "/healthz", { client: anon })).status, 200);

      // join token → bootstrap with a real CSR over TLS
      const jt = await call(P, "POST", "/v1/nodes/join-tokens", {
        token: apiToken,
        body: { node_name: "node-a" },
      });
      assertEquals(jt.status, 201);
      assertMatch(jt.json.token, /^otxjoin_/);
      assertEquals([jt.json.max_uses, jt.json.ca_fingerprint], [1, api.fingerprint]);
      const csr = await createCsr("ignored-subject", splitSans(["127.0.0.1"]));
      const boot = await call(A, "POST", "/v1/nodes/bootstrap", {
        client: anon,
        body: { token: jt.json.token, csr_pem: csr.csrPem },
      });
      assertEquals(boot.status, 200, boot.text);
      assertEquals(boot.json.node_name, "node-a");
      const info = certInfo(boot.json.certificate_pem);
      assertEquals([info.commonName, info.organization], ["node-a", AGENT_CERT_ORG]);
      assertEquals(
        (await call(P, "GET", "/v1/nodes/node-a", { token: jwt })).json.status,
        "pending",
      );
      // exhausted (max_uses 1)
      const again = await call(A, "POST", "/v1/nodes/bootstrap", {
        client: anon,
        body: { token: jt.json.token, csr_pem: csr.csrPem },
      });
      assertEquals([again.status, again.json.error.code], [401, "token_exhausted"]);
      // unknown token
      const bogus = await call(A, "POST", "/v1/nodes/bootstrap", {
        client: anon,
        body: { token: "otxjoin_nope", csr_pem: csr.csrPem },
      });
      assertEquals([bogus.status, bogus.json.error.code], [401, "unauthenticated"]);
      // expired
      const short = await call(P, "POST", "/v1/nodes/join-tokens", {
        token: jwt,
        body: { node_name: "node-b", ttl_seconds: 1 },
      });
      await new Promise((r) => setTimeout(r, 1100));
      const expired = await call(A, "POST", "/v1/nodes/bootstrap", {
        client: anon,
        body: { token: short.json.token, csr_pem: csr.csrPem },
      });
      assertEquals([expired.status, expired.json.error.code], [401, "token_expired"]);

      // heartbeat needs the node certificate
      const noCert = await call(A, "POST", "/v1/nodes/heartbeat", {
        client: anon,
        body: heartbeat("node-a", poolsDir, false),
      });
      assertEquals([noCert.status, noCert.json.error.code], [401, "unauthenticated"]);
      const nodeClient = createTlsClient({
        caPem: boot.json.ca_pem,
        certPem: boot.json.certificate_pem,
        keyPem: csr.keyPem,
      });
      clients.push(nodeClient);
      const other = await call(A, "POST", "/v1/nodes/heartbeat", {
        client: nodeClient,
        body: heartbeat("node-b", poolsDir, false),
      });
      assertEquals([other.status, other.json.error.code], [403, "permission_denied"]);
      const hb1 = await call(A, "POST", "/v1/nodes/heartbeat", {
        client: nodeClient,
        body: heartbeat("node-a", poolsDir, false),
      });
      assertEquals(hb1.status, 200, hb1.text);
      assertEquals(hb1.json.node_status, "ready");
      // The pool provisioner (not the heartbeat handler) creates the default pool once the
      // node is ready; the next heartbeat carries it.
      const hb1b = await waitFor("default pool in the heartbeat answer", async () => {
        const r = await call(A, "POST", "/v1/nodes/heartbeat", {
          client: nodeClient,
          body: heartbeat("node-a", poolsDir, false),
        });
        return r.json.desired_pools?.length ? r : null;
      });
      assertEquals(hb1b.json.desired_pools, [{ name: "default", path: `${poolsDir}/default` }]);
      const node = (await call(P, "GET", "/v1/nodes", { token: jwt })).json.items[0];
      assertEquals([node.name, node.status, node.architecture], ["node-a", "ready", "amd64"]);
      let pools = (await call(P, "GET", "/v1/pools", { token: jwt })).json.items;
      assertEquals(
        pools.map((p: any) => [p.name, p.node, p.path, p.status, p.is_default]),
        [["default", "node-a", `${poolsDir}/default`, "pending", true]],
      );
      await call(A, "POST", "/v1/nodes/heartbeat", {
        client: nodeClient,
        body: heartbeat("node-a", poolsDir, true),
      });
      pools = (await call(P, "GET", "/v1/pools", { token: jwt })).json.items;
      assertEquals(pools[0].status, "ready");

      // invalid VM creates → 400 validation_failed with details; nothing persisted
      const good = { name: "vm-1", image_url: "http://10.0.0.1/img.raw", architecture: "amd64" };
      const invalid: [string, unknown][] = [
        ["bad name", { ...good, name: "Bad_Name" }],
        ["uuid name", { ...good, name: crypto.randomUUID() }],
        ["ftp url", { ...good, image_url: "ftp://10.0.0.1/img.raw" }],
        ["vcpus 0", { ...good, vcpus: 0 }],
        ["memory too large", { ...good, memory_mb: 10 * 1024 * 1024 }],
        ["missing fields", { name: "vm-1" }],
        ["unknown field", { ...good, bogus: 1 }],
      ];
      for (const [what, body] of invalid) {
        const r = await call(P, "POST", "/v1/vms", { token: jwt, body });
        assertEquals([r.status, r.json.error.code], [400, "validation_failed"], what);
        assert(
          Array.isArray(r.json.error.details.fields) && r.json.error.details.fields.length,
          what,
        );
      }
      const notJson = await call(P, "POST", "/v1/vms", { token: jwt, raw: "{nope" });
      assertEquals(notJson.json.error.code, "validation_failed");
      assertEquals((await call(P, "GET", "/v1/vms", { token: jwt })).json, {
        items: [],
        next_cursor: null,
      });
      const missing = await call(P, "GET", "/v1/vms/ghost", { token: jwt });
      assertEquals([missing.status, missing.json.error.code], [404, "vm_not_found"]);
      const uuidPath = await call(P, "GET", `/v1/vms/${crypto.randomUUID()}`, { token: jwt });
      assertEquals(uuidPath.json.error.code, "validation_failed");
      assertEquals(
        (await call(P, "GET", `/v1/tasks/${crypto.randomUUID()}`, { token: jwt })).json.error.code,
        "task_not_found",
      );
      assertEquals(
        (await call(P, "POST", "/v1/vms", { token: jwt, body: { ...good, pool: "nope" } })).json
          .error.code,
        "pool_not_found",
      );
      assertEquals(
        (await call(P, "POST", "/v1/vms", { token: jwt, body: { ...good, node: "node-z" } })).json
          .error.code,
        "node_not_found",
      );

      // heartbeats stop → unreachable → no ready node → 409 no_eligible_nodes
      const deadline = Date.now() + 10_000;
      while (
        (await call(P, "GET", "/v1/nodes/node-a", { token: jwt })).json.status !== "unreachable"
      ) {
        assert(Date.now() < deadline, "node never became unreachable");
        await new Promise((r) => setTimeout(r, 200));
      }
      const noNode = await call(P, "POST", "/v1/vms", { token: jwt, body: good });
      assertEquals([noNode.status, noNode.json.error.code], [409, "no_eligible_nodes"]);
      assertEquals(noNode.json.error.details.candidates[0].node, "node-a");
      assertEquals(noNode.json.error.details.candidates[0].reasons, ["node is unreachable"]);
      assertEquals((await call(P, "GET", "/v1/vms", { token: jwt })).json.items, []);
      assertEquals(await call(P, "GET", "/nope").then((r) => r.json.error.code), "not_found");

      // graceful stop, restart on the same data dir: CA reused, credentials still valid
      const replicaCert = await Deno.readTextFile(`${dataDir}/pki/cp.crt`);
      assertEquals((await Deno.stat(`${dataDir}/pki/cp.key`)).mode! & 0o777, 0o600);
      const code = await stopApi(api);
      api = null;
      assertEquals(code, 0);
      api = await startApi(cfgFile, dataDir);
      assertEquals(api.fingerprint, ca.json.fingerprint);
      assertEquals(await Deno.readTextFile(`${dataDir}/pki/cp.crt`), replicaCert);
      assert(!api.output().includes("bootstrap admin created"));
      const P2 = api.publicUrl;
      assertNotEquals(P2, "");
      assertEquals((await call(P2, "GET", "/v1/users/me", { token: apiToken })).json.role, "admin");
      assertEquals((await call(P2, "GET", "/v1/users/me", { token: jwt })).status, 200);
      const relog = await call(P2, "POST", "/v1/auth/login", { body: ADMIN });
      assertEquals(relog.status, 200);
      const nodes = (await call(P2, "GET", "/v1/nodes", { token: apiToken })).json.items;
      assertEquals(nodes.map((n: any) => n.name), ["node-a"]);
    } finally {
      for (const c of clients) c.close();
      await stopApi(api);
      await Deno.remove(root, { recursive: true });
    }
  },
});
