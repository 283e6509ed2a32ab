/**
 * The control plane's one persistence interface, shaped like etcd's KV API (DESIGN.md
 * "Store"): point reads, prefix ranges with limit + cursor, multi-key transactions guarded by
 * revision/version/absence compares, prefix watches and leases.
 *
 * Keys are strings (by convention `/<collection>/<id>…`); values are JSON-serializable data or
 * raw bytes (`Uint8Array`). Revisions are opaque strings that change on every write of a key.
 * Two backends are planned behind this interface: the embedded Deno KV store
 * (`cp/store/kv.ts`, the default) and etcd for HA replicas. `test/cp/store_test.ts` holds the
 * contract suite both must pass.
 *
 * @module
 */
import { ApiError } from "../../shared/errors.ts";

/** A stored value: JSON data or raw bytes. */
export type StoreValue = unknown;

/** One key with its value and metadata. */
export interface KeyValue<T = unknown> {
  key: string;
  value: T;
  /** Opaque revision of the last write of this key (etcd `mod_revision`). */
  modRevision: string;
  /** Number of writes since the key was (re)created: 1 after the first put (etcd `version`). */
  version: number;
  /** The lease the key is attached to, if any. */
  lease: string | null;
}

/** Options of {@link Store.range}. */
export interface RangeOptions {
  /** Maximum keys to return (default: all). */
  limit?: number;
  /** Opaque cursor from a previous page's `nextCursor`. */
  cursor?: string | null;
}

/** A page of keys in ascending key order. */
export interface RangeResult<T = unknown> {
  kvs: KeyValue<T>[];
  /** Cursor of the next page; null on the last page. */
  nextCursor: string | null;
}

/**
 * A transaction guard on one key. Exactly one of `modRevision`, `version` or `absent` is set.
 * `version: 0` is equivalent to `absent: true` (etcd semantics).
 */
export type Compare =
  | { key: string; modRevision: string }
  | { key: string; version: number }
  | { key: string; absent: boolean };

/** A write inside a transaction. */
export type Op =
  | { type: "put"; key: string; value: StoreValue; lease?: string | null }
  | { type: "delete"; key: string };

/** A transaction: if every compare holds, apply `success`, else `failure`, atomically. */
export interface TxnRequest {
  compare: Compare[];
  success: Op[];
  failure?: Op[];
}

/** The outcome of a transaction. */
export interface TxnResult {
  /** True when every compare held (and `success` was applied). */
  succeeded: boolean;
  /** Revision of the commit (the new `modRevision` of every key put). */
  revision: string;
}

/** A change seen by a watcher. */
export interface WatchEvent {
  type: "put" | "delete";
  key: string;
  /** The new value (put) or undefined (delete). */
  value?: unknown;
  /** Revision of the commit that made the change. */
  revision: string;
}

/** Callback of {@link Store.watch}; exceptions are caught and ignored. */
export type WatchCallback = (event: WatchEvent) => void;

/** The store interface (etcd KV-shaped). */
export interface Store {
  /** Reads one key; null when absent. */
  get<T = unknown>(key: string): Promise<KeyValue<T> | null>;
  /**
   * Keys starting with `prefix` (plain string prefix: `/vms/a` does not match `/vmsx`), in
   * ascending order, at most `limit`, continuing after `cursor`.
   *
   * @throws ApiError `validation_failed` for a cursor that is malformed or from another prefix
   */
  range<T = unknown>(prefix: string, opts?: RangeOptions): Promise<RangeResult<T>>;
  /**
   * Atomically evaluates `compare` and applies `success` or `failure`.
   *
   * @throws StoreError for a put attached to an unknown/expired lease, a value too large, or
   *   duplicate keys among the applied ops
   */
  txn(req: TxnRequest): Promise<TxnResult>;
  /** Unconditional put (a transaction without compares); returns the new revision. */
  put(key: string, value: StoreValue, opts?: { lease?: string | null }): Promise<string>;
  /** Unconditional delete; true when the key existed. */
  delete(key: string): Promise<boolean>;
  /** Calls `cb` after every committed change under `prefix`; returns the cancel function. */
  watch(prefix: string, cb: WatchCallback): () => void;
  /** Creates a lease that expires `ttlSeconds` after its grant / last keep-alive. */
  grant(ttlSeconds: number): Promise<string>;
  /** Extends a lease by its TTL. @throws StoreError when the lease is unknown or expired */
  keepAlive(lease: string): Promise<void>;
  /** Deletes a lease and every key attached to it (no-op for unknown leases). */
  revoke(lease: string): Promise<void>;
  /** Throws when the store cannot serve reads (used by `/readyz`). */
  ping(): Promise<void>;
  /** Releases resources; the store is unusable afterwards. */
  close(): Promise<void>;
}

/** A store-level failure (not a caller input error). */
export class StoreError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "StoreError";
  }
}

/** Encodes a key as an opaque cursor (base64url of its UTF-8 bytes). */
export function encodeCursor(key: string): string {
  const bytes = new TextEncoder().encode(key);
  let bin = "";
  for (const b of bytes) bin += String.fromCharCode(b);
  return btoa(bin).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

/**
 * Decodes a cursor produced by {@link encodeCursor} and checks it lies under `prefix`.
 *
 * @throws ApiError `validation_failed` when malformed or from another prefix
 */
export function decodeCursor(cursor: string, prefix: string): string {
  let key: string;
  try {
    if (!/^[A-Za-z0-9_-]*$/.test(cursor)) throw new Error("bad alphabet");
    const bin = atob(cursor.replace(/-/g, "+").replace(/_/g, "/"));
    key = new TextDecoder("utf-8", { fatal: true }).decode(
      Uint8Array.from(bin, (c) => c.charCodeAt(0)),
    );
  } catch {
    throw new ApiError("validation_failed", "invalid cursor", {
      fields: [{ path: "cursor", message: "not a cursor returned by this list" }],
    });
  }
  if (!key.startsWith(prefix)) {
    throw new ApiError("validation_failed", "invalid cursor", {
      fields: [{ path: "cursor", message: "not a cursor returned by this list" }],
    });
  }
  return key;
}

/**
 * Read-modify-write of one key with optimistic concurrency: reads the key, calls `fn` with
 * the current value (null when absent), writes the returned value guarded by the read
 * revision, and retries on a concurrent write. `fn` returning `undefined` leaves the key
 * unchanged; returning `null` deletes it.
 *
 * @returns the value written (or the unchanged current value), null when deleted/absent
 * @throws StoreError after 50 lost races
 */
export async function updateKey<T>(
  store: Store,
  key: string,
  fn: (current: T | null) => T | null | undefined | Promise<T | null | undefined>,
  extraOps: (next: T | null) => Op[] = () => [],
): Promise<T | null> {
  for (let attempt = 0; attempt < 50; attempt++) {
    const cur = await store.get<T>(key);
    const next = await fn(cur ? cur.value : null);
    if (next === undefined) return cur ? cur.value : null;
    const compare: Compare = cur ? { key, modRevision: cur.modRevision } : { key, absent: true };
    const op: Op = next === null ? { type: "delete", key } : { type: "put", key, value: next };
    const ops = next === null && !cur ? extraOps(next) : [op, ...extraOps(next)];
    const res = await store.txn({ compare: [compare], success: ops });
    if (res.succeeded) return next;
  }
  throw new StoreError(`update of ${key}: too many concurrent writes`);
}

/**
 * Reads every key under `prefix` (all pages of 500), in key order.
 *
 * @throws StoreError as {@link Store.range}
 */
export async function rangeAll<T>(store: Store, prefix: string): Promise<KeyValue<T>[]> {
  const out: KeyValue<T>[] = [];
  let cursor: string | null = null;
  do {
    const page: RangeResult<T> = await store.range<T>(prefix, { limit: 500, cursor });
    out.push(...page.kvs);
    cursor = page.nextCursor;
  } while (cursor);
  return out;
}
