import { assert, assertEquals, assertMatch, assertRejects, assertThrows } from "../assert.ts";
import { checkJoinToken, createJoinToken, redeemJoinToken } from "../../cp/join_tokens.ts";
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
