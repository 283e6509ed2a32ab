import { assert, assertEquals, assertMatch, assertRejects, assertThrows } from "../assert.ts";
import {
  checkJoinToken,
  createJoinToken,
  type JoinTokenIdEntry,
  joinTokenIdKey,
  joinTokenView,
  listJoinTokens,
  redeemJoinToken,
  revokeJoinToken,
} from "../../cp/join_tokens.ts";
import { hashToken } from "../../cp/auth/tokens.ts";
import { type JoinTokenRecord, keys } from "../../cp/repo/records.ts";
import { openKvStore } from "../../cp/store/kv.ts";
import { ApiError } from "../../shared/errors.ts";

const rec = (over: Partial<JoinTokenRecord> = {}): JoinTokenRecord => ({
  id: crypto.randomUUID(),
  node_name: "node-a",
  token_hash: "x",
  max_uses: 1,
  uses: 0,
  expires_at: "2026-01-01T00:10:00.000Z",
  created_at: "2026-01-01T00:00:00.000Z",
  created_by: "u",
  ...over,
});
const codeOf = (fn: () => unknown) => {
  const e = assertThrows(fn);
  assert(e instanceof ApiError);
  return e.code;
};

Deno.test("join tokens: unknown / expired / exhausted", () => {
  const t0 = new Date("2026-01-01T00:05:00Z");
  assertEquals(checkJoinToken(rec(), t0).node_name, "node-a");
  assertEquals(codeOf(() => checkJoinToken(null, t0)), "unauthenticated");
  assertEquals(
    codeOf(() => checkJoinToken(rec(), new Date("2026-01-01T00:10:00Z"))),
    "token_expired",
  );
  assertEquals(codeOf(() => checkJoinToken(rec({ uses: 1 }), t0)), "token_exhausted");
  assertEquals(checkJoinToken(rec({ uses: 2, max_uses: 3 }), t0).uses, 2);
  // Expiry is checked before exhaustion.
  assertEquals(
    codeOf(() => checkJoinToken(rec({ uses: 1 }), new Date("2026-02-01T00:00:00Z"))),
    "token_expired",
  );
});

Deno.test("join tokens: stored by hash only; concurrent redemptions never exceed max_uses", async () => {
  const dir = await Deno.makeTempDir({ prefix: "otx-join-" });
  const store = await openKvStore(`${dir}/store.kv`);
  try {
    const now = new Date();
    const res = await createJoinToken(store, { node_name: "node-a", max_uses: 3 }, {
      defaultTtlSeconds: 600,
      createdBy: "u",
      caFingerprint: "sha256:" + "0".repeat(64),
      now,
    });
    assertMatch(res.token, /^otxjoin_/);
    assertEquals(res.max_uses, 3);
    assertEquals(Date.parse(res.expires_at) - now.getTime(), 600_000);
    const stored = await store.get<JoinTokenRecord>(keys.joinToken(await hashToken(res.token)));
    assert(stored);
    assert(!JSON.stringify(stored.value).includes(res.token), "plaintext is not stored");

    const attempts = await Promise.allSettled(
      Array.from(
        { length: 8 },
        () =>
          redeemJoinToken(
            store,
            res.token,
            () => new Date(),
            () => Promise.resolve({ ops: [], guards: [], absent: [] }),
          ),
      ),
    );
    const ok = attempts.filter((a) => a.status === "fulfilled");
    const failed = attempts.filter((a) => a.status === "rejected") as PromiseRejectedResult[];
    assertEquals(ok.length, 3);
    assert(
      failed.every((f) => f.reason instanceof ApiError && f.reason.code === "token_exhausted"),
    );
    assertEquals((await store.get<JoinTokenRecord>(stored.key))!.value.uses, 3);

    const e = await assertRejects(() =>
      redeemJoinToken(
        store,
        res.token,
        () => new Date(Date.now() + 3600_000),
        () => Promise.resolve({ ops: [], guards: [], absent: [] }),
      )
    );
    assert(e instanceof ApiError && e.code === "token_expired");
  } finally {
    await store.close();
    await Deno.remove(dir, { recursive: true });
  }
});

const CA_FP = "sha256:" + "0".repeat(64);

async function withStore(fn: (store: Awaited<ReturnType<typeof openKvStore>>) => Promise<void>) {
  const dir = await Deno.makeTempDir({ prefix: "otx-join-" });
  const store = await openKvStore(`${dir}/store.kv`);
  try {
    await fn(store);
  } finally {
    await store.close();
    await Deno.remove(dir, { recursive: true });
  }
}

const noExtra = () => Promise.resolve({ ops: [], guards: [], absent: [] });

Deno.test("join tokens: the listed view (uses left, expired by time or by uses)", () => {
  const at = (iso: string) => new Date(iso);
  const v = joinTokenView(rec({ max_uses: 3, uses: 1 }), at("2026-01-01T00:05:00Z"));
  assertEquals([v.uses_left, v.expired], [2, false]);
  assertEquals(Object.keys(v).includes("token_hash"), false);
  assertEquals(joinTokenView(rec(), at("2026-01-01T00:10:00Z")).expired, true);
  const spent = joinTokenView(rec({ uses: 1 }), at("2026-01-01T00:05:00Z"));
  assertEquals([spent.uses_left, spent.expired], [0, true]);
  // A record with more uses than allowed (max lowered by hand) never lists a negative.
  assertEquals(
    joinTokenView(rec({ uses: 5, max_uses: 2 }), at("2026-01-01T00:00:00Z")).uses_left,
    0,
  );
});

Deno.test("join tokens: create writes record and id index together; revoke removes both", async (t) => {
  await withStore(async (store) => {
    const opts = { defaultTtlSeconds: 600, createdBy: "u", caFingerprint: CA_FP, now: new Date() };
    const a = await createJoinToken(store, { node_name: "node-a" }, opts);
    const b = await createJoinToken(store, { node_name: "node-b", max_uses: 2 }, opts);
    const hashA = await hashToken(a.token);

    await t.step("the index entry names the record by hash", async () => {
      const idx = await store.get<JoinTokenIdEntry>(joinTokenIdKey(a.id));
      assertEquals(idx?.value, { token_hash: hashA });
      assertEquals((await store.get<JoinTokenRecord>(keys.joinToken(hashA)))?.value.id, a.id);
      const page = await listJoinTokens(store, { limit: 10 }, new Date());
      assertEquals(page.items.map((i) => i.id).sort(), [a.id, b.id].sort());
    });

    await t.step(
      "revoke deletes both keys and returns the record; a second revoke is 404",
      async () => {
        assertEquals((await revokeJoinToken(store, a.id)).node_name, "node-a");
        assertEquals(await store.get(joinTokenIdKey(a.id)), null);
        assertEquals(await store.get(keys.joinToken(hashA)), null);
        const e = await assertRejects(() => revokeJoinToken(store, a.id));
        assert(e instanceof ApiError && e.code === "not_found");
        const e2 = await assertRejects(() =>
          redeemJoinToken(store, a.token, () => new Date(), noExtra)
        );
        assert(e2 instanceof ApiError && e2.code === "unauthenticated");
      },
    );

    await t.step(
      "an index entry without its record is skipped, and revoking it cleans it",
      async () => {
        const orphan = crypto.randomUUID();
        await store.put(joinTokenIdKey(orphan), { token_hash: "f".repeat(64) });
        const page = await listJoinTokens(store, { limit: 10 }, new Date());
        assertEquals(page.items.map((i) => i.id), [b.id]);
        const e = await assertRejects(() => revokeJoinToken(store, orphan));
        assert(e instanceof ApiError && e.code === "not_found");
        assertEquals(await store.get(joinTokenIdKey(orphan)), null);
      },
    );

    await t.step(
      "revoke racing redemptions: each redemption either lands first or is refused",
      async () => {
        const c = await createJoinToken(store, { node_name: "node-c", max_uses: 10 }, opts);
        const results = await Promise.allSettled([
          ...Array.from(
            { length: 4 },
            () => redeemJoinToken(store, c.token, () => new Date(), noExtra),
          ),
          revokeJoinToken(store, c.id),
          ...Array.from(
            { length: 4 },
            () => redeemJoinToken(store, c.token, () => new Date(), noExtra),
          ),
        ]);
        const revoked = results[4];
        assertEquals(revoked.status, "fulfilled");
        const usesAtRevoke = (revoked as PromiseFulfilledResult<JoinTokenRecord>).value.uses;
        const redeemed = results.filter((r, i) => i !== 4 && r.status === "fulfilled").length;
        assertEquals(redeemed, usesAtRevoke, "every counted use is a redemption that succeeded");
        for (const r of results) {
          if (r.status === "rejected") {
            assert(r.reason instanceof ApiError && r.reason.code === "unauthenticated");
          }
        }
        assertEquals(await store.get(keys.joinToken(await hashToken(c.token))), null);
        assertEquals(await store.get(joinTokenIdKey(c.id)), null);
      },
    );

    await t.step("a reserved node name is refused before anything is written", async () => {
      const before = (await store.range("/join-tokens")).kvs.length;
      const e = await assertRejects(() =>
        createJoinToken(store, { node_name: "join-tokens" }, opts)
      );
      assert(e instanceof ApiError && e.code === "validation_failed");
      assertEquals((await store.range("/join-tokens")).kvs.length, before);
    });
  });
});
