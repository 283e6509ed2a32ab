/**
 * Bearer secrets: long-lived API tokens (`otx_…`, spec "Option B") and node join tokens
 * (`otxjoin_…`). Both are 32 random bytes in base64url after the prefix; only their SHA-256
 * (lowercase hex) is stored, and lookups go by that hash.
 *
 * @module
 */
import { API_TOKEN_PREFIX, JOIN_TOKEN_PREFIX } from "../../shared/constants.ts";
import { toHex } from "../../shared/pki.ts";
import { b64url } from "./passwords.ts";

/** Random secret bytes per token. */
export const TOKEN_BYTES = 32;

/** A fresh `otx_<base64url(32 bytes)>` API token. */
export function generateApiToken(): string {
  return API_TOKEN_PREFIX + b64url(crypto.getRandomValues(new Uint8Array(TOKEN_BYTES)));
}

/** A fresh `otxjoin_<base64url(32 bytes)>` join token. */
export function generateJoinToken(): string {
  return JOIN_TOKEN_PREFIX + b64url(crypto.getRandomValues(new Uint8Array(TOKEN_BYTES)));
}

/** Lowercase hex SHA-256 of the token's UTF-8 bytes (the stored form). */
export async function hashToken(token: string): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(token));
  return toHex(new Uint8Array(digest));
}

/** True when `s` has the shape of an API token (prefix + ≥ 43 base64url chars). */
export function isApiTokenShape(s: string): boolean {
  return s.startsWith(API_TOKEN_PREFIX) &&
    /^[A-Za-z0-9_-]{43,}$/.test(s.slice(API_TOKEN_PREFIX.length));
}
