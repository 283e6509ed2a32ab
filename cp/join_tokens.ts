/**
 * Node join tokens (spec: "Mints a join token via otherix node join-token create", troubleshooting
 * `token_expired` / `token_exhausted`): minted by admins, redeemed by an agent's bootstrap
 * (`POST /v1/nodes/bootstrap`). Only the token's SHA-256 is stored; uses are counted with a
 * store transaction so concurrent redemptions cannot exceed `max_uses`.
 *
 * @module
 */
import type { JoinTokenCreateRequest, JoinTokenCreateResponse } from "../shared/api/nodes.ts";
import { ApiError } from "../shared/errors.ts";
import { generateJoinToken, hashToken } from "./auth/tokens.ts";
import { type JoinTokenRecord, keys } from "./repo/records.ts";
import type { KeyValue, Op, Store } from "./store/store.ts";

/**
 * Checks that a join token may be redeemed at `now`.
 *
 * @throws ApiError `unauthenticated` (unknown token), `token_expired`, `token_exhausted`
 */
export function checkJoinToken(rec: JoinTokenRecord | null, now: Date): JoinTokenRecord {
  if (!rec) throw new ApiError("unauthenticated", "invalid join token");
  if (Date.parse(rec.expires_at) <= now.getTime()) {
    throw new ApiError("token_expired", `join token expired at ${rec.expires_at}`, {
      token_id: rec.id,
      expires_at: rec.expires_at,
    });
  }
  if (rec.uses >= rec.max_uses) {
    throw new ApiError("token_exhausted", `join token used ${rec.uses} of ${rec.max_uses} times`, {
      token_id: rec.id,
      max_uses: rec.max_uses,
    });
  }
  return rec;
}

/**
 * Mints a join token for `req.node_name` (`max_uses` default 1, lifetime `req.ttl_seconds`
 * or `opts.defaultTtlSeconds`, seconds); only its SHA-256 is stored.
 *
 * @returns the create response with the plaintext token (shown once) and the CA fingerprint
 */
export async function createJoinToken(
  store: Store,
  req: JoinTokenCreateRequest,
  opts: { defaultTtlSeconds: number; createdBy: string; caFingerprint: string; now: Date },
): Promise<JoinTokenCreateResponse> {
  const token = generateJoinToken();
  const rec: JoinTokenRecord = {
    id: crypto.randomUUID(),
    node_name: req.node_name,
    token_hash: await hashToken(token),
    max_uses: req.max_uses ?? 1,
    uses: 0,
    expires_at: new Date(
      opts.now.getTime() + (req.ttl_seconds ?? opts.defaultTtlSeconds) * 1000,
    ).toISOString(),
    created_at: opts.now.toISOString(),
    created_by: opts.createdBy,
  };
  await store.put(keys.joinToken(rec.token_hash), rec);
  return {
    id: rec.id,
    token,
    node_name: rec.node_name,
    max_uses: rec.max_uses,
    expires_at: rec.expires_at,
    ca_fingerprint: opts.caFingerprint,
  };
}

/**
 * Reads and checks a join token by its plaintext (no use is consumed).
 *
 * @throws ApiError as {@link checkJoinToken}
 */
export async function peekJoinToken(
  store: Store,
  token: string,
  now: Date,
): Promise<JoinTokenRecord> {
  const rec = await store.get<JoinTokenRecord>(keys.joinToken(await hashToken(token)));
  return checkJoinToken(rec?.value ?? null, now);
}

/**
 * Consumes one use of a join token atomically together with `extra` ops, which are built
 * from the current state and guarded by `guards` (unchanged `modRevision`) and `absent`
 * (keys that must not exist) compares; on interference everything is re-read and retried.
 * Errors thrown by `extra` propagate and nothing is written.
 *
 * @returns the token record after the use (`uses` incremented)
 * @throws ApiError as {@link checkJoinToken} (re-checked on every retry); `internal_error`
 *   after 50 lost races
 */
export async function redeemJoinToken(
  store: Store,
  token: string,
  now: () => Date,
  extra: (rec: JoinTokenRecord) => Promise<{ ops: Op[]; guards: KeyValue[]; absent: string[] }>,
): Promise<JoinTokenRecord> {
  const key = keys.joinToken(await hashToken(token));
  for (let attempt = 0; attempt < 50; attempt++) {
    const cur = await store.get<JoinTokenRecord>(key);
    const rec = checkJoinToken(cur?.value ?? null, now());
    const { ops, guards, absent } = await extra(rec);
    const used: JoinTokenRecord = { ...rec, uses: rec.uses + 1 };
    const res = await store.txn({
      compare: [
        { key, modRevision: cur!.modRevision },
        ...guards.map((g) => ({ key: g.key, modRevision: g.modRevision })),
        ...absent.map((k) => ({ key: k, absent: true })),
      ],
      success: [{ type: "put", key, value: used }, ...ops],
    });
    if (res.succeeded) return used;
  }
  throw new ApiError("internal_error", "join token redemption: too many concurrent attempts");
}
