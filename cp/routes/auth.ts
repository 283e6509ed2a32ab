/**
 * Authentication routes (mounted at `/v1/auth`):
 *
 * - `POST /v1/auth/login` {email, password} → {@link LoginResponse} (a JWT access token valid
 *   `auth.jwt_ttl_seconds`). Unknown email and wrong password both answer 401
 *   `unauthenticated` "invalid email or password", in comparable time (an unknown email is
 *   checked against a dummy hash). Failed logins are throttled per email and per source
 *   address (cp/auth/login_throttle.ts, `auth.login_throttle`): 429 `too_many_requests` with a
 *   `Retry-After` header (seconds) — answered before the password is checked.
 * - `GET /v1/auth/jwt-keys` (`cluster:manage`) → `{items: [{kid, created_at, retired_at}]}`:
 *   the signing keys that still verify tokens (never their secrets).
 * - `POST /v1/auth/jwt-keys/rotate` (`cluster:manage`) → `{kid, previous_kid,
 *   previous_valid_until}`: new tokens are signed with a new key; the previous key verifies
 *   its tokens until they expire (cp/auth/jwt.ts).
 * - `GET /v1/auth/oidc` → OidcConfig (shared/api/oidc.ts), 404 `not_found` when `auth.oidc`
 *   is not configured; `POST /v1/auth/oidc/login` {id_token, nonce, access_token?} →
 *   LoginResponse (cp/auth/oidc.ts: claims from the ID token, else from userinfo read with
 *   the access token; users are created on first sign-in with their mapped role). Failed
 *   sign-ins count against the source address's login throttle.
 *
 * @module
 */
import { Hono } from "hono";
import { LoginRequestSchema, type LoginResponse } from "../../shared/api/auth.ts";
import { type OidcConfig, OidcLoginRequestSchema } from "../../shared/api/oidc.ts";
import { OidcSignOn } from "../auth/oidc.ts";
import type { UserRecord } from "../repo/records.ts";
import { ApiError } from "../../shared/errors.ts";
import { validate } from "./validate.ts";
import { issueAccessToken, JwtKeyring } from "../auth/jwt.ts";
import { LoginThrottle } from "../auth/login_throttle.ts";
import { type AppEnv, authMiddleware, requirePermission } from "../auth/middleware.ts";
import { dummyHash } from "../auth/passwords.ts";
import { sourceAddress } from "../auth/source.ts";
import type { CpContext } from "../context.ts";
import { authenticate } from "../users/service.ts";

/** The authentication routes (see the module doc). */
export function authRoutes(ctx: CpContext): Hono<AppEnv> {
  const t = ctx.cfg.auth.login_throttle;
  const throttle = new LoginThrottle({
    perEmail: { maxFailures: t.max_failures_per_email, windowSeconds: t.window_seconds },
    perAddress: { maxFailures: t.max_failures_per_address, windowSeconds: t.window_seconds },
    now: () => ctx.now().getTime(),
  });
  // The dummy hash costs one scrypt: compute it now, not during the first unknown-email login.
  dummyHash().catch(() => {});
  const r = new Hono<AppEnv>();

  r.post("/login", validate("json", LoginRequestSchema), async (c) => {
    const body = c.req.valid("json");
    const source = sourceAddress(c);
    c.set("audit", { email: body.email });
    const wait = throttle.retryAfter(body.email, source);
    if (wait > 0) {
      c.set("audit", { email: body.email, reason: "throttled" });
      ctx.log.warn("login throttled", { email: body.email, source, retry_after_seconds: wait });
      const err = new ApiError(
        "too_many_requests",
        `too many failed logins: retry in ${wait} s`,
        { retry_after_seconds: wait },
      );
      return c.json(err.toEnvelope(), 429, { "retry-after": String(wait) });
    }
    let user;
    try {
      user = await authenticate(ctx.store, body.email, body.password);
    } catch (e) {
      if (e instanceof ApiError && e.code === "unauthenticated") {
        throttle.failure(body.email, source);
        ctx.log.info("login failed", { email: body.email, source });
      }
      throw e;
    }
    throttle.success(body.email);
    ctx.log.info("user logged in", { user_id: user.id, email: user.email });
    return c.json(await accessTokenFor(user));
  });

  const accessTokenFor = async (user: UserRecord): Promise<LoginResponse> => {
    const t = await issueAccessToken(
      ctx.jwtSecret,
      { sub: user.id, role: user.role },
      ctx.cfg.auth.jwt_ttl_seconds,
      ctx.now(),
    );
    return {
      access_token: t.token,
      token_type: "Bearer",
      expires_in: t.expiresIn,
      expires_at: t.expiresAt.toISOString(),
    };
  };

  const oidcSettings = ctx.cfg.auth.oidc;
  const oidc = oidcSettings ? new OidcSignOn(oidcSettings) : null;
  const oidcOn = () => {
    if (!oidc) throw new ApiError("not_found", "OIDC sign-on is not configured (auth.oidc)");
    return oidc;
  };

  r.get("/oidc", (c) => {
    const s = oidcOn().settings;
    const res: OidcConfig = { issuer: s.issuer, client_id: s.client_id, scopes: s.scopes };
    return c.json(res);
  });

  r.post("/oidc/login", validate("json", OidcLoginRequestSchema), async (c) => {
    const sso = oidcOn();
    const body = c.req.valid("json");
    const source = sourceAddress(c);
    const wait = throttle.retryAfter(null, source);
    if (wait > 0) {
      const err = new ApiError("too_many_requests", `too many failed logins: retry in ${wait} s`, {
        retry_after_seconds: wait,
      });
      return c.json(err.toEnvelope(), 429, { "retry-after": String(wait) });
    }
    let user: UserRecord;
    try {
      user = await sso.signIn(ctx.store, body, ctx.now());
    } catch (e) {
      if (e instanceof ApiError && e.status < 500) throttle.failure(null, source);
      throw e;
    }
    c.set("audit", { email: user.email });
    ctx.log.info("user logged in (oidc)", { user_id: user.id, email: user.email });
    return c.json(await accessTokenFor(user));
  });

  const keyring = () => {
    if (!(ctx.jwtSecret instanceof JwtKeyring)) {
      throw new ApiError("conflict", "this control plane signs with one fixed key");
    }
    return ctx.jwtSecret;
  };

  r.get(
    "/jwt-keys",
    authMiddleware(ctx.store, ctx.jwtSecret, ctx.now, () => ctx.cache),
    requirePermission("cluster:manage"),
    (c) => c.json({ items: keyring().list() }),
  );

  r.post(
    "/jwt-keys/rotate",
    authMiddleware(ctx.store, ctx.jwtSecret, ctx.now, () => ctx.cache),
    requirePermission("cluster:manage"),
    async (c) => {
      const rotated = await keyring().rotate(ctx.now());
      ctx.log.info("jwt signing key rotated", { ...rotated, user_id: c.get("user").id });
      return c.json(rotated);
    },
  );

  return r;
}
