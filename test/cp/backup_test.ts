/**
 * Backups (cp/backup.ts, cp/backup_file.ts, `otherix-api backup|restore`): a snapshot of a
 * store being written is the store at one revision; restore writes it back with its revisions;
 * and, with real processes, a control plane with a node, a running VM, users and tokens is
 * backed up while it runs, restored elsewhere, and everything works there (logins, tokens, the
 * node's agent reconnecting with its certificate, the VM still running).
 *
 * @module
 */
import { join } from "node:path";
import { assert, assertEquals, assertMatch, assertStringIncludes } from "../assert.ts";
import { createBackup, restoreBackup, snapshotStore, type StoreSnapshot } from "../../cp/backup.ts";
import { decodeBackup, encodeBackup } from "../../cp/backup_file.ts";
import { pkiPaths } from "../../cp/pki.ts";
import { openKvStore } from "../../cp/store/kv.ts";
import type { Store } from "../../cp/store/store.ts";
import { ApiError } from "../../shared/errors.ts";
import { createCa } from "../../shared/pki.ts";
import { denoRunArgs, REPO_ROOT, type SandboxRoots } from "../../scripts/permissions.ts";
import { startAgent, startApi, tempRoot, TEST_ADMIN, waitFor } from "../harness.ts";
import { type Cluster, type Json, startCluster, vmBody } from "../e2e/cluster.ts";

// ---- a model of what a writer committed, revision by revision ----

interface ModelKey {
  value: unknown;
  mod: number;
  cr: number;
  ver: number;
  leased: boolean;
}
type ModelState = Map<string, ModelKey>;

/** A writer that commits random transactions and remembers the store after each revision. */
class Writer {
  state: ModelState = new Map();
  history = new Map<number, ModelState>();
  #n = 0;
  #lease = "";

  constructor(readonly store: Store) {}

  async seed(accounts: number): Promise<void> {
    this.#lease = await this.store.grant(600);
    for (let i = 0; i < accounts; i++) await this.#commit([[`/acct/${i}`, { balance: 100 }]]);
    await this.#commit([["/big", { text: "b".repeat(150_000), n: 0 }]]);
  }

  /** Applies `ops` (`[key, value]`; value `null` deletes) in one transaction. */
  async #commit(ops: [string, unknown][], leased = false): Promise<void> {
    const res = await this.store.txn({
      compare: [],
      success: ops.map(([key, value]) =>
        value === null
          ? { type: "delete" as const, key }
          : { type: "put" as const, key, value, lease: leased ? this.#lease : null }
      ),
    });
    const rev = Number(res.revision);
    const next: ModelState = new Map(this.state);
    for (const [key, value] of ops) {
      const old = next.get(key);
      if (value === null) next.delete(key);
      else {
        next.set(key, {
          value,
          mod: rev,
          cr: old ? old.cr : rev,
          ver: old ? old.ver + 1 : 1,
          leased,
        });
      }
    }
    this.state = next;
    this.history.set(rev, next);
  }

  /** One random transaction that keeps the sum of the balances. */
  async step(): Promise<void> {
    const n = ++this.#n;
    const accts = [...this.state.keys()].filter((k) => k.startsWith("/acct/"));
    const a = accts[n % accts.length];
    const b = accts[(n * 7 + 3) % accts.length];
    const va = (this.state.get(a)!.value as { balance: number }).balance;
    const vb = (this.state.get(b)!.value as { balance: number }).balance;
    switch (n % 4) {
      case 0: // a transfer
        if (a !== b) await this.#commit([[a, { balance: va - 5 }], [b, { balance: vb + 5 }]]);
        break;
      case 1: // an account moves to a new key (delete + create)
        await this.#commit([[a, null], [`/acct/m${n}`, { balance: va }]]);
        break;
      case 2: // the multi-chunk value changes with an account
        await this.#commit([["/big", { text: "b".repeat(150_000 + n), n }], [a, { balance: va }]]);
        break;
      case 3: // an ephemeral key on a lease
        await this.#commit([[`/claims/${n}`, { n }]], true);
        break;
    }
  }
}

/** Accounts the writer seeds (more than one Deno KV list batch of 500, so reads interleave). */
const ACCOUNTS = 1200;

function assertSnapshotIs(snap: StoreSnapshot, expected: ModelState): void {
  const want = [...expected.entries()].filter(([, k]) => !k.leased)
    .sort(([x], [y]) => (x < y ? -1 : 1))
    .map(([key, k]) => ({ key, value: k.value, mod: k.mod, cr: k.cr, ver: k.ver }));
  const got = snap.keys.map((k) => ({
    key: k.key,
    value: JSON.parse(new TextDecoder().decode(k.bytes)),
    mod: k.mod,
    cr: k.cr,
    ver: k.ver,
  }));
  assertEquals(got, want);
  const total = got.filter((k) => k.key.startsWith("/acct/"))
    .reduce((s, k) => s + (k.value as { balance: number }).balance, 0);
  assertEquals(total, 100 * ACCOUNTS, "the balances keep their sum in every consistent snapshot");
  assertEquals(snap.leasedSkipped, [...expected.values()].filter((k) => k.leased).length);
}

Deno.test("backup snapshot: a store being written is captured at one revision", async (t) => {
  const dir = await tempRoot("otx-bk");
  const path = join(dir, "store.kv");
  const store = await openKvStore(path);
  const w = new Writer(store);
  try {
    await w.seed(ACCOUNTS);

    await t.step("a quiet store is read in one pass", async () => {
      const snap = await snapshotStore(path);
      assertEquals(snap.rounds, 0);
      assertEquals(snap.revision, Math.max(...w.history.keys()));
      assertSnapshotIs(snap, w.state);
    });

    await t.step("commits between the full read and the check are re-read", async () => {
      const snap = await snapshotStore(path, {
        afterFullRead: async () => {
          for (let i = 0; i < 12; i++) await w.step();
        },
      });
      assert(snap.rounds >= 1, `expected a re-read round, got ${snap.rounds}`);
      assertSnapshotIs(snap, w.history.get(snap.revision)!);
    });

    await t.step("a writer racing the whole snapshot", async () => {
      let stop = false;
      const racing = (async () => {
        while (!stop) await w.step();
      })();
      const snaps: StoreSnapshot[] = [];
      try {
        for (let i = 0; i < 5; i++) snaps.push(await snapshotStore(path));
      } finally {
        stop = true;
        await racing;
      }
      // Checked once the writer has recorded every commit it made.
      for (const snap of snaps) {
        assert(w.history.has(snap.revision), `revision ${snap.revision} was committed`);
        assertSnapshotIs(snap, w.history.get(snap.revision)!);
      }
      assert(snaps.some((s) => s.rounds > 0), "the writer committed while snapshots were read");
    });

    await t.step("history compacted under the snapshot: it starts over", async () => {
      let calls = 0;
      const snap = await snapshotStore(path, {
        afterFullRead: async () => {
          if (calls++ > 0) return;
          for (let i = 0; i < 8; i++) await w.step();
          await store.compact(await store.currentRevision());
        },
      });
      assertEquals(calls, 2, "the first full read was discarded");
      assertSnapshotIs(snap, w.history.get(snap.revision)!);
    });

    await t.step("a store that never settles within the limit is refused", async () => {
      const err = await snapshotStore(path, {
        timeoutMs: 50,
        afterFullRead: async () => {
          await w.step();
          await new Promise((r) => setTimeout(r, 60));
        },
      }).catch((e) => e);
      assert(err instanceof ApiError, String(err));
      assertEquals(err.code, "store_unavailable");
      assertStringIncludes(err.message, "kept changing");
    });

    await t.step("no store file: store_unavailable, and nothing is created", async () => {
      const missing = join(dir, "nope", "store.kv");
      const err = await snapshotStore(missing).catch((e) => e);
      assert(err instanceof ApiError && err.code === "store_unavailable", String(err));
      assertStringIncludes(err.message, `no store at ${missing}`);
    });
  } finally {
    await store.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("backup file and restore: revisions, metadata and values come back", async (t) => {
  const root = await tempRoot("otx-bk");
  const src = join(root, "src");
  await Deno.mkdir(src);
  const store = await openKvStore(join(src, "store.kv"));
  const ca = await createCa();
  const { certFingerprint } = await import("../../shared/pki.ts");
  const fp = await certFingerprint(ca.certPem);
  try {
    await store.put("/cluster/ca", {
      cert_pem: ca.certPem,
      key_pem: ca.keyPem,
      fingerprint: fp,
      created_at: "2026-01-01T00:00:00.000Z",
    });
    await store.put("/bytes", new Uint8Array([0, 1, 2, 255]));
    await store.put("/big", "z".repeat(200_000));
    await store.put("/vms/a", { name: "a", n: 1 });
    await store.put("/vms/a", { name: "a", n: 2 });
    await store.put("/claims/x", 1, { lease: await store.grant(60) });
    const original = (await store.range("")).kvs.filter((k) => k.lease === null);
    const revision = await store.currentRevision();

    const full = await createBackup(src, { hostname: "cp-1" });
    const bare = await createBackup(src, { withCa: false, hostname: "cp-1" });

    await t.step("the header states what the file holds", () => {
      const head = JSON.parse(new TextDecoder().decode(full.bytes).split("\n")[0]);
      assertEquals(head.format, "otherix-backup");
      assertEquals(head.revision, revision);
      assertEquals(head.keys, original.length);
      assertEquals(head.ca_material, "included");
      assertEquals(head.ca_fingerprint, fp);
      assertEquals(head.leased_keys_skipped, 1);
      assertEquals(head.source, { data_dir: src, hostname: "cp-1" });
      assertEquals(bare.header.ca_material, "excluded");
      assertEquals(bare.header.ca_fingerprint, fp);
      const text = new TextDecoder().decode(bare.bytes);
      assert(!text.includes("PRIVATE KEY"), "no CA private key without the CA material");
      assertStringIncludes(new TextDecoder().decode(full.bytes), "PRIVATE KEY");
    });

    await t.step("damaged or foreign files are refused with validation_failed", async () => {
      const bytes = full.bytes;
      const refuse = async (b: Uint8Array, why: string) => {
        const e = await decodeBackup(b, "f.backup").catch((x) => x);
        assert(e instanceof ApiError, String(e));
        assertEquals(e.code, "validation_failed");
        assertStringIncludes(e.message, why);
      };
      await refuse(new TextEncoder().encode("hello\nworld\n"), "not a JSON header");
      await refuse(bytes.slice(0, bytes.length - 10), "checksum mismatch");
      const flipped = bytes.slice();
      flipped[flipped.length - 5] ^= 1;
      await refuse(flipped, "checksum mismatch");
      const text = new TextDecoder().decode(bytes).replace('"version":1', '"version":7');
      await refuse(new TextEncoder().encode(text), "version 7");
      const decoded = await decodeBackup(bytes, "f");
      const short = await encodeBackup(decoded.header, decoded.entries.slice(1));
      const lying = new TextDecoder().decode(short.bytes).replace(
        `"keys":${decoded.entries.length - 1}`,
        `"keys":${decoded.entries.length}`,
      );
      await refuse(new TextEncoder().encode(lying), "entries, the header says");
    });

    await t.step("restore writes every key with its revisions; the store continues", async () => {
      const dst = join(root, "dst");
      const res = await restoreBackup(await decodeBackup(full.bytes, "f"), dst);
      assertEquals(res, { dataDir: dst, keys: original.length, revision, caFingerprint: fp });
      assertEquals((await Deno.stat(join(dst, "store.kv"))).mode! & 0o777, 0o600);
      assertEquals((await Deno.stat(dst)).mode! & 0o777, 0o700);
      const restored = await openKvStore(join(dst, "store.kv"));
      try {
        assertEquals((await restored.range("")).kvs, original);
        assertEquals(await restored.currentRevision(), revision);
        // Watches resume from the snapshot's revision; older history is compacted.
        const seen: string[] = [];
        const cancel = restored.watch("/vms/", (e) => {
          seen.push(`${e.type} ${e.key} ${e.revision}`);
        }, { fromRevision: revision });
        const next = await restored.put("/vms/b", { name: "b" });
        assertEquals(Number(next), Number(revision) + 1);
        await waitFor("watch event", () => Promise.resolve(seen.length > 0), 5000, 20);
        assertEquals(seen, [`put /vms/b ${next}`]);
        cancel();
      } finally {
        await restored.close();
      }
    });

    await t.step("a data directory that holds a store is refused, untouched", async () => {
      const dst = join(root, "dst");
      const before = await Deno.readFile(join(dst, "store.kv"));
      const e = await restoreBackup(await decodeBackup(full.bytes, "f"), dst).catch((x) => x);
      assert(e instanceof ApiError && e.code === "conflict", String(e));
      assertStringIncludes(e.message, "already holds a store");
      assertEquals(await Deno.readFile(join(dst, "store.kv")), before);
    });

    await t.step("CA divergence: a different on-disk CA refuses the restore", async () => {
      const dst = join(root, "diverged");
      const other = await createCa();
      await Deno.mkdir(pkiPaths(dst).dir, { recursive: true });
      await Deno.writeTextFile(pkiPaths(dst).caCert, other.certPem);
      const e = await restoreBackup(await decodeBackup(full.bytes, "f"), dst).catch((x) => x);
      assert(e instanceof ApiError && e.code === "conflict", String(e));
      assertMatch(
        e.message,
        /^cluster CA divergence: on-disk CA .*ca\.crt \(sha256:[0-9a-f]+\) does not match active etcd CA/,
      );
      assertStringIncludes(e.message, `${fp}, in the backup`);
      assertStringIncludes(e.message, "make etcd-reset");
      assertEquals([...Deno.readDirSync(dst)].map((d) => d.name), ["pki"], "nothing written");
    });

    await t.step("the matching on-disk CA is accepted", async () => {
      const dst = join(root, "same-ca");
      await Deno.mkdir(pkiPaths(dst).dir, { recursive: true });
      await Deno.writeTextFile(pkiPaths(dst).caCert, ca.certPem);
      assertEquals(
        (await restoreBackup(await decodeBackup(full.bytes, "f"), dst)).keys,
        original.length,
      );
    });

    await t.step(
      "without the CA material: needs --ca-from a backup of the same cluster",
      async () => {
        const bareBackup = await decodeBackup(bare.bytes, "bare");
        const dst = join(root, "bare");
        const e = await restoreBackup(bareBackup, dst).catch((x) => x);
        assert(e instanceof ApiError && e.code === "validation_failed", String(e));
        assertStringIncludes(e.message, "--ca-from");
        assertStringIncludes(e.message, fp);
        // Another cluster's backup is not accepted as the CA source.
        const otherDir = join(root, "other");
        await Deno.mkdir(otherDir);
        const os = await openKvStore(join(otherDir, "store.kv"));
        const oca = await createCa();
        await os.put("/cluster/ca", {
          cert_pem: oca.certPem,
          key_pem: oca.keyPem,
          fingerprint: await certFingerprint(oca.certPem),
          created_at: "2026-01-01T00:00:00.000Z",
        });
        await os.close();
        const otherBackup = await decodeBackup((await createBackup(otherDir)).bytes, "other");
        const e2 = await restoreBackup(bareBackup, dst, { caFrom: otherBackup }).catch((x) => x);
        assert(e2 instanceof ApiError && e2.code === "conflict", String(e2));
        assertStringIncludes(e2.message, "is not this backup's CA");
        // The right one completes the CA record.
        const res = await restoreBackup(bareBackup, dst, {
          caFrom: await decodeBackup(full.bytes, "full"),
        });
        assertEquals(res.caFingerprint, fp);
        const restored = await openKvStore(join(dst, "store.kv"));
        try {
          const rec = (await restored.get<{ key_pem: string }>("/cluster/ca"))!;
          assertEquals(rec.value.key_pem, ca.keyPem);
          assertEquals(rec.modRevision, original.find((k) => k.key === "/cluster/ca")!.modRevision);
        } finally {
          await restored.close();
        }
      },
    );
  } finally {
    await store.close();
    await Deno.remove(root, { recursive: true });
  }
});

// ---- real processes ----

/** Runs `otherix-api ARGS` under its sandbox for `roots`; stdin optional. */
async function apiCommand(
  roots: SandboxRoots,
  args: string[],
  stdin?: Uint8Array,
): Promise<{ code: number; stdout: Uint8Array; stderr: string }> {
  const child = new Deno.Command(Deno.execPath(), {
    args: denoRunArgs("otherix-api", roots, args),
    cwd: REPO_ROOT,
    stdin: stdin ? "piped" : "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  if (stdin) {
    const w = child.stdin.getWriter();
    await w.write(stdin);
    await w.close();
  }
  const out = await child.output();
  return { code: out.code, stdout: out.stdout, stderr: new TextDecoder().decode(out.stderr) };
}

async function login(url: string, email: string, password: string): Promise<string> {
  const res = await fetch(`${url}/v1/auth/login`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ email, password }),
  });
  const body = await res.json();
  if (res.status !== 200) throw new Error(`login ${email}: ${res.status} ${JSON.stringify(body)}`);
  return body.access_token;
}

async function getJson(url: string, token: string): Promise<{ status: number; json: Json }> {
  const res = await fetch(url, { headers: { authorization: `Bearer ${token}` } });
  return { status: res.status, json: await res.json().catch(() => null) };
}

Deno.test({
  name: "backup of a running control plane restores elsewhere with every record and login",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async (t) => {
    let c: Cluster | null = null;
    const root2 = await tempRoot("otx-rs");
    let api2: Awaited<ReturnType<typeof startApi>> | null = null;
    try {
      c = await startCluster({ prefix: "otx-bk" });
      const cl = c;
      // State: a running VM on the node, a developer user, an API token, a pending join token.
      const create = await cl.call("POST", "/v1/vms", vmBody(cl, "keep-me"));
      assertEquals(create.status, 202, JSON.stringify(create.json));
      const vm = await cl.waitVm("keep-me", (v) => v.status === "running");
      const qemu = cl.qemuPids("keep-me");
      assertEquals(qemu.length, 1);
      const user = await cl.call("POST", "/v1/users", {
        email: "dev@otherix.test",
        password: "dev-password-123",
        role: "developer",
      });
      assertEquals(user.status, 201, JSON.stringify(user.json));
      const minted = await cl.call("POST", "/v1/users/me/api-tokens", { name: "ci" });
      assertEquals(minted.status, 201);
      const apiToken: string = minted.json.plaintext_token;
      const joinToken = await cl.call("POST", "/v1/nodes/join-tokens", { node_name: "node-2" });
      assertEquals(joinToken.status, 201, JSON.stringify(joinToken.json));
      const oldJwt = cl.token;
      const before = {
        vms: (await cl.call("GET", "/v1/vms")).json.items,
        nodes: (await cl.call("GET", "/v1/nodes")).json.items.map((n: Json) => [n.id, n.name]),
        pools: (await cl.call("GET", "/v1/pools")).json.items.map((p: Json) => [p.id, p.name]),
        joinTokens: (await cl.call("GET", "/v1/nodes/join-tokens")).json.items,
      };

      let full: Uint8Array = new Uint8Array();
      await t.step("otherix-api backup --to - while the control plane runs", async () => {
        const r = await apiCommand(cl.api.roots, [
          "backup",
          "--config",
          cl.api.configFile,
          "--to",
          "-",
        ]);
        assertEquals(r.code, 0, r.stderr);
        assertMatch(
          r.stderr,
          /^backup: \d+ keys at store revision \d+, CA material included \(sha256:/,
        );
        full = r.stdout;
        const head = (await decodeBackup(full, "stdout")).header;
        assertEquals(head.ca_fingerprint, joinToken.json.ca_fingerprint);
      });

      await t.step("--to outside the sandbox is refused with a hint", async () => {
        const out = join(root2, "x.backup");
        const r = await apiCommand(cl.api.roots, [
          "backup",
          "--config",
          cl.api.configFile,
          "--to",
          out,
        ]);
        assertEquals(r.code, 1);
        assertStringIncludes(r.stderr, "otherix-api backup: validation_failed: cannot write");
        assertStringIncludes(r.stderr, "use --to - and a shell redirection");
      });

      await t.step("--to a file in the data directory is written 0600", async () => {
        const out = join(cl.api.dataDir, "nightly.backup");
        const r = await apiCommand(cl.api.roots, [
          "backup",
          "--config",
          cl.api.configFile,
          "--to",
          out,
          "--without-ca",
        ]);
        assertEquals(r.code, 0, r.stderr);
        assertStringIncludes(r.stderr, "CA material excluded");
        assertEquals((await Deno.stat(out)).mode! & 0o777, 0o600);
        assertEquals(
          (await decodeBackup(await Deno.readFile(out), out)).header.ca_material,
          "excluded",
        );
      });

      // The old control plane goes away; the agent and its VM stay.
      await cl.api.proc.stop();

      const dataDir2 = join(root2, "var/lib/otherix/api");
      const cfg2 = join(root2, "restore.yaml");
      await Deno.writeTextFile(cfg2, `store:\n  data_dir: ${dataDir2}\n`);
      const roots2: SandboxRoots = { config: cfg2, state: dataDir2, run: dataDir2 };
      await Deno.mkdir(dataDir2, { recursive: true });

      await t.step("otherix-api restore --from - into an empty data directory", async () => {
        const r = await apiCommand(roots2, ["restore", "--config", cfg2, "--from", "-"], full);
        assertEquals(r.code, 0, r.stderr);
        assertMatch(
          new TextDecoder().decode(r.stdout),
          /^restored \d+ keys at store revision \d+ into .*\/var\/lib\/otherix\/api \(CA sha256:/,
        );
        const again = await apiCommand(roots2, ["restore", "--config", cfg2, "--from", "-"], full);
        assertEquals(again.code, 1);
        assertStringIncludes(again.stderr, "otherix-api restore: conflict:");
        assertStringIncludes(again.stderr, "already holds a store");
      });

      await t.step("the restored control plane serves every record and login", async () => {
        api2 = await startApi({
          root: root2,
          config: {
            storage_pools: {
              allowed_path_prefixes: [join(cl.root, "agent/var/lib/otherix/pools/")],
            },
          },
        });
        const a2 = api2;
        assertEquals((await getJson(`${a2.url}/v1/users/me`, oldJwt)).status, 200, "old JWT");
        assertEquals((await getJson(`${a2.url}/v1/users/me`, apiToken)).status, 200, "otx_ token");
        const admin = await login(a2.url, TEST_ADMIN.email, TEST_ADMIN.password);
        const dev = await login(a2.url, "dev@otherix.test", "dev-password-123");
        assertEquals((await getJson(`${a2.url}/v1/users/me`, dev)).json.role, "developer");
        const vms = (await getJson(`${a2.url}/v1/vms`, admin)).json.items;
        assertEquals(
          vms.map((v: Json) => [v.id, v.name]),
          before.vms.map((v: Json) => [v.id, v.name]),
        );
        const nodes = (await getJson(`${a2.url}/v1/nodes`, admin)).json.items;
        assertEquals(nodes.map((n: Json) => [n.id, n.name]), before.nodes);
        const pools = (await getJson(`${a2.url}/v1/pools`, admin)).json.items;
        assertEquals(pools.map((p: Json) => [p.id, p.name]), before.pools);
        const jts = (await getJson(`${a2.url}/v1/nodes/join-tokens`, admin)).json.items;
        assertEquals(jts, before.joinTokens);
        const got = (await getJson(`${a2.url}/v1/vms/keep-me`, admin)).json;
        assertEquals([got.id, got.node, got.desired_phase], [vm.id, vm.node, "running"]);
      });

      await t.step("the node's agent reconnects with its certificate; the VM runs on", async () => {
        await cl.agent.proc.stop();
        const agent = await startAgent({
          root: cl.agent.root,
          cpUrl: api2!.agentUrl,
          caFingerprint: joinToken.json.ca_fingerprint,
          nodeName: "node-1",
          port: cl.agent.port,
        });
        cl.agent = agent;
        await agent.proc.waitForOutput((o) => o.includes("agent: using existing cert material"));
        await agent.proc.waitForOutput((o) => o.includes("heartbeat: ok"), 60_000);
        const admin = await login(api2!.url, TEST_ADMIN.email, TEST_ADMIN.password);
        await waitFor(
          "node-1 ready and keep-me running on the restored control plane",
          async () => {
            const n = (await getJson(`${api2!.url}/v1/nodes/node-1`, admin)).json;
            const v = (await getJson(`${api2!.url}/v1/vms/keep-me`, admin)).json;
            return n?.status === "ready" && v?.status === "running";
          },
          60_000,
        );
        assertEquals(cl.qemuPids("keep-me"), qemu, "the same QEMU process");
      });
    } finally {
      await (api2 as Awaited<ReturnType<typeof startApi>> | null)?.proc.stop().catch(() => {});
      await c?.close();
      await Deno.remove(root2, { recursive: true }).catch(() => {});
    }
  },
});
