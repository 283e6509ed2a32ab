/**
 * Access tokens: HS256 JWTs (`jose`). Claims: `sub` = user id, `role`, `iat`, `exp`, `jti`,
 * `iss` = `otherix`; the protected header names the signing key (`kid`).
 *
 * Signing keys ({@link JwtKeyring}) are 32 random bytes each, kept in the store
 * (`/cluster/jwt-keys`, {@link JWT_KEYS_KEY}) so every replica and every restart accepts the
 * same tokens; the store lives in the 0700 data dir (cp/store/file_modes.ts). New tokens are
 * signed with the newest key. {@link JwtKeyring.rotate} adds a key and retires the previous
 * one, which still verifies the tokens it signed until they expire (at most
 * {@link MAX_TOKEN_TTL_SECONDS} after its retirement; then it is dropped). A cluster from
 * before key ids keeps its one secret (`/cluster/jwt-secret`) as the key `legacy`, which also
 * verifies tokens without a `kid`.
 *
 * Every function that takes a key source accepts a bare secret (`Uint8Array`, one key, no
 * `kid`) as well as a keyring.
 *
 * @module
 */
import {
  decodeProtectedHeader,
  errors as joseErrors,
  type JWTPayload,
  jwtVerify,
  SignJWT,
} from "jose";
import { ApiError } from "../../shared/errors.ts";
import { isRole, type Role } from "../../shared/rbac.ts";
import { keys } from "../repo/records.ts";
import type { Store } from "../store/store.ts";
import { b64url, fromB64url } from "./passwords.ts";

const ISSUER = "otherix";

/** Store key of the signing keys ({@link JwtKeysRecord}). */
export const JWT_KEYS_KEY = "/cluster/jwt-keys";

/** Longest access-token lifetime the config allows, seconds (`auth.jwt_ttl_seconds` max). */
export const MAX_TOKEN_TTL_SECONDS = 24 * 3600;

/** The key id of a pre-rotation cluster's secret. */
export const LEGACY_KID = "legacy";

/** One signing key as stored. */
export interface StoredJwtKey {
  kid: string;
  /** base64url of 32 random bytes. */
  secret: string;
  created_at: string;
  /** When a newer key replaced it (null: the current key). */
  retired_at: string | null;
}

/** `/cluster/jwt-keys`: every key still verifying tokens, newest last. */
export interface JwtKeysRecord {
  keys: StoredJwtKey[];
}

/** A key as the keyring holds it. */
export interface JwtKey {
  kid: string;
  secret: Uint8Array;
  createdAt: string;
  retiredAt: string | null;
}

/** A bare secret (one key, no id) or a keyring. */
export type JwtKeySource = Uint8Array | JwtKeyring;

/**
 * Returns the pre-rotation cluster JWT secret (32 bytes, `/cluster/jwt-secret`), creating it
 * when absent. Safe against concurrent first boots: the first writer wins and everyone reads
 * its secret. (Tests and old clusters; the control plane uses {@link JwtKeyring}.)
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

const newKid = () => `k${Date.now().toString(36)}-${crypto.randomUUID().slice(0, 8)}`;

function newKey(now: Date): StoredJwtKey {
  return {
    kid: newKid(),
    secret: b64url(crypto.getRandomValues(new Uint8Array(32))),
    created_at: now.toISOString(),
    retired_at: null,
  };
}

/**
 * The signing keys of the cluster (see the module doc). Follows the store: a rotation on
 * another replica is seen through a watch, and an unknown `kid` triggers one re-read.
 */
export class JwtKeyring {
  #store: Store;
  #keys: JwtKey[] = [];
  #cancel: (() => void) | null = null;
  #refreshing: Promise<void> | null = null;

  private constructor(store: Store) {
    this.#store = store;
  }

  /**
   * Loads the keyring, creating the first key (or adopting `/cluster/jwt-secret` as
   * `legacy`) when the store has none; watches the store for rotations until {@link stop}.
   *
   * @throws StoreError when the store fails
   */
  static async load(store: Store, now: Date = new Date()): Promise<JwtKeyring> {
    const ring = new JwtKeyring(store);
    if (!(await store.get<JwtKeysRecord>(JWT_KEYS_KEY))) {
      const legacy = await store.get<{ secret: string }>(keys.jwtSecret);
      const first: StoredJwtKey = legacy
        ? {
          kid: LEGACY_KID,
          secret: legacy.value.secret,
          created_at: now.toISOString(),
          retired_at: null,
        }
        : newKey(now);
      await store.txn({
        compare: [{ key: JWT_KEYS_KEY, absent: true }],
        success: [{ type: "put", key: JWT_KEYS_KEY, value: { keys: [first] } }],
      });
    }
    await ring.refresh();
    ring.#cancel = store.watch(JWT_KEYS_KEY, () => {
      ring.refresh().catch(() => {});
    });
    return ring;
  }

  /** Re-reads the keys from the store (concurrent calls share one read). */
  refresh(): Promise<void> {
    this.#refreshing ??= this.#read().finally(() => (this.#refreshing = null));
    return this.#refreshing;
  }

  async #read(): Promise<void> {
    const rec = await this.#store.get<JwtKeysRecord>(JWT_KEYS_KEY);
    if (!rec) return;
    this.#keys = rec.value.keys.map((k) => ({
      kid: k.kid,
      secret: fromB64url(k.secret),
      createdAt: k.created_at,
      retiredAt: k.retired_at,
    }));
  }

  /** The key new tokens are signed with (the newest). */
  current(): JwtKey {
    return this.#keys[this.#keys.length - 1];
  }

  /** Every key that still verifies tokens, oldest first (never the secrets' copies). */
  list(): { kid: string; created_at: string; retired_at: string | null }[] {
    return this.#keys.map((k) => ({
      kid: k.kid,
      created_at: k.createdAt,
      retired_at: k.retiredAt,
    }));
  }

  /**
   * The key for a token's `kid` (absent: the `legacy` key); re-reads the store once for a
   * `kid` not known yet (a rotation on another replica whose watch event is still on its way).
   */
  async find(kid: string | undefined): Promise<JwtKey | undefined> {
    const want = kid ?? LEGACY_KID;
    let key = this.#keys.find((k) => k.kid === want);
    if (!key && kid) {
      await this.refresh();
      key = this.#keys.find((k) => k.kid === want);
    }
    return key;
  }

  /**
   * Adds a new signing key and retires the current one (it verifies its tokens until they
   * expire); drops keys retired more than {@link MAX_TOKEN_TTL_SECONDS} before `now`.
   *
   * @returns the new key id, the previous one and until when the previous one's tokens stay
   *   valid (ISO time)
   * @throws ApiError `conflict` after repeated concurrent rotations; StoreError
   */
  async rotate(now: Date = new Date()): Promise<
    { kid: string; previous_kid: string; previous_valid_until: string }
  > {
    for (let attempt = 0; attempt < 10; attempt++) {
      const kv = await this.#store.get<JwtKeysRecord>(JWT_KEYS_KEY);
      if (!kv) throw new ApiError("internal_error", "no JWT keys in the store");
      const ts = now.toISOString();
      const cutoff = now.getTime() - MAX_TOKEN_TTL_SECONDS * 1000;
      const kept = kv.value.keys
        .filter((k) => !k.retired_at || Date.parse(k.retired_at) > cutoff)
        .map((k) => (k.retired_at ? k : { ...k, retired_at: ts }));
      const previous = kv.value.keys[kv.value.keys.length - 1];
      const next = newKey(now);
      const res = await this.#store.txn({
        compare: [{ key: JWT_KEYS_KEY, modRevision: kv.modRevision }],
        success: [{ type: "put", key: JWT_KEYS_KEY, value: { keys: [...kept, next] } }],
      });
      if (!res.succeeded) continue;
      await this.refresh();
      return {
        kid: next.kid,
        previous_kid: previous.kid,
        previous_valid_until: new Date(now.getTime() + MAX_TOKEN_TTL_SECONDS * 1000)
          .toISOString(),
      };
    }
    throw new ApiError("conflict", "JWT keys changed concurrently; retry");
  }

  /** Stops following the store. */
  stop(): void {
    this.#cancel?.();
    this.#cancel = null;
  }
}

/** An issued access token. */
export interface IssuedToken {
  token: string;
  /** Lifetime, seconds. */
  expiresIn: number;
  expiresAt: Date;
}

/**
 * Signs an HS256 access token for `sub` with `role`, valid `ttlSeconds` (seconds) from `now`,
 * with the keyring's current key (header `kid`) or the bare secret.
 */
export async function issueAccessToken(
  source: JwtKeySource,
  claims: { sub: string; role: Role },
  ttlSeconds: number,
  now: Date = new Date(),
): Promise<IssuedToken> {
  const iat = Math.floor(now.getTime() / 1000);
  const key = source instanceof JwtKeyring ? source.current() : null;
  const token = await new SignJWT({ role: claims.role })
    .setProtectedHeader({ alg: "HS256", typ: "JWT", ...(key ? { kid: key.kid } : {}) })
    .setSubject(claims.sub)
    .setIssuer(ISSUER)
    .setIssuedAt(iat)
    .setExpirationTime(iat + ttlSeconds)
    .setJti(crypto.randomUUID())
    .sign(key ? key.secret : source as Uint8Array);
  return { token, expiresIn: ttlSeconds, expiresAt: new Date((iat + ttlSeconds) * 1000) };
}

/**
 * Verifies an access token's signature (HS256 only, with the key its `kid` names), issuer
 * and expiry (`exp`, `iat` and `sub` are required) at `now`.
 *
 * @returns the subject (user id) and role
 * @throws ApiError `unauthenticated` ("access token expired" / "invalid access token")
 */
export async function verifyAccessToken(
  source: JwtKeySource,
  token: string,
  now: Date = new Date(),
): Promise<{ sub: string; role: Role }> {
  try {
    let secret: Uint8Array;
    if (source instanceof JwtKeyring) {
      const kid = decodeProtectedHeader(token).kid;
      const key = await source.find(typeof kid === "string" ? kid : undefined);
      if (!key) throw new ApiError("unauthenticated", "invalid access token");
      secret = key.secret;
    } else secret = source;
    const { payload }: { payload: JWTPayload } = await jwtVerify(token, secret, {
      algorithms: ["HS256"],
      issuer: ISSUER,
      // Without `exp` jose would accept the token forever.
      requiredClaims: ["exp", "iat", "sub"],
      currentDate: now,
    });
    if (typeof payload.sub !== "string" || !isRole(String(payload.role))) {
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
