/**
 * OIDC sign-on, the control plane's half (config `auth.oidc`; the CLI's half is
 * cli/commands/login.ts): the CLI runs the authorization-code flow with PKCE against the
 * issuer and hands the ID token over; {@link OidcSignOn.signIn} verifies it — signature with
 * the issuer's published keys (`jwks_uri` from its discovery document), `iss`, `aud` =
 * `client_id`, `exp`/`iat`, and the `nonce` of the CLI's request — reads the email and role
 * claims, and returns the user, creating it on first sign-in with the mapped role (the most
 * powerful match, else `default_role`). An existing user keeps the role an admin gave them.
 *
 * @module
 */
import { createRemoteJWKSet, type JWTPayload, jwtVerify } from "jose";
import { z } from "zod";
import { ApiError } from "../../shared/errors.ts";
import { type Role, ROLES } from "../../shared/rbac.ts";
import type { ApiConfig } from "../config.ts";
import type { UserRecord } from "../repo/records.ts";
import type { Store } from "../store/store.ts";
import { createUser, getUserByEmail } from "../users/service.ts";

/** `auth.oidc` as configured. */
export type OidcSettings = NonNullable<ApiConfig["auth"]["oidc"]>;

const DiscoverySchema = z.object({ issuer: z.string(), jwks_uri: z.string().url() });

/** The role `claim` (a string or an array of strings) maps to, else `fallback`. */
export function roleFor(
  claim: unknown,
  mapping: Record<string, Role>,
  fallback: Role | null,
): Role | null {
  const values = Array.isArray(claim) ? claim : claim === undefined ? [] : [claim];
  const mapped = new Set(
    values.filter((v): v is string => typeof v === "string").map((v) => mapping[v]).filter(
      Boolean,
    ),
  );
  return ROLES.find((r) => mapped.has(r)) ?? fallback;
}

/** Verifies ID tokens of the configured issuer and signs their users in. */
export class OidcSignOn {
  #jwks: ReturnType<typeof createRemoteJWKSet> | null = null;
  #issuer: string | null = null;

  constructor(readonly settings: OidcSettings) {}

  /** Reads the discovery document once (the issuer as it names itself, and its keys). */
  async #keys(): Promise<{ jwks: ReturnType<typeof createRemoteJWKSet>; issuer: string }> {
    if (!this.#jwks || !this.#issuer) {
      const url = `${this.settings.issuer.replace(/\/$/, "")}/.well-known/openid-configuration`;
      let doc: z.infer<typeof DiscoverySchema>;
      try {
        const res = await fetch(url, { signal: AbortSignal.timeout(10_000) });
        if (!res.ok) throw new Error(`HTTP ${res.status}`);
        doc = DiscoverySchema.parse(await res.json());
      } catch (e) {
        throw new ApiError(
          "internal_error",
          `cannot read the OIDC issuer's discovery document ${url}: ${(e as Error).message}`,
        );
      }
      this.#issuer = doc.issuer;
      this.#jwks = createRemoteJWKSet(new URL(doc.jwks_uri));
    }
    return { jwks: this.#jwks, issuer: this.#issuer };
  }

  /**
   * Verifies `idToken` (with the request's `nonce`) and returns its user, created on first
   * sign-in.
   *
   * @throws ApiError `unauthenticated` (the token does not verify, or the nonce differs),
   *   `permission_denied` (no email, an unverified email, or no role for the user)
   */
  async signIn(store: Store, idToken: string, nonce: string, now: Date): Promise<UserRecord> {
    const s = this.settings;
    const { jwks, issuer } = await this.#keys();
    let claims: JWTPayload;
    try {
      ({ payload: claims } = await jwtVerify(idToken, jwks, {
        issuer,
        audience: s.client_id,
        requiredClaims: ["exp", "iat", "sub"],
        currentDate: now,
      }));
    } catch {
      throw new ApiError("unauthenticated", "invalid ID token");
    }
    if (claims.nonce !== nonce) throw new ApiError("unauthenticated", "invalid ID token nonce");
    const email = claims[s.email_claim];
    if (typeof email !== "string" || !z.string().email().safeParse(email).success) {
      throw new ApiError(
        "permission_denied",
        `the ID token has no email in claim "${s.email_claim}"`,
      );
    }
    if (claims.email_verified === false) {
      throw new ApiError("permission_denied", `the issuer has not verified ${email}`);
    }
    const existing = await getUserByEmail(store, email);
    if (existing) return existing;
    const role = roleFor(claims[s.role_claim], s.role_mapping, s.default_role);
    if (!role) {
      throw new ApiError(
        "permission_denied",
        `no role for ${email}: none of its "${s.role_claim}" values is in auth.oidc.role_mapping`,
      );
    }
    // Never used to log in: OIDC users sign in through their issuer (an admin may set one).
    const password = crypto.randomUUID() + crypto.randomUUID();
    try {
      return await createUser(store, { email, password, role }, now);
    } catch (e) {
      // A concurrent first sign-in created it.
      const raced = await getUserByEmail(store, email);
      if (raced) return raced;
      throw e;
    }
  }
}
