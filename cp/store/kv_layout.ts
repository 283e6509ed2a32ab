/**
 * The layout of the embedded store inside Deno KV (used only by `cp/store/kv*.ts`): key
 * prefixes, record shapes, the value codec and chunking, and the mutations that write a key
 * and its change-log entry.
 *
 * Keys (each a Deno KV key tuple):
 * - `["m", "rev"]` → number: the store revision (of the last commit; absent = 0). Every commit
 *   that changes a key checks its versionstamp and sets it to revision + 1, which serializes
 *   commits across handles and processes;
 * - `["m", "compact"]` → number: the compact revision C; change-log entries ≤ C are deleted;
 * - `["k", key]` → {@link Envelope}: the key's metadata and the first chunk of its value;
 * - `["c", key, i]` → `Uint8Array`: chunk `i ≥ 1` of a value over {@link CHUNK_BYTES} (Deno KV
 *   caps one value at 64 KiB; VM records carry up to 64 KiB of user-data);
 * - `["e", rev, idx]` → {@link EventRecord}: change `idx` of revision `rev` (the changes of one
 *   commit in key order) with, for a put, the first chunk of the value written;
 * - `["ec", rev, idx, i]` → `Uint8Array`: chunk `i ≥ 1` of that value;
 * - `["l", lease]` → {@link LeaseRec}; `["lk", lease, key]` → `true` for each attached key.
 *
 * @module
 */
import { StoreError, type StoreValue } from "./store.ts";

/** Bytes per stored chunk (below Deno KV's 64 KiB value cap, leaving room for the envelope). */
export const CHUNK_BYTES = 60_000;
/**
 * Largest value accepted, bytes. A put writes its value twice (the key and its change-log
 * entry) in one Deno KV commit, whose mutations may total at most 800 KiB; so 6 chunks.
 */
export const MAX_VALUE_BYTES = 6 * CHUNK_BYTES;
/**
 * Budget of value bytes one transaction may write (each put counts twice, see
 * {@link MAX_VALUE_BYTES}), leaving room for keys and envelopes under Deno KV's 800 KiB.
 */
export const TXN_VALUE_BUDGET_BYTES = 780_000;

/** Key of the revision counter. */
export const REV_KEY: Deno.KvKey = ["m", "rev"];
/** Key of the compact revision. */
export const COMPACT_KEY: Deno.KvKey = ["m", "compact"];
/** Prefix of key envelopes. */
export const K = "k";
/** Prefix of value chunks ≥ 1. */
export const C = "c";
/** Prefix of change-log entries. */
export const E = "e";
/** Prefix of change-log value chunks ≥ 1. */
export const EC = "ec";
/** Prefix of lease records. */
export const L = "l";
/** Prefix of lease → attached key links. */
export const LK = "lk";

/** How a value is encoded: JSON text or raw bytes. */
export type Encoding = "json" | "bytes";

/** The record of one key. */
export interface Envelope {
  /** Writes since (re)creation (etcd `version`). */
  ver: number;
  /** The attached lease, if any. */
  lease: string | null;
  /** Chunk count (≥ 1). */
  n: number;
  /** How the value is encoded. */
  enc: Encoding;
  /** First chunk. */
  d: Uint8Array;
  /** Revision of the last write; absent in stores written before revisions were kept (0). */
  mod?: number;
  /** Revision of the (re)creating write; absent as `mod`. */
  cr?: number;
}

/** One change in the change log. */
export interface EventRecord {
  /** What happened to the key. */
  t: "put" | "delete";
  /** The key changed. */
  key: string;
  /** Commit time, ms epoch (the handle's clock), for time-based retention. */
  at: number;
  /** Put: chunk count of the value written. */
  n?: number;
  /** Put: its encoding. */
  enc?: Encoding;
  /** Put: its first chunk. */
  d?: Uint8Array;
}

/** A lease. */
export interface LeaseRec {
  /** TTL, seconds. */
  ttl: number;
  /** Expiry, ms epoch; 0 once a revoke started. */
  expires: number;
}

const enc = new TextEncoder();
const dec = new TextDecoder();

/** An encoded value split into chunks. */
export interface EncodedValue {
  /** How the value is encoded. */
  enc: Encoding;
  /** The whole encoding, bytes. */
  bytes: Uint8Array;
  /** Chunks of at most {@link CHUNK_BYTES} (at least one, possibly empty). */
  chunks: Uint8Array[];
}

/**
 * Encodes a value (`Uint8Array` as bytes, anything else as JSON) and splits it into chunks.
 *
 * @throws StoreError when not JSON-serializable or larger than {@link MAX_VALUE_BYTES}
 */
export function encodeValue(key: string, value: StoreValue): EncodedValue {
  let e: Encoding, bytes: Uint8Array;
  if (value instanceof Uint8Array) {
    e = "bytes";
    bytes = value;
  } else {
    const json = JSON.stringify(value);
    if (json === undefined) throw new StoreError(`value of ${key} is not JSON-serializable`);
    e = "json";
    bytes = enc.encode(json);
  }
  if (bytes.length > MAX_VALUE_BYTES) {
    throw new StoreError(
      `value of ${key} too large: ${bytes.length} bytes (max ${MAX_VALUE_BYTES})`,
    );
  }
  // Copies (not views): Deno KV serializes a view inside an object with its whole buffer.
  const chunks: Uint8Array[] = [];
  for (let off = 0; off < bytes.length || chunks.length === 0; off += CHUNK_BYTES) {
    chunks.push(bytes.slice(off, off + CHUNK_BYTES));
  }
  return { enc: e, bytes, chunks };
}

/** Decodes the bytes of a value. */
export function decodeValue(e: Encoding, bytes: Uint8Array): unknown {
  return e === "bytes" ? bytes : JSON.parse(dec.decode(bytes));
}

/** Concatenates chunks. */
export function concat(parts: Uint8Array[]): Uint8Array {
  if (parts.length === 1) return parts[0];
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.length;
  }
  return out;
}

/**
 * Adds to `atomic` the mutations of putting `value` at `key` as revision `rev` (envelope,
 * chunks, stale chunks of the old value, lease links), given the current envelope `old`.
 */
export function putMutations(
  atomic: Deno.AtomicOperation,
  key: string,
  old: Envelope | null,
  value: EncodedValue,
  lease: string | null,
  rev: number,
): void {
  const n = value.chunks.length;
  atomic.set(
    [K, key],
    {
      ver: old ? old.ver + 1 : 1,
      lease,
      n,
      enc: value.enc,
      d: value.chunks[0],
      mod: rev,
      cr: old ? (old.cr ?? 0) : rev,
    } satisfies Envelope,
  );
  for (let i = 1; i < n; i++) atomic.set([C, key, i], value.chunks[i]);
  for (let i = n; i < (old?.n ?? 0); i++) atomic.delete([C, key, i]);
  if (old?.lease && old.lease !== lease) atomic.delete([LK, old.lease, key]);
  if (lease) atomic.set([LK, lease, key], true);
}

/** Adds to `atomic` the mutations of deleting `key` (current envelope `old`). */
export function deleteMutations(atomic: Deno.AtomicOperation, key: string, old: Envelope): void {
  atomic.delete([K, key]);
  for (let i = 1; i < old.n; i++) atomic.delete([C, key, i]);
  if (old.lease) atomic.delete([LK, old.lease, key]);
}

/**
 * Adds to `atomic` change-log entry `idx` of revision `rev`: a delete, or a put with its value.
 * `at` is the commit time (ms epoch).
 */
export function eventMutations(
  atomic: Deno.AtomicOperation,
  rev: number,
  idx: number,
  key: string,
  at: number,
  value: EncodedValue | null,
): void {
  if (!value) {
    atomic.set([E, rev, idx], { t: "delete", key, at } satisfies EventRecord);
    return;
  }
  const n = value.chunks.length;
  atomic.set(
    [E, rev, idx],
    { t: "put", key, at, n, enc: value.enc, d: value.chunks[0] } satisfies EventRecord,
  );
  for (let i = 1; i < n; i++) atomic.set([EC, rev, idx, i], value.chunks[i]);
}
