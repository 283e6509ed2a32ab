/**
 * OIDC sign-on wire types (issue 9; optional, config `auth.oidc`):
 *
 * - `GET /v1/auth/oidc` (public) → {@link OidcConfigSchema}: where and as whom the CLI signs in
 *   (404 `not_found` when OIDC is not configured);
 * - `POST /v1/auth/oidc/login` (public) {@link OidcLoginRequestSchema} → LoginResponse: the
 *   control plane verifies the ID token the CLI obtained (authorization code + PKCE through a
 *   loopback redirect) — reading userinfo with the access token sent along when the ID token
 *   lacks a claim —, maps its claims to a role, creates the user on first sign-in, and
 *   answers an access token as `POST /v1/auth/login` does.
 *
 * @module
 */
import { z } from "zod";

/** `GET /v1/auth/oidc`. */
export const OidcConfigSchema = z.object({
  issuer: z.string().url(),
  client_id: z.string(),
  scopes: z.array(z.string()),
});
/** The OIDC settings the CLI needs. */
export type OidcConfig = z.infer<typeof OidcConfigSchema>;

/** `POST /v1/auth/oidc/login` body. */
export const OidcLoginRequestSchema = z.object({
  /** The ID token from the issuer's token endpoint (a JWS). */
  id_token: z.string().min(1).max(16 * 1024),
  /** The nonce the authorization request carried; the ID token must repeat it. */
  nonce: z.string().min(1).max(512),
  /**
   * The access token of the same token response: the control plane reads the issuer's
   * userinfo with it when the ID token lacks the email or role claim (cp/auth/oidc.ts).
   * Optional: without it only the ID token's claims count.
   */
  access_token: z.string().min(1).max(16 * 1024).optional(),
}).strict();
/** OIDC login body. */
export type OidcLoginRequest = z.infer<typeof OidcLoginRequestSchema>;
