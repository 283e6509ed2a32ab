/**
 * The etcd store backend (cp/store/etcd.ts) on a real `etcd` (test/etcd.ts: Debian
 * `etcd-server`, TLS with client certificates from a CA made by shared/pki.ts): the store
 * contract suite (`store_contract.ts`), then what only etcd has — namespaces sharing one
 * etcd, paged listings read at one revision, connection loss and TLS refusals.
 *
 * One etcd serves the whole file (started by the first test, stopped by the last); every
 * contract test gets its own key namespace. Lease tests wait in real time (`advance`), with
 * the leader's revoke delay as `leaseSlackMs`.
 */
import { assert, assertEquals, assertMatch, assertRejects } from "../assert.ts";
import { openConfiguredEtcdStore, openEtcdStore, prefixEnd } from "../../cp/store/etcd.ts";
import { type Store, StoreError } from "../../cp/store/store.ts";
import { ApiError } from "../../shared/errors.ts";
import { createCa, issueServerCert, splitSans } from "../../shared/pki.ts";
import { startEtcd, type TestEtcd } from "../etcd.ts";
import { record, storeContract, until } from "./store_contract.ts";

/** The etcd process outlives single tests: its pipes and the stores' sockets cross them. */
const SHARED = { sanitizeOps: false, sanitizeResources: false };

let etcd: TestEtcd | null = null;
let starting: Promise<TestEtcd> | null = null;
// A filtered run skips the last test: do not leave etcd behind.
globalThis.addEventListener("unload", () => etcd?.killSync());

/** The file's etcd (TLS), started on first use. */
function sharedEtcd(): Promise<TestEtcd> {
  starting ??= startEtcd({ tls: true }).then((e) => (etcd = e));
  return starting;
}

/** Opens a store client on the shared etcd in namespace `prefix`. */
async function client(prefix: string, extra: { dialTimeoutMs?: number } = {}): Promise<Store> {
  const e = await sharedEtcd();
  return await openEtcdStore({
    endpoints: e.endpoints,
    tls: { caPem: e.tls!.caPem, certPem: e.tls!.certPem, keyPem: e.tls!.keyPem },
    prefix,
    ...extra,
  });
}

storeContract("etcd", async () => {
  const ns = `/otx-test/${crypto.randomUUID()}`;
  const store = await client(ns);
  const peers: Store[] = [];
  return {
    store,
    peer: async () => {
      const p = await client(ns);
      peers.push(p);
      return p;
    },
    advance: (ms) => new Promise((r) => setTimeout(r, ms)),
    // etcd's leader revokes expired leases in a loop that runs every 500 ms.
    leaseSlackMs: 600,
    cleanup: async () => {
      for (const p of peers) await p.close();
      await store.close();
    },
  };
}, SHARED);

Deno.test({
  name: "store [etcd]: namespaces share one etcd without seeing each other",
  ...SHARED,
  async fn() {
    const tag = crypto.randomUUID();
    const a = await client(`/ns-a-${tag}`), b = await client(`/ns-b-${tag}`);
    try {
      const wb = record(b, "", { fromRevision: await b.currentRevision() });
      await a.put("/k", "from a");
      const rev = await b.put("/k", "from b");
      assertEquals((await a.get("/k"))?.value, "from a");
      assertEquals((await a.range("")).kvs.map((kv) => [kv.key, kv.value]), [["/k", "from a"]]);
      assertEquals((await b.range("")).kvs.map((kv) => [kv.key, kv.value]), [["/k", "from b"]]);
      await until("b's own write", () => wb.revs().includes(rev));
      assertEquals(wb.events.map((e) => e.key), ["/k"], "b's watch sees only its namespace");
      wb.cancel();
    } finally {
      await a.close();
      await b.close();
    }
  },
});

Deno.test({
  name: "store [etcd]: a listing without limit reads all its pages at one revision",
  ...SHARED,
  async fn() {
    const s = await client(`/otx-test/${crypto.randomUUID()}`);
    try {
      // 2,500 keys: three etcd pages of 1,000.
      for (let b = 0; b < 25; b++) {
        await s.txn({
          compare: [],
          success: Array.from({ length: 100 }, (_, i) => ({
            type: "put" as const,
            key: `/many/${String(b * 100 + i).padStart(5, "0")}`,
            value: b * 100 + i,
          })),
        });
      }
      // Rewrite keys of every page while the listing runs: none may show a newer revision.
      let writing = true;
      const writes = (async () => {
        for (let i = 0; writing; i = (i + 997) % 2500) {
          await s.put(`/many/${String(i).padStart(5, "0")}`, -1);
        }
      })();
      await until("a few writes", async () => (await s.get("/many/00000"))?.value === -1);
      const listed = await s.range<number>("/many/");
      writing = false;
      await writes;
      assertEquals(listed.kvs.length, 2500);
      assertEquals(listed.nextCursor, null);
      const keys = listed.kvs.map((kv) => kv.key);
      assertEquals(keys, [...keys].sort());
      const newer = listed.kvs.filter((kv) => BigInt(kv.modRevision) > BigInt(listed.revision));
      assertEquals(newer.map((kv) => kv.key), [], "every page shows the first page's revision");
    } finally {
      await s.close();
    }
  },
});

Deno.test({
  name: "store [etcd]: etcd down → store_unavailable; the same handle and its watch recover",
  ...SHARED,
  async fn(t) {
    const e = await sharedEtcd();
    const s = await client(`/otx-test/${crypto.randomUUID()}`, { dialTimeoutMs: 1000 });
    try {
      const w = record(s, "/lost/", { fromRevision: await s.currentRevision() });
      const before = await s.put("/lost/a", "before");
      await until("the first event", () => w.revs().includes(before));
      await e.pause();
      await t.step("reads, writes and ping answer store_unavailable", async () => {
        for (
          const op of [
            () => s.get("/lost/a"),
            () => s.put("/lost/b", 1),
            () => s.txn({ compare: [{ key: "/lost/a", absent: false }], success: [] }),
            () => s.ping(),
          ]
        ) {
          const err = await assertRejects(op);
          assert(err instanceof ApiError && err.code === "store_unavailable", String(err));
        }
      });
      await e.resume();
      await t.step("after etcd is back: the same handle writes, the watch goes on", async () => {
        const after = await s.put("/lost/c", "after");
        assertEquals((await s.get("/lost/a"))?.value, "before");
        await until("the watch after the outage", () => w.revs().includes(after), 15_000);
        assertEquals(w.events.map((ev) => [ev.key, ev.value]), [
          ["/lost/a", "before"],
          ["/lost/c", "after"],
        ]);
        assertEquals(w.errors, []);
      });
      w.cancel();
    } finally {
      await s.close();
    }
  },
});

Deno.test({
  name: "store [etcd]: TLS refusals (unknown CA, no client certificate) and bad options",
  ...SHARED,
  async fn(t) {
    const e = await sharedEtcd();
    const tls = e.tls!;
    await t.step("a CA that did not sign etcd's certificate", async () => {
      const other = await createCa("some other CA");
      const err = await assertRejects(() =>
        openEtcdStore({
          endpoints: e.endpoints,
          tls: { caPem: other.certPem, certPem: tls.certPem, keyPem: tls.keyPem },
        })
      );
      assert(err instanceof ApiError && err.code === "store_unavailable", String(err));
      assertMatch(err.message, /certificate|UnknownIssuer/i);
    });
    await t.step("no client certificate, or one from another CA", async () => {
      const other = await createCa("rogue CA");
      const rogue = await issueServerCert(other, "rogue", "otherix", splitSans(["localhost"]));
      for (const client of [{}, { certPem: rogue.certPem, keyPem: rogue.keyPem }]) {
        const err = await assertRejects(() =>
          openEtcdStore({ endpoints: e.endpoints, tls: { caPem: tls.caPem, ...client } })
        );
        assert(err instanceof ApiError && err.code === "store_unavailable", String(err));
      }
    });
    await t.step("malformed options are refused before any connection", async () => {
      for (
        const opts of [
          { endpoints: [] },
          { endpoints: ["127.0.0.1:2379"] },
          { endpoints: ["ftp://127.0.0.1:2379"] },
          { endpoints: ["https://127.0.0.1:2379/v3"] },
          { endpoints: ["http://127.0.0.1:2379"], tls: { caPem: tls.caPem } },
          { endpoints: e.endpoints, tls: { caPem: tls.caPem, certPem: tls.certPem } },
          { endpoints: e.endpoints, dialTimeoutMs: 0 },
        ]
      ) {
        const err = await assertRejects(() => openEtcdStore(opts));
        assert(err instanceof StoreError, `${JSON.stringify(opts.endpoints)}: ${err}`);
      }
    });
  },
});

Deno.test({
  name: "store [etcd]: opened from the config's files (store.etcd); a missing file is named",
  ...SHARED,
  async fn() {
    const e = await sharedEtcd();
    const files = e.tls!.files;
    const cfg = {
      endpoints: e.endpoints,
      ca_file: files.ca,
      cert_file: files.cert,
      key_file: files.key,
      prefix: `/otx-test/${crypto.randomUUID()}`,
    };
    const s = await openConfiguredEtcdStore(cfg);
    try {
      const rev = await s.put("/cfg", "ok");
      assertEquals((await s.get("/cfg"))?.modRevision, rev);
    } finally {
      await s.close();
    }
    const err = await assertRejects(() =>
      openConfiguredEtcdStore({ ...cfg, key_file: `${e.dir}/missing.key` })
    );
    assert(err instanceof StoreError, String(err));
    assertMatch(err.message, /store\.etcd\.key_file .*missing\.key/);
  },
});

Deno.test("store [etcd]: prefix range ends (etcd GetPrefixRangeEnd)", () => {
  const end = (bytes: number[]) => [...prefixEnd(new Uint8Array(bytes))];
  assertEquals(end([0x2f, 0x61]), [0x2f, 0x62]);
  assertEquals(end([0x61, 0xff]), [0x62]);
  assertEquals(end([0xff, 0xff]), [0], "all 0xff: to the end of the keyspace");
  assertEquals(end([]), [0]);
});

Deno.test({
  name: "store [etcd]: (stops the file's etcd)",
  ...SHARED,
  async fn() {
    await etcd?.stop();
    etcd = null;
  },
});
