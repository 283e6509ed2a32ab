/**
 * JWT signing keys with ids and rotation (cp/auth/jwt.ts): tokens name their key, a rotation
 * keeps the previous key verifying until its tokens expire, replicas sharing a store follow a
 * rotation, and a cluster from before key ids keeps its secret as the `legacy` key.
 */
import { assert, assertEquals, assertNotEquals, assertRejects } from "../assert.ts";
import { decodeProtectedHeader } from "jose";
import {
  issueAccessToken,
  JWT_KEYS_KEY,
  JwtKeyring,
  LEGACY_KID,
  loadOrCreateJwtSecret,
  MAX_TOKEN_TTL_SECONDS,
  verifyAccessToken,
} from "../../cp/auth/jwt.ts";
import { openKvStore } from "../../cp/store/kv.ts";
import { ApiError } from "../../shared/errors.ts";
import { apiFor, LogCapture, startTestCp, until } from "./fixtures.ts";

const claims = { sub: crypto.randomUUID(), role: "developer" as const };

Deno.test("jwt keys: ids, rotation, replicas, legacy secret", async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "otx-jwt-" });
  const store = await openKvStore(`${dir}/store.kv`);
  const other = await openKvStore(`${dir}/store.kv`); // a second replica's handle
  const rings: JwtKeyring[] = [];
  try {
    await t.step("a pre-rotation cluster's secret becomes the key `legacy`", async () => {
      const secret = await loadOrCreateJwtSecret(store);
      const old = await issueAccessToken(secret, claims, 600);
      assertEquals(decodeProtectedHeader(old.token).kid, undefined);
      const ring = await JwtKeyring.load(store);
      rings.push(ring);
      assertEquals(ring.current().kid, LEGACY_KID);
      assertEquals((await verifyAccessToken(ring, old.token)).sub, claims.sub);
    });

    const ring = rings[0];
    const replica = await JwtKeyring.load(other);
    rings.push(replica);
    let before = "";
    await t.step(
      "rotate: new tokens name the new key; the previous key still verifies",
      async () => {
        before = (await issueAccessToken(ring, claims, 600)).token;
        const r = await ring.rotate();
        assertEquals(r.previous_kid, LEGACY_KID);
        assertNotEquals(r.kid, LEGACY_KID);
        const after = (await issueAccessToken(ring, claims, 600)).token;
        assertEquals(decodeProtectedHeader(after).kid, r.kid);
        assertEquals((await verifyAccessToken(ring, before)).sub, claims.sub);
        assertEquals((await verifyAccessToken(ring, after)).sub, claims.sub);
        assertEquals(ring.list().map((k) => [k.kid, k.retired_at !== null]), [
          [LEGACY_KID, true],
          [r.kid, false],
        ]);
        assert(!JSON.stringify(ring.list()).includes("secret"));
      },
    );

    await t.step("another replica verifies the new key's tokens and signs with it", async () => {
      const fresh = (await issueAccessToken(ring, claims, 600)).token;
      assertEquals((await verifyAccessToken(replica, fresh)).sub, claims.sub);
      await until(
        "the replica follows the rotation",
        () => Promise.resolve(replica.current().kid === ring.current().kid ? true : null),
      );
      const signed = (await issueAccessToken(replica, claims, 600)).token;
      assertEquals((await verifyAccessToken(ring, signed)).sub, claims.sub);
    });

    await t.step("a retired key is dropped once its tokens must have expired", async () => {
      const now = Date.now();
      const later = new Date(now + (MAX_TOKEN_TTL_SECONDS + 60) * 1000);
      const second = ring.current().kid;
      await ring.rotate(later); // retires `second` at `later`, drops `legacy` (retired at `now`)
      assertEquals(ring.list().map((k) => k.kid).includes(LEGACY_KID), false);
      assert(ring.list().some((k) => k.kid === second));
      const err = await assertRejects(() => verifyAccessToken(ring, before, new Date(now)));
      assertEquals([(err as ApiError).code, err.message], [
        "unauthenticated",
        "invalid access token",
      ]);
    });

    await t.step("a token signed with a key the cluster never had is refused", async () => {
      const foreign = await issueAccessToken(
        crypto.getRandomValues(new Uint8Array(32)),
        claims,
        600,
      );
      const err = await assertRejects(() => verifyAccessToken(ring, foreign.token));
      assertEquals(err.message, "invalid access token");
      const stored = await store.get<{ keys: unknown[] }>(JWT_KEYS_KEY);
      assertEquals(stored!.value.keys.length, 2);
    });
  } finally {
    for (const r of rings) r.stop();
    await other.close();
    await store.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("jwt keys: rotation over the API (admin), earlier logins stay valid", async () => {
  const dir = await Deno.makeTempDir({ prefix: "otx-jwt-api-" });
  const cp = await startTestCp(dir, new LogCapture());
  try {
    const api = await apiFor(cp);
    const keys0 = (await api("GET", "/v1/auth/jwt-keys")).json.items;
    assertEquals(keys0.length, 1);
    const rotated = await api("POST", "/v1/auth/jwt-keys/rotate");
    assertEquals(rotated.status, 200);
    assertEquals(rotated.json.previous_kid, keys0[0].kid);
    // `api` still holds the token from before the rotation.
    assertEquals((await api("GET", "/v1/users/me")).status, 200);
    const keys1 = (await api("GET", "/v1/auth/jwt-keys")).json.items;
    assertEquals(keys1.map((k: { kid: string }) => k.kid), [keys0[0].kid, rotated.json.kid]);
    await api("POST", "/v1/users", {
      email: "op@example.com",
      password: "password-1",
      role: "operator",
    });
    const res = await fetch(`http://127.0.0.1:${cp.publicPort}/v1/auth/login`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ email: "op@example.com", password: "password-1" }),
    });
    const { access_token } = await res.json();
    assertEquals(decodeProtectedHeader(access_token).kid, rotated.json.kid);
    const denied = await fetch(`http://127.0.0.1:${cp.publicPort}/v1/auth/jwt-keys/rotate`, {
      method: "POST",
      headers: { authorization: `Bearer ${access_token}` },
    });
    assertEquals(denied.status, 403);
    await denied.body?.cancel();
  } finally {
    await cp.stop();
    await Deno.remove(dir, { recursive: true });
  }
});
