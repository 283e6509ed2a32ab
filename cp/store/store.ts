/**
 * The control plane's one persistence interface, shaped like etcd's KV API (DESIGN.md
 * "Store"): point reads, prefix ranges with limit + cursor, multi-key transactions guarded by
 * revision/version/absence compares, resumable prefix watches, compaction and leases.
 *
 * Keys are strings (by convention `/<collection>/<id>…`); values are JSON-serializable data or
 * raw bytes (`Uint8Array`).
 *
 * Revisions follow etcd: one store-wide counter; every committed transaction that changes at
 * least one key (including the deletions of an expired or revoked lease) gets the next
 * revision. Revisions travel as decimal strings (`"1"`, `"2"`, …; compare them with
 * {@link compareRevisions}, never as strings). A key's `modRevision` is the revision of its last
 * write, so it is comparable with watch event revisions and with {@link RangeResult.revision}.
 * Informers list at revision R, then watch from R (client-go's list-then-watch).
 *
 * Two backends implement it: the embedded Deno KV store (`cp/store/kv.ts`, the default) and
 * etcd for HA replicas (`cp/store/etcd.ts`). `test/cp/store_contract.ts` holds the contract
 * suite both pass (`store_test.ts`, `store_etcd_test.ts`).
 *
 * @module
 */
import { ApiError } from "../../shared/errors.ts";

/** A stored value: JSON data or raw bytes. */
export type StoreValue = unknown;

/** One key with its value and metadata. */
export interface KeyValue<T = unknown> {
  /** The key. */
  key: string;
  /** The decoded value (JSON data, or a `Uint8Array` for bytes). */
  value: T;
  /** Revision of the last write of this key (etcd `mod_revision`), a decimal string. */
  modRevision: string;
  /**
   * Revision of the write that (re)created this key (etcd `create_revision`), a decimal string;
   * `"0"` for keys written before the store kept revisions.
   */
  createRevision: string;
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
  /** The keys of this page. */
  kvs: KeyValue<T>[];
  /** Cursor of the next page; null on the last page. */
  nextCursor: string | null;
  /**
   * The store revision this page was read at: `watch(prefix, cb, {fromRevision: revision})`
   * misses no change made after the page was read. The page may already show some changes
   * with a later revision (the backend reads keys one batch at a time), so such a watch may
   * deliver an event that repeats a state the page showed; compare the event's `revision` with
   * the key's `modRevision` to skip it. For a listing of several pages, watch from the
   * revision of the first page.
   */
  revision: string;
}

/**
 * A transaction guard on one key. Exactly one of `modRevision`, `version` or `absent` is set.
 * `version: 0` is equivalent to `absent: true` (etcd semantics). `modRevision` holds when the
 * key exists and its last write has that revision (numeric equality).
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
  /** Guards, all of which must hold for `success` to apply. */
  compare: Compare[];
  /** Writes applied when every compare holds (distinct keys). */
  success: Op[];
  /** Writes applied otherwise (distinct keys; default none). */
  failure?: Op[];
}

/** The outcome of a transaction. */
export interface TxnResult {
  /** True when every compare held (and `success` was applied). */
  succeeded: boolean;
  /**
   * Revision of the commit (the new `modRevision` of every key put). A transaction that
   * changed nothing (no ops applied, or only deletes of absent keys) takes no revision: this is
   * then the store revision it was evaluated at (etcd's header revision).
   */
  revision: string;
}

/** A change seen by a watcher. */
export interface WatchEvent {
  /** What happened to the key. */
  type: "put" | "delete";
  /** The key changed. */
  key: string;
  /**
   * The value written (put; a fresh decoded copy, shared by the watchers of one handle: treat
   * it as read-only) or undefined (delete).
   */
  value?: unknown;
  /** Revision of the commit that made the change. */
  revision: string;
}

/** Callback of {@link Store.watch}; exceptions are caught and ignored. */
export type WatchCallback = (event: WatchEvent) => void;

/** Options of {@link Store.watch}. */
export interface WatchOptions {
  /**
   * Deliver every change with a revision greater than this (a decimal revision, e.g. a
   * {@link RangeResult.revision} or the last event revision a previous watcher saw: etcd
   * resume semantics). Without it the watch starts at the store revision read right after
   * the call, plus every change this same store handle commits after the call.
   */
  fromRevision?: string;
  /**
   * Called once when the watch cannot continue, after which it delivers nothing more:
   * {@link StoreCompactedError} when `fromRevision` (or the watcher's position, if it fell that
   * far behind) is older than the retained history (list again, then watch from the new
   * revision), or a {@link StoreError} when the history is inconsistent. Exceptions thrown by
   * it are ignored. Without it such a watch just stops.
   */
  onError?: (error: Error) => void;
}

/** The store interface (etcd KV-shaped). */
export interface Store {
  /** Reads one key; null when absent. */
  get<T = unknown>(key: string): Promise<KeyValue<T> | null>;
  /**
   * Keys starting with `prefix` (plain string prefix: `/vms/a` does not match `/vmsx`), in
   * ascending order, at most `limit`, continuing after `cursor`; with the revision it was read
   * at ({@link RangeResult.revision}).
   *
   * @throws ApiError `validation_failed` for a cursor that is malformed or from another prefix
   */
  range<T = unknown>(prefix: string, opts?: RangeOptions): Promise<RangeResult<T>>;
  /**
   * Atomically evaluates `compare` and applies `success` or `failure`, as one revision.
   * Serializable, also against other handles/processes on the same store.
   *
   * @throws StoreError for a put attached to an unknown/expired lease, a value or transaction
   *   too large, or duplicate keys among the applied ops
   * @throws ApiError `validation_failed` for a `modRevision` compare that is not a revision
   */
  txn(req: TxnRequest): Promise<TxnResult>;
  /** Unconditional put (a transaction without compares); returns the new revision. */
  put(key: string, value: StoreValue, opts?: { lease?: string | null }): Promise<string>;
  /** Unconditional delete; true when the key existed. */
  delete(key: string): Promise<boolean>;
  /** The store's current revision (of the last commit; `"0"` for a new store). */
  currentRevision(): Promise<string>;
  /**
   * Calls `cb` for every committed change under `prefix`, in revision order (the events of one
   * transaction in key order), each exactly once, also for changes committed through other
   * handles or processes on the same store. Callbacks run outside the writer's call stack.
   * Returns the cancel function (idempotent; no callback runs after it returns).
   *
   * @throws ApiError `validation_failed` when `opts.fromRevision` is not a decimal revision
   */
  watch(prefix: string, cb: WatchCallback, opts?: WatchOptions): () => void;
  /**
   * Discards the change history up to and including `revision` (etcd `Compact`): watches from
   * an older revision then fail with {@link StoreCompactedError}. Backends also compact
   * automatically by their retention settings. No-op when already compacted that far.
   *
   * @throws ApiError `validation_failed` for a malformed or future revision
   */
  compact(revision: string): Promise<void>;
  /** Creates a lease that expires `ttlSeconds` after its grant / last keep-alive. */
  grant(ttlSeconds: number): Promise<string>;
  /** Extends a lease by its TTL. @throws StoreError when the lease is unknown or expired */
  keepAlive(lease: string): Promise<void>;
  /** Deletes a lease and every key attached to it (no-op for unknown leases). */
  revoke(lease: string): Promise<void>;
  /** Throws when the store cannot serve reads (used by `/readyz`). */
  ping(): Promise<void>;
  /** Releases resources (stops watches and timers); the store is unusable afterwards. */
  close(): Promise<void>;
}

/** A store-level failure (not a caller input error). */
export class StoreError extends Error {
  /** A failure described by `message`. */
  constructor(message: string) {
    super(message);
    this.name = "StoreError";
  }
}

/**
 * A watch asked for history older than the store retains (etcd `ErrCompacted`). An
 * {@link ApiError} with code `revision_compacted` (HTTP 410, shared/errors.ts) and
 * `details: {compact_revision, requested_revision}`, so an event stream can forward it as is.
 * The caller lists again and watches from the new list's revision.
 */
export class StoreCompactedError extends ApiError {
  /** The newest discarded revision: a watch from this revision or later can resume. */
  readonly compactRevision: string;
  /** The revision the watch needed to resume from. */
  readonly requestedRevision: string;

  /** `compactRevision`: the newest discarded revision; `requestedRevision`: the one needed. */
  constructor(compactRevision: string, requestedRevision: string) {
    super(
      "revision_compacted",
      `revision ${requestedRevision} is compacted (history kept after revision ` +
        `${compactRevision}); list again and watch from the new revision`,
      { compact_revision: compactRevision, requested_revision: requestedRevision },
    );
    this.name = "StoreCompactedError";
    this.compactRevision = compactRevision;
    this.requestedRevision = requestedRevision;
  }
}

const REVISION_RE = /^\d{1,20}$/;

function revisionError(what: string, value: string): ApiError {
  return new ApiError("validation_failed", `invalid ${what}: not a store revision`, {
    fields: [{ path: what, message: `${JSON.stringify(value)} is not a decimal revision` }],
  });
}

/**
 * Parses a revision string (1–20 decimal digits, as shared/api/events.ts `RevisionSchema`)
 * into a number. Revisions above 2^53 lose precision; a store never reaches them.
 *
 * @throws ApiError `validation_failed` (field `what`) when malformed
 */
export function parseRevision(revision: string, what = "revision"): number {
  if (typeof revision !== "string" || !REVISION_RE.test(revision)) {
    throw revisionError(what, String(revision));
  }
  return Number(revision);
}

/**
 * Orders two revisions numerically: negative when `a` is older than `b`, 0 when equal,
 * positive when newer (`"9" < "10"`, unlike a string compare).
 *
 * @throws ApiError `validation_failed` when either is not a decimal revision
 */
export function compareRevisions(a: string, b: string): number {
  if (typeof a !== "string" || !REVISION_RE.test(a)) throw revisionError("revision", String(a));
  if (typeof b !== "string" || !REVISION_RE.test(b)) throw revisionError("revision", String(b));
  const x = BigInt(a), y = BigInt(b);
  return x < y ? -1 : x > y ? 1 : 0;
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
