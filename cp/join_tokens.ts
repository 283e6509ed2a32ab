/**
 * Node join tokens (spec: "Mints a join token via otherix node join-token create", troubleshooting
 * `token_expired` / `token_exhausted`): minted by admins and operators, listed (metadata only)
 * and revoked by id, redeemed by an agent's bootstrap (`POST /v1/nodes/bootstrap`). Only the
 * token's SHA-256 is stored; uses are counted with a store transaction so concurrent
 * redemptions cannot exceed `max_uses`.
 *
 * Keys: the record lives at `/join-tokens/<sha256 hex>` (`keys.joinToken`, redemption looks it
 * up by the hash of the presented token) and an id index at `/join-tokens-by-id/<id>` →
 * `{token_hash}` ({@link joinTokenIdKey}, for listing and revoking), both written and deleted
 * in one transaction.
 *
 * @module
 */
import type { ListQuery } from "../shared/api/common.ts";
import type {
  JoinToken,
  JoinTokenCreateRequest,
  JoinTokenCreateResponse,
} from "../shared/api/nodes.ts";
import { ApiError } from "../shared/errors.ts";
import { generateJoinToken, hashToken } from "./auth/tokens.ts";
import { type JoinTokenRecord, keys } from "./repo/records.ts";
import type { Page } from "./routes/paging.ts";
import type { KeyValue, Op, Store } from "./store/store.ts";

/** Prefix of the join-token id index (`/join-tokens-by-id/<id>` → {@link JoinTokenIdEntry}). */
export const JOIN_TOKENS_BY_ID = "/join-tokens-by-id/";

/** The id index key of join token `id`. */
export function joinTokenIdKey(id: string): string {
  return `${JOIN_TOKENS_BY_ID}${id}`;
}

/**
 * Node names a join token may not register: `GET /v1/nodes/join-tokens` lists tokens, so a
 * node of that name could never be read by name.
 */
export const RESERVED_NODE_NAMES: ReadonlySet<string> = new Set(["join-tokens"]);

/** Value of an id index entry: where the token record lives (`keys.joinToken(token_hash)`). */
export interface JoinTokenIdEntry {
  token_hash: string;
}

/**
 * Checks that a join token (a node's, or a control plane's: cp/cluster/join.ts) may be
 * redeemed at `now`.
 *
 * @throws ApiError `unauthenticated` (unknown token), `token_expired`, `token_exhausted`
 */
export function checkJoinToken<
  T extends Pick<JoinTokenRecord, "id" | "expires_at" | "uses" | "max_uses">,
>(rec: T | null, now: Date): T {
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
 * or `opts.defaultTtlSeconds`, seconds); only its SHA-256 is stored, together with its id
 * index entry (one transaction).
 *
 * @returns the create response with the plaintext token (shown once) and the CA fingerprint
 * @throws ApiError `validation_failed` (field `node_name`) for a {@link RESERVED_NODE_NAMES}
 *   name; `internal_error` if the random id or hash is already taken (never in
 *   practice: 122 and 256 random bits)
 */
export async function createJoinToken(
  store: Store,
  req: JoinTokenCreateRequest,
  opts: { defaultTtlSeconds: number; createdBy: string; caFingerprint: string; now: Date },
): Promise<JoinTokenCreateResponse> {
  if (RESERVED_NODE_NAMES.has(req.node_name)) {
    const message = `"${req.node_name}" is reserved (it is a path of the nodes API)`;
    throw new ApiError("validation_failed", `invalid request body: node_name: ${message}`, {
      fields: [{ path: "node_name", message }],
    });
  }
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
  const key = keys.joinToken(rec.token_hash);
  const idKey = joinTokenIdKey(rec.id);
  const index: JoinTokenIdEntry = { token_hash: rec.token_hash };
  const res = await store.txn({
    compare: [{ key, absent: true }, { key: idKey, absent: true }],
    success: [{ type: "put", key, value: rec }, { type: "put", key: idKey, value: index }],
  });
  if (!res.succeeded) throw new ApiError("internal_error", "join token id or hash collision");
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

/**
 * The listed view of a token at `now`: metadata only (never the hash). `uses_left` =
 * `max_uses - uses` (at least 0); `expired` once `expires_at <= now` or every use is spent
 * (the same rules {@link checkJoinToken} refuses a redemption by).
 */
export function joinTokenView(rec: JoinTokenRecord, now: Date): JoinToken {
  return {
    id: rec.id,
    node_name: rec.node_name,
    max_uses: rec.max_uses,
    uses: rec.uses,
    uses_left: Math.max(0, rec.max_uses - rec.uses),
    expires_at: rec.expires_at,
    expired: Date.parse(rec.expires_at) <= now.getTime() || rec.uses >= rec.max_uses,
    created_at: rec.created_at,
    created_by: rec.created_by,
  };
}

/**
 * One page of join tokens in id order (`query.limit`, `query.cursor`: the store's cursor over
 * the id index), viewed at `now`. Expired and used-up tokens stay listed until revoked. An
 * index entry whose record is gone (not written by this module) is skipped, so such a page
 * may hold fewer than `limit` items while `next_cursor` is set.
 *
 * @throws ApiError `validation_failed` for a foreign or malformed cursor
 */
export async function listJoinTokens(
  store: Store,
  query: ListQuery,
  now: Date,
): Promise<Page<JoinToken>> {
  const page = await store.range<JoinTokenIdEntry>(JOIN_TOKENS_BY_ID, {
    limit: query.limit,
    cursor: query.cursor,
  });
  const recs = await Promise.all(
    page.kvs.map((kv) => store.get<JoinTokenRecord>(keys.joinToken(kv.value.token_hash))),
  );
  return {
    items: recs.filter((r) => r !== null).map((r) => joinTokenView(r.value, now)),
    next_cursor: page.nextCursor,
  };
}

/**
 * Revokes join token `id`: deletes its record and its id index entry in one transaction, so
 * a redemption racing it either completes first or finds no token (`unauthenticated`).
 *
 * @returns the revoked record
 * @throws ApiError 404 `not_found` when no token has that id (never minted, or already
 *   revoked; an index entry without its record is removed on the way)
 */
export async function revokeJoinToken(store: Store, id: string): Promise<JoinTokenRecord> {
  const idKey = joinTokenIdKey(id);
  for (let attempt = 0; attempt < 50; attempt++) {
    const idx = await store.get<JoinTokenIdEntry>(idKey);
    if (!idx) throw new ApiError("not_found", `join token ${id} not found`, { id });
    const key = keys.joinToken(idx.value.token_hash);
    const cur = await store.get<JoinTokenRecord>(key);
    const res = await store.txn({
      compare: [
        { key: idKey, modRevision: idx.modRevision },
        cur ? { key, modRevision: cur.modRevision } : { key, absent: true },
      ],
      success: [{ type: "delete", key }, { type: "delete", key: idKey }],
    });
    if (res.succeeded) {
      if (!cur) throw new ApiError("not_found", `join token ${id} not found`, { id });
      return cur.value;
    }
  }
  throw new ApiError("internal_error", "join token revocation: too many concurrent attempts");
}
