/**
 * Authentication and authorization middleware of the public API.
 *
 * `Authorization: Bearer <token>` accepts either a JWT access token or an `otx_…` API token;
 * missing, malformed, unknown, revoked or expired credentials → 401 `unauthenticated`.
 * {@link requirePermission} applies the RBAC table of `shared/rbac.ts` → 403
 * `permission_denied`.
 *
 * @module
 */
import type { MiddlewareHandler } from "hono";
import { API_TOKEN_PREFIX } from "../../shared/constants.ts";
import { ApiError } from "../../shared/errors.ts";
import { can, type Permission } from "../../shared/rbac.ts";
import { type ApiTokenRecord, keys, type UserRecord } from "../repo/records.ts";
import type { Store } from "../store/store.ts";
import type { Informer } from "../controllers/informer.ts";
import { getUser } from "../users/service.ts";
import { type JwtKeySource, verifyAccessToken } from "./jwt.ts";
import { hashToken, isApiTokenShape } from "./tokens.ts";

/** What the audit log (cp/audit/) records of a request beyond what it sees itself. */
export interface AuditNote {
  /** The email a login was attempted for (never the password). */
  email?: string;
  /** Why it failed, when the status alone does not say (e.g. `throttled`). */
  reason?: string;
}

/**
 * Hono env of the public API: the caller and how they authenticated (API tokens: the token's
 * id), and what a handler adds for the audit log.
 */
export type AppEnv = {
  Variables: {
    user: UserRecord;
    authKind: "jwt" | "api_token";
    /** The id of the API token the caller authenticated with (API tokens only). */
    apiTokenId: string;
    audit: AuditNote;
  };
};

/** The informer caches authentication reads (cp/context.ts `Caches` has them). */
export interface AuthCaches {
  users: Informer<UserRecord>;
  /** `/api-tokens/<sha256>` records (hashes and metadata only, never a secret). */
  apiTokens: Informer<ApiTokenRecord>;
}

/**
 * Resolves a bearer credential to its user. `readOnly` (a GET): when the store is
 * unavailable, an access token's own claims stand for the user (see the code).
 *
 * @throws ApiError `unauthenticated`; `store_unavailable` (the user cannot be read)
 */
export async function authenticateBearer(
  store: Store,
  jwtSecret: JwtKeySource,
  token: string,
  now: Date = new Date(),
  readOnly = false,
  caches?: AuthCaches,
): Promise<{ user: UserRecord; kind: "jwt" | "api_token"; tokenId?: string }> {
  // The users cache answers for known users (one store read less per request; a change
  // reaches it within a watch event); a miss (a user created a moment ago) reads the store.
  const userOf = async (id: string) => caches?.users.get(keys.user(id)) ?? await getUser(store, id);
  if (token.startsWith(API_TOKEN_PREFIX)) {
    if (!isApiTokenShape(token)) throw new ApiError("unauthenticated", "invalid API token");
    const key = keys.apiToken(await hashToken(token));
    // API tokens are read from the store (a revocation holds at once); the cache answers
    // only reads while the store is unavailable.
    let rec: ApiTokenRecord | undefined;
    try {
      rec = (await store.get<ApiTokenRecord>(key))?.value;
    } catch (e) {
      const down = e instanceof ApiError && e.code === "store_unavailable";
      if (!down || !readOnly || !caches) throw e;
      rec = caches.apiTokens.get(key);
    }
    if (!rec) throw new ApiError("unauthenticated", "invalid API token");
    if (rec.expires_at && Date.parse(rec.expires_at) <= now.getTime()) {
      throw new ApiError("unauthenticated", "API token expired");
    }
    const user = await userOf(rec.user_id);
    if (!user) throw new ApiError("unauthenticated", "invalid API token");
    return { user, kind: "api_token", tokenId: rec.id };
  }
  const claims = await verifyAccessToken(jwtSecret, token, now);
  let user: UserRecord | null;
  try {
    user = await userOf(claims.sub);
  } catch (e) {
    // Without the store (a replica cut off from quorum) a signed, unexpired access token
    // still says who the caller is and their role: enough for reads of cached state (writes
    // fail on the store anyway). Never for API tokens, which are looked up.
    if (!(e instanceof ApiError && e.code === "store_unavailable") || !readOnly) throw e;
    user = { id: claims.sub, email: "", role: claims.role, password_hash: "", created_at: "" };
  }
  if (!user) throw new ApiError("unauthenticated", "invalid access token");
  return { user, kind: "jwt" };
}

/**
 * Requires a valid bearer credential; sets `user` and `authKind`. Expiry of JWTs and API
 * tokens is judged on `now` (the control plane's clock, the one tokens are issued on).
 *
 * @throws ApiError 401 `unauthenticated` (see {@link authenticateBearer})
 */
export function authMiddleware(
  store: Store,
  jwtSecret: JwtKeySource,
  now: () => Date = () => new Date(),
  caches?: () => AuthCaches | undefined,
): MiddlewareHandler<AppEnv> {
  return async (c, next) => {
    const header = c.req.header("authorization");
    const m = header ? /^Bearer\s+(\S+)\s*$/i.exec(header) : null;
    if (!m) {
      throw new ApiError("unauthenticated", "missing bearer token (Authorization: Bearer …)");
    }
    const { user, kind, tokenId } = await authenticateBearer(
      store,
      jwtSecret,
      m[1],
      now(),
      c.req.method === "GET" || c.req.method === "HEAD",
      caches?.(),
    );
    c.set("user", user);
    c.set("authKind", kind);
    if (tokenId) c.set("apiTokenId", tokenId);
    await next();
  };
}

/**
 * Requires the caller's role to grant `permission` (after {@link authMiddleware}).
 *
 * @throws ApiError 403 `permission_denied` (details `{permission, role}`), 401
 *   `unauthenticated` when no caller was authenticated
 */
export function requirePermission(permission: Permission): MiddlewareHandler<AppEnv> {
  return async (c, next) => {
    const user = c.get("user");
    if (!user) throw new ApiError("unauthenticated", "not authenticated");
    if (!can(user.role, permission)) {
      throw new ApiError(
        "permission_denied",
        `role ${user.role} lacks permission ${permission}`,
        { permission, role: user.role },
      );
    }
    await next();
  };
}
