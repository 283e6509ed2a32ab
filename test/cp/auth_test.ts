import { assert, assertEquals, assertMatch, assertRejects } from "../assert.ts";
import { hashPassword, verifyPassword } from "../../cp/auth/passwords.ts";
import { issueAccessToken, loadOrCreateJwtSecret, verifyAccessToken } from "../../cp/auth/jwt.ts";
import {
  generateApiToken,
  generateJoinToken,
  hashToken,
  isApiTokenShape,
} from "../../cp/auth/tokens.ts";
import { type AppEnv, authenticateBearer, authMiddleware } from "../../cp/auth/middleware.ts";
import { Hono } from "hono";
import { SignJWT, UnsecuredJWT } from "jose";
import { errorHandler } from "../../shared/http.ts";
import { openKvStore } from "../../cp/store/kv.ts";
import { keys } from "../../cp/repo/records.ts";
import { authenticate, createUser, ensureBootstrapAdmin } from "../../cp/users/service.ts";
import { ApiError } from "../../shared/errors.ts";
import { createLogger } from "../../shared/log.ts";

const FAST = { N: 1024, r: 8, p: 1 };

Deno.test("passwords: scrypt encoding, verification, salt randomness, malformed hashes", async () => {
  const h = await hashPassword("correct horse");
  assertMatch(h, /^scrypt\$32768\$8\$1\$[A-Za-z0-9_-]{22}\$[A-Za-z0-9_-]{43}$/);
  assert(await verifyPassword("correct horse", h));
  assert(!(await verifyPassword("correct hors", h)));
  assert(!(await verifyPassword("", h)));
  const h2 = await hashPassword("correct horse", FAST);
  assert(h2.startsWith("scrypt$1024$8$1$"));
  assert(await verifyPassword("correct horse", h2));
  assert(h2.split("$")[4] !== (await hashPassword("correct horse", FAST)).split("$")[4]);
  for (const bad of ["", "scrypt$1$2", "bcrypt$1$8$1$aa$bb", "scrypt$1024$8$1$!!$aa", h2 + "x"]) {
    assertEquals(await verifyPassword("correct horse", bad), false, bad);
  }
});

Deno.test("jwt: issue/verify round trip; expired, tampered and foreign-key tokens rejected", async () => {
  const secret = crypto.getRandomValues(new Uint8Array(32));
  const now = new Date("2026-01-01T00:00:00Z");
  const t = await issueAccessToken(secret, { sub: "u-1", role: "operator" }, 900, now);
  assertEquals(t.expiresIn, 900);
  assertEquals(t.expiresAt.toISOString(), "2026-01-01T00:15:00.000Z");
  assertEquals(await verifyAccessToken(secret, t.token, new Date(now.getTime() + 60_000)), {
    sub: "u-1",
    role: "operator",
  });
  const expired = await assertRejects(() =>
    verifyAccessToken(secret, t.token, new Date(now.getTime() + 901_000))
  );
  assert(expired instanceof ApiError && expired.code === "unauthenticated");
  assertEquals(expired.message, "access token expired");
  const other = crypto.getRandomValues(new Uint8Array(32));
  const foreign = await assertRejects(() => verifyAccessToken(other, t.token, now));
  assert(foreign instanceof ApiError && foreign.code === "unauthenticated");
  const [h, p, s] = t.token.split(".");
  const payload = JSON.parse(atob(p.replace(/-/g, "+").replace(/_/g, "/")));
  payload.role = "admin";
  const forged = `${h}.${btoa(JSON.stringify(payload)).replace(/=+$/, "")}.${s}`;
  await assertRejects(() => verifyAccessToken(secret, forged, now));
  await assertRejects(() => verifyAccessToken(secret, "not-a-jwt", now));
});

Deno.test("jwt: tokens without exp/sub, unsigned or with another algorithm are rejected", async () => {
  const secret = crypto.getRandomValues(new Uint8Array(32));
  const now = new Date();
  const iat = Math.floor(now.getTime() / 1000);
  const base = () =>
    new SignJWT({ role: "admin" }).setIssuer("otherix").setSubject("u-1").setIssuedAt(iat);
  const noExp = await base().setProtectedHeader({ alg: "HS256" }).sign(secret);
  const noSub = await new SignJWT({ role: "admin" }).setProtectedHeader({ alg: "HS256" })
    .setIssuer("otherix").setIssuedAt(iat).setExpirationTime(iat + 60).sign(secret);
  const hs512 = await base().setExpirationTime(iat + 60).setProtectedHeader({ alg: "HS512" })
    .sign(crypto.getRandomValues(new Uint8Array(64)));
  const none = new UnsecuredJWT({ role: "admin" }).setIssuer("otherix").setSubject("u-1")
    .setIssuedAt(iat).setExpirationTime(iat + 60).encode();
  for (
    const [what, token] of [["no exp", noExp], ["no sub", noSub], ["HS512", hs512], [
      "alg none",
      none,
    ]]
  ) {
    const e = await assertRejects(() => verifyAccessToken(secret, token, now), what);
    assert(e instanceof ApiError && e.code === "unauthenticated", what);
  }
});

Deno.test("auth middleware judges expiry on the control plane's clock", async () => {
  const dir = await Deno.makeTempDir({ prefix: "otx-auth-" });
  const store = await openKvStore(`${dir}/store.kv`);
  try {
    const secret = await loadOrCreateJwtSecret(store);
    const user = await createUser(store, { email: "c@example.com", password: "x", role: "viewer" });
    // The control plane's clock is two hours behind the wall clock.
    const cpNow = () => new Date(Date.now() - 2 * 3600_000);
    const t = await issueAccessToken(secret, { sub: user.id, role: "viewer" }, 900, cpNow());
    const app = new Hono<AppEnv>();
    app.onError(errorHandler(createLogger("test", "error")));
    app.use("*", authMiddleware(store, secret, cpNow));
    app.get("/me", (c) => c.json({ id: c.get("user").id }));
    const res = await app.request("/me", { headers: { authorization: `Bearer ${t.token}` } });
    assertEquals([res.status, (await res.json()).id], [200, user.id]);
  } finally {
    await store.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("tokens: otx_/otxjoin_ shapes, ≥32 random bytes, SHA-256 hex hashing", async () => {
  const a = generateApiToken();
  const b = generateApiToken();
  assertMatch(a, /^otx_[A-Za-z0-9_-]{43}$/);
  assert(a !== b);
  assert(isApiTokenShape(a));
  assert(!isApiTokenShape("otx_short"));
  assertMatch(generateJoinToken(), /^otxjoin_[A-Za-z0-9_-]{43}$/);
  assertEquals(
    await hashToken("abc"),
    "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
  );
});

Deno.test("auth: JWT secret persists; bearer resolves JWT and API tokens; bootstrap admin", async () => {
  const dir = await Deno.makeTempDir({ prefix: "otx-auth-" });
  const store = await openKvStore(`${dir}/store.kv`);
  const lines: string[] = [];
  const log = createLogger("test", "debug", (l) => lines.push(l));
  try {
    const s1 = await loadOrCreateJwtSecret(store);
    assertEquals(s1.length, 32);
    assertEquals(await loadOrCreateJwtSecret(store), s1, "secret is created once");

    const env = (m: Record<string, string>) => (n: string) => m[n];
    assertEquals(await ensureBootstrapAdmin(store, env({}), log), null);
    // Invalid bootstrap env names the variable at fault, never echoing the password.
    const longPw = "p".repeat(1025);
    const badPw = await assertRejects(() =>
      ensureBootstrapAdmin(
        store,
        env({
          OTHERIX_BOOTSTRAP_ADMIN_EMAIL: "a@example.com",
          OTHERIX_BOOTSTRAP_ADMIN_PASSWORD: longPw,
        }),
        log,
      )
    );
    assert(badPw.message.startsWith("OTHERIX_BOOTSTRAP_ADMIN_PASSWORD:"), badPw.message);
    assert(!badPw.message.includes(longPw));

    const admin = await ensureBootstrapAdmin(
      store,
      env({
        OTHERIX_BOOTSTRAP_ADMIN_EMAIL: "Admin@Example.com",
        OTHERIX_BOOTSTRAP_ADMIN_PASSWORD: "s3cret-pass",
      }),
      log,
    );
    assert(admin && admin.role === "admin");
    assert(
      lines.some((l) => l.includes("bootstrap admin created") && l.includes("Admin@Example.com")),
    );
    assert(!lines.some((l) => l.includes("s3cret-pass")), "password never logged");
    assertEquals(
      await ensureBootstrapAdmin(
        store,
        env({ OTHERIX_BOOTSTRAP_ADMIN_EMAIL: "x@y.z", OTHERIX_BOOTSTRAP_ADMIN_PASSWORD: "p" }),
        log,
      ),
      null,
      "an admin exists: nothing created",
    );

    // Login: unknown email and wrong password fail identically.
    assertEquals((await authenticate(store, "admin@example.com", "s3cret-pass")).id, admin.id);
    const e1 = await assertRejects(() => authenticate(store, "nobody@example.com", "s3cret-pass"));
    const e2 = await assertRejects(() => authenticate(store, "admin@example.com", "wrong"));
    assertEquals(e1.message, e2.message);
    assert(e1 instanceof ApiError && e1.code === "unauthenticated");

    const t = await issueAccessToken(s1, { sub: admin.id, role: "admin" }, 60);
    assertEquals((await authenticateBearer(store, s1, t.token)).user.id, admin.id);

    const viewer = await createUser(store, {
      email: "v@example.com",
      password: "viewerpass",
      role: "viewer",
    });
    const plain = generateApiToken();
    const hash = await hashToken(plain);
    await store.put(keys.apiToken(hash), {
      id: crypto.randomUUID(),
      user_id: viewer.id,
      name: "t",
      description: null,
      token_hash: hash,
      created_at: new Date().toISOString(),
      expires_at: null,
    });
    const r = await authenticateBearer(store, s1, plain);
    assertEquals([r.user.id, r.kind], [viewer.id, "api_token"]);
    await assertRejects(() => authenticateBearer(store, s1, generateApiToken()));
    // An expired API token is refused.
    await store.put(keys.apiToken(hash), {
      ...(await store.get<Record<string, unknown>>(keys.apiToken(hash)))!.value,
      expires_at: new Date(Date.now() - 1000).toISOString(),
    });
    const ex = await assertRejects(() => authenticateBearer(store, s1, plain));
    assert(ex instanceof ApiError && ex.code === "unauthenticated");
    // Duplicate email (case-insensitive) is a conflict.
    const dup = await assertRejects(() =>
      createUser(store, { email: "V@EXAMPLE.com", password: "whatever1", role: "viewer" })
    );
    assert(dup instanceof ApiError && dup.code === "conflict");
  } finally {
    await store.close();
    await Deno.remove(dir, { recursive: true });
  }
});
