/**
 * OIDC sign-on, the control plane's half (config `auth.oidc`; the CLI's half is
 * cli/commands/login.ts): the CLI runs the authorization-code flow with PKCE against the
 * issuer and hands the ID token over, with the access token of the same response;
 * {@link OidcSignOn.signIn} verifies the ID token — signature with the issuer's published keys
 * (`jwks_uri` from its discovery document), `iss`, `aud` = `client_id`, `exp`/`iat`, `sub`, and
 * the `nonce` of the CLI's request — reads the email and role claims, and returns the user,
 * creating it on first sign-in with the mapped role (the most powerful match, else
 * `default_role`). An existing user keeps the role an admin gave them.
 *
 * Claims: the ID token's first. Many issuers (Authentik, Keycloak for some scopes, Google for
 * groups) put the email or the groups in the userinfo response only, so when the ID token
 * lacks the email claim, or a new user's role claim, userinfo is read with the access token
 * (npm `openid-client`; at most once per sign-in) and must be about the ID token's subject
 * (OIDC Core 5.3.2: its `sub` equals the ID token's, else the answer is not used). Each claim
 * is taken whole from one source: `email_verified` from the source of the email.
 *
 * The issuer is spoken to over HTTPS; plain HTTP only on a loopback address (tests, a local
 * IdP), as the CLI does.
 *
 * @module
 */
import { createRemoteJWKSet, type JWTPayload, jwtVerify } from "jose";
import * as oidc from "openid-client";
import { z } from "zod";
import type { OidcLoginRequest } from "../../shared/api/oidc.ts";
import { ApiError } from "../../shared/errors.ts";
import { type Role, ROLES } from "../../shared/rbac.ts";
import type { ApiConfig } from "../config.ts";
import type { UserRecord } from "../repo/records.ts";
import type { Store } from "../store/store.ts";
import { createUser, getUserByEmail } from "../users/service.ts";

/** `auth.oidc` as configured. */
export type OidcSettings = NonNullable<ApiConfig["auth"]["oidc"]>;

/** Claims by name, from the ID token or the userinfo response. */
type Claims = Record<string, unknown>;

/** Issuer timeouts (discovery, userinfo), seconds. */
const ISSUER_TIMEOUT_SECONDS = 10;

const LOOPBACK_HOSTS = new Set(["127.0.0.1", "localhost", "[::1]"]);

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
  #issuer:
    | Promise<{ config: oidc.Configuration; jwks: ReturnType<typeof createRemoteJWKSet> }>
    | null = null;

  constructor(readonly settings: OidcSettings) {}

  /**
   * The issuer's discovery document (read once; a failed read is retried at the next
   * sign-in) and its key set.
   *
   * @throws ApiError `internal_error` when the document cannot be read or names no `jwks_uri`
   */
  #discover() {
    this.#issuer ??= (async () => {
      const issuer = new URL(this.settings.issuer);
      const insecure = issuer.protocol === "http:" && LOOPBACK_HOSTS.has(issuer.hostname);
      const config = await oidc.discovery(
        issuer,
        this.settings.client_id,
        undefined,
        oidc.None(),
        {
          timeout: ISSUER_TIMEOUT_SECONDS,
          execute: insecure ? [oidc.allowInsecureRequests] : [],
        },
      );
      const jwksUri = config.serverMetadata().jwks_uri;
      if (!jwksUri) throw new Error("it names no jwks_uri");
      return { config, jwks: createRemoteJWKSet(new URL(jwksUri)) };
    })().catch((e) => {
      this.#issuer = null;
      const url = `${this.settings.issuer.replace(/\/$/, "")}/.well-known/openid-configuration`;
      throw new ApiError(
        "internal_error",
        `cannot read the OIDC issuer's discovery document ${url}: ${(e as Error).message}`,
      );
    });
    return this.#issuer;
  }

  /**
   * The userinfo claims of `subject` read with `accessToken` (`{}` when the issuer has no
   * userinfo endpoint).
   *
   * @throws ApiError `unauthenticated` (the issuer refuses the access token, or answers about
   *   another subject), `internal_error` (the issuer cannot be reached or answers garbage)
   */
  async #userinfo(config: oidc.Configuration, accessToken: string, subject: string) {
    if (!config.serverMetadata().userinfo_endpoint) return {};
    try {
      return await oidc.fetchUserInfo(config, accessToken, subject) as Claims;
    } catch (e) {
      if (e instanceof oidc.ClientError && e.code === "OAUTH_JSON_ATTRIBUTE_COMPARISON_FAILED") {
        throw new ApiError(
          "unauthenticated",
          "the userinfo response is about another subject than the ID token",
        );
      }
      const status = e instanceof oidc.WWWAuthenticateChallengeError ||
          e instanceof oidc.ResponseBodyError
        ? e.status
        : e instanceof oidc.ClientError && e.cause instanceof Response
        ? e.cause.status
        : null;
      if (status !== null && status >= 400 && status < 500) {
        throw new ApiError(
          "unauthenticated",
          `the issuer refused the access token at its userinfo endpoint (HTTP ${status})`,
        );
      }
      throw new ApiError(
        "internal_error",
        `cannot read userinfo from the OIDC issuer: ${(e as Error).message}`,
      );
    }
  }

  /**
   * Verifies the request's ID token (with its `nonce`) and returns its user, created on
   * first sign-in; reads userinfo with the access token when the ID token lacks a claim (see
   * the module doc). `now` is the verification time.
   *
   * @throws ApiError `unauthenticated` (the token does not verify, the nonce differs, or
   *   userinfo refuses the access token or is about another subject), `permission_denied` (no
   *   email, an unverified email, or no role for the user), `internal_error` (the issuer
   *   cannot be reached)
   */
  async signIn(store: Store, req: OidcLoginRequest, now: Date): Promise<UserRecord> {
    const s = this.settings;
    const { config, jwks } = await this.#discover();
    let claims: JWTPayload;
    try {
      ({ payload: claims } = await jwtVerify(req.id_token, jwks, {
        issuer: config.serverMetadata().issuer,
        audience: s.client_id,
        requiredClaims: ["exp", "iat", "sub"],
        currentDate: now,
      }));
    } catch {
      throw new ApiError("unauthenticated", "invalid ID token");
    }
    if (claims.nonce !== req.nonce) {
      throw new ApiError("unauthenticated", "invalid ID token nonce");
    }
    let userinfo: Promise<Claims> | null = null;
    /** The claims of the ID token, else of userinfo when there is an access token. */
    const claimSource = async (name: string): Promise<Claims> => {
      if (claims[name] !== undefined || !req.access_token) return claims;
      userinfo ??= this.#userinfo(config, req.access_token, claims.sub!);
      return await userinfo;
    };
    const where = req.access_token ? "the ID token or the userinfo response" : "the ID token";
    const emailSource = await claimSource(s.email_claim);
    const email = emailSource[s.email_claim];
    if (typeof email !== "string" || !z.string().email().safeParse(email).success) {
      throw new ApiError(
        "permission_denied",
        `${where} has no email in claim "${s.email_claim}"`,
      );
    }
    if (emailSource.email_verified === false) {
      throw new ApiError("permission_denied", `the issuer has not verified ${email}`);
    }
    const existing = await getUserByEmail(store, email);
    if (existing) return existing;
    const role = roleFor(
      (await claimSource(s.role_claim))[s.role_claim],
      s.role_mapping,
      s.default_role,
    );
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
