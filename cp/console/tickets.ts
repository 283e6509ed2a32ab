/**
 * Single-use console tokens (shared/api/console.ts; spec "Step 5 — console access").
 *
 * A token is `otxcon_` + base64url(32 random bytes). Only its SHA-256 (lowercase hex) is
 * stored: `/console-tokens/<sha256 hex>` → {@link ConsoleTokenRecord}, attached to a store
 * lease so the store forgets it by itself. The lease outlives the token by
 * {@link EXPIRED_TOKEN_GRACE_SECONDS}, so a token used shortly after its expiry is answered
 * `token_expired` rather than "unknown".
 *
 * Redemption is atomic: a transaction deletes the key only if its `modRevision` is the one
 * read, so of two concurrent uses exactly one wins; the token is consumed before any other
 * check (a token presented for the wrong VM is burnt too).
 *
 * @module
 */
import { CONSOLE_TOKEN_PREFIX } from "../../shared/api/console.ts";
import { ApiError } from "../../shared/errors.ts";
import { b64url } from "../auth/passwords.ts";
import { hashToken } from "../auth/tokens.ts";
import type { Store } from "../store/store.ts";

/** Store key of a console token by its hash. */
export const consoleTokenKey = (hash: string): string => `/console-tokens/${hash}`;

/** A stored console token (`/console-tokens/<sha256 hex>`); the token itself is never stored. */
export interface ConsoleTokenRecord {
  /** The VM's name (the path the token is valid for). */
  vm_name: string;
  /** The VM's id when the token was issued (a VM re-created under the same name differs). */
  vm_id: string;
  /** Who asked for it (re-checked for `vm:console` on redemption). */
  user_id: string;
  /** ISO time after which the token is refused (`token_expired`). */
  expires_at: string;
  created_at: string;
}

/** How long an expired token's record is kept (to answer `token_expired`), seconds. */
export const EXPIRED_TOKEN_GRACE_SECONDS = 60;

/** Random bytes per console token. */
const TOKEN_BYTES = 32;

/** A fresh `otxcon_<base64url(32 bytes)>` token. */
export function generateConsoleToken(): string {
  return CONSOLE_TOKEN_PREFIX + b64url(crypto.getRandomValues(new Uint8Array(TOKEN_BYTES)));
}

/** An issued ticket: the secret (returned once to the caller) and its record. */
export interface IssuedConsoleToken {
  token: string;
  record: ConsoleTokenRecord;
}

/**
 * Issues a token for `vm` on behalf of `userId`, valid `ttlSeconds` (seconds) from `now`.
 *
 * @throws StoreError when the store cannot write
 */
export async function issueConsoleToken(
  store: Store,
  vm: { name: string; id: string },
  userId: string,
  ttlSeconds: number,
  now: Date,
): Promise<IssuedConsoleToken> {
  const token = generateConsoleToken();
  const record: ConsoleTokenRecord = {
    vm_name: vm.name,
    vm_id: vm.id,
    user_id: userId,
    expires_at: new Date(now.getTime() + ttlSeconds * 1000).toISOString(),
    created_at: now.toISOString(),
  };
  const lease = await store.grant(ttlSeconds + EXPIRED_TOKEN_GRACE_SECONDS);
  await store.put(consoleTokenKey(await hashToken(token)), record, { lease });
  return { token, record };
}

/**
 * Redeems `token` for the VM named `vmName` at `now`: consumes it, then checks it.
 *
 * @returns the token's record
 * @throws ApiError 401 `unauthenticated` (malformed, unknown, already used, or issued for
 *   another VM), 401 `token_expired`
 */
export async function redeemConsoleToken(
  store: Store,
  token: string,
  vmName: string,
  now: Date,
): Promise<ConsoleTokenRecord> {
  const unknown = () => new ApiError("unauthenticated", "unknown or already used console token");
  if (!token.startsWith(CONSOLE_TOKEN_PREFIX)) throw unknown();
  const key = consoleTokenKey(await hashToken(token));
  const kv = await store.get<ConsoleTokenRecord>(key);
  if (!kv) throw unknown();
  const res = await store.txn({
    compare: [{ key, modRevision: kv.modRevision }],
    success: [{ type: "delete", key }],
  });
  if (!res.succeeded) throw unknown();
  const rec = kv.value;
  if (Date.parse(rec.expires_at) <= now.getTime()) {
    throw new ApiError("token_expired", "console token expired; request a new one");
  }
  if (rec.vm_name !== vmName) {
    throw new ApiError("unauthenticated", `console token is not valid for vm "${vmName}"`);
  }
  return rec;
}
