/**
 * Access tokens: HS256 JWTs (`jose`) signed with a 32-byte cluster secret that is generated on
 * first boot and kept in the store (`/cluster/jwt-secret`), so every replica and every restart
 * accepts the same tokens. Claims: `sub` = user id, `role`, `iat`, `exp`, `iss` = `otherix`.
 *
 * @module
 */
import { errors as joseErrors, jwtVerify, SignJWT } from "jose";
import { ApiError } from "../../shared/errors.ts";
import type { Role } from "../../shared/rbac.ts";
import { keys } from "../repo/records.ts";
import type { Store } from "../store/store.ts";
import { b64url, fromB64url } from "./passwords.ts";

const ISSUER = "otherix";
const ROLES = new Set(["admin", "operator", "developer", "viewer"]);

/**
 * Returns the cluster JWT secret (32 bytes), creating it when absent. Safe against
 * concurrent first boots: the first writer wins and everyone reads its secret.
 *
 * @throws StoreError when the store fails
 */
export async function loadOrCreateJwtSecret(store: Store): Promise<Uint8Array> {
  const existing = await store.get<{ secret: string }>(keys.jwtSecret);
  if (existing) return fromB64url(existing.value.secret);
  const secret = crypto.getRandomValues(new Uint8Array(32));
  await store.txn({
    compare: [{ key: keys.jwtSecret, absent: true }],
    success: [{ type: "put", key: keys.jwtSecret, value: { secret: b64url(secret) } }],
  });
  const stored = await store.get<{ secret: string }>(keys.jwtSecret);
  return fromB64url(stored!.value.secret);
}

/** An issued access token. */
export interface IssuedToken {
  token: string;
  /** Lifetime, seconds. */
  expiresIn: number;
  expiresAt: Date;
}

/** Signs an HS256 access token for `sub` with `role`, valid `ttlSeconds` (seconds) from `now`. */
export async function issueAccessToken(
  secret: Uint8Array,
  claims: { sub: string; role: Role },
  ttlSeconds: number,
  now: Date = new Date(),
): Promise<IssuedToken> {
  const iat = Math.floor(now.getTime() / 1000);
  const token = await new SignJWT({ role: claims.role })
    .setProtectedHeader({ alg: "HS256", typ: "JWT" })
    .setSubject(claims.sub)
    .setIssuer(ISSUER)
    .setIssuedAt(iat)
    .setExpirationTime(iat + ttlSeconds)
    .setJti(crypto.randomUUID())
    .sign(secret);
  return { token, expiresIn: ttlSeconds, expiresAt: new Date((iat + ttlSeconds) * 1000) };
}

/**
 * Verifies an access token's signature (HS256 only), issuer and expiry (`exp`, `iat` and
 * `sub` are required) at `now`.
 *
 * @returns the subject (user id) and role
 * @throws ApiError `unauthenticated` ("access token expired" / "invalid access token")
 */
export async function verifyAccessToken(
  secret: Uint8Array,
  token: string,
  now: Date = new Date(),
): Promise<{ sub: string; role: Role }> {
  try {
    const { payload } = await jwtVerify(token, secret, {
      algorithms: ["HS256"],
      issuer: ISSUER,
      // Without `exp` jose would accept the token forever.
      requiredClaims: ["exp", "iat", "sub"],
      currentDate: now,
    });
    if (typeof payload.sub !== "string" || !ROLES.has(payload.role as string)) {
      throw new ApiError("unauthenticated", "invalid access token");
    }
    return { sub: payload.sub, role: payload.role as Role };
  } catch (e) {
    if (e instanceof ApiError) throw e;
    if (e instanceof joseErrors.JWTExpired) {
      throw new ApiError("unauthenticated", "access token expired");
    }
    throw new ApiError("unauthenticated", "invalid access token");
  }
}
