/**
 * The etcd store backend (DESIGN.md "Store": `store.backend: etcd`, for several control-plane
 * replicas): the {@link Store} interface on an etcd v3 cluster (3.4 or later), through etcd's
 * JSON gRPC gateway (`etcd_client.ts` says why not `npm:etcd3`).
 *
 * Mapping (etcd semantics are the store's model, so most of it is direct):
 * - keys: `<prefix><key>` as UTF-8; the optional `prefix` namespaces several stores in one
 *   etcd (tests, or two products sharing a cluster). Ranges are etcd prefix ranges.
 * - values: JSON text as UTF-8 (readable with `etcdctl get`); raw bytes are stored as one
 *   `0x00` tag byte followed by the bytes (JSON text never starts with NUL).
 * - revisions: etcd's own: header `revision`, `mod_revision`, `create_revision`, `version`.
 *   A range reads one consistent etcd snapshot (a listing without `limit` reads its pages at
 *   the first page's revision), linearizable.
 * - transactions: etcd `Txn`; `absent` / `version: 0` compare `version = 0`, `absent: false`
 *   compares `version > 0`; ops are sent in key order so one transaction's watch events come
 *   in key order. Size limits are etcd's (`--max-request-bytes`, default 1.5 MiB per request;
 *   `--max-txn-ops`, default 128 ops per transaction).
 * - watches: one etcd watch stream per watcher from `fromRevision + 1`; after a broken
 *   stream it resumes from the last revision delivered (events of that revision or older are
 *   dropped, so each is delivered once). An etcd compaction cancel becomes
 *   {@link StoreCompactedError}. etcd's compact revision C keeps revision C itself, so
 *   `compact(R)` asks etcd to compact at R + 1, and a cancel at C reports `C - 1` as the
 *   newest discarded revision (compacting at the current revision R itself can only compact
 *   at R: a watch from R - 1 then still works).
 * - leases: etcd leases, ids as decimal strings; TTLs are whole seconds (rounded up; etcd
 *   raises TTLs below its minimum) and an expired lease is revoked by the etcd leader within
 *   about 0.5 s after its TTL (etcd's lessor checks twice a second). In that window a put
 *   attached to the expired lease is still accepted, and deleted with the lease's other keys
 *   (never an orphan); once revoked, such a put is refused.
 * - failures: etcd unreachable or without leader → `ApiError("store_unavailable")`; etcd
 *   refusing a write (too large, unknown lease, too many ops) → {@link StoreError}. A watch
 *   outlives outages: it re-opens with a growing pause (up to 2 s) and resumes where it
 *   was. A peer that vanishes without closing the connection (a network partition) leaves
 *   its watch streams waiting until TCP gives up; reads and writes time out meanwhile.
 *
 * @module
 */
import { ApiError } from "../../shared/errors.ts";
import {
  type Compare,
  decodeCursor,
  encodeCursor,
  type KeyValue,
  type Op,
  parseRevision,
  type RangeOptions,
  type RangeResult,
  type Store,
  StoreCompactedError,
  StoreError,
  type StoreValue,
  type TxnRequest,
  type TxnResult,
  type WatchCallback,
  type WatchEvent,
  type WatchOptions,
} from "./store.ts";
import {
  EtcdClient,
  type EtcdClientOptions,
  EtcdRpcError,
  type EtcdTls,
  GrpcCode,
} from "./etcd_client.ts";

export type { EtcdTls } from "./etcd_client.ts";

/** Options of {@link openEtcdStore}. */
export interface EtcdStoreOptions {
  /** Client URLs of the etcd members (`https://host:2379`; `http://` only without TLS). */
  endpoints: string[];
  /** CA and client certificate for the members (PEM text); null/absent for plain HTTP. */
  tls?: EtcdTls | null;
  /**
   * Key namespace: every store key is stored as `prefix + key` (default ""). Like etcd's own
   * namespaces, one must not be a prefix of another sharing the cluster (`/a` and `/ab`).
   */
  prefix?: string;
  /** Connect + answer headers per endpoint, ms (default 5000). */
  dialTimeoutMs?: number;
  /** A whole request, ms (default 15000). */
  requestTimeoutMs?: number;
}

/** Keys read per page by a range without `limit`. */
const PAGE = 1000;
/** Longest pause between attempts to re-open a broken watch stream, ms. */
const WATCH_BACKOFF_MAX_MS = 2000;

/**
 * Opens a store on an etcd cluster and checks that it answers (one linearizable read).
 *
 * @throws StoreError for invalid options (endpoints, TLS material, timeouts)
 * @throws ApiError `store_unavailable` when no endpoint answers
 */
export async function openEtcdStore(opts: EtcdStoreOptions): Promise<Store> {
  const prefix = opts.prefix ?? "";
  if (typeof prefix !== "string") throw new StoreError("etcd store prefix must be a string");
  const clientOpts: EtcdClientOptions = {
    endpoints: opts.endpoints,
    tls: opts.tls ?? null,
    dialTimeoutMs: opts.dialTimeoutMs,
    requestTimeoutMs: opts.requestTimeoutMs,
  };
  const client = new EtcdClient(clientOpts);
  const store = new EtcdStore(client, prefix);
  try {
    await store.ping();
  } catch (e) {
    await store.close();
    throw e;
  }
  return store;
}

// ---- wire shapes (etcd's protobuf messages as JSON) ----

interface Header {
  revision: string;
}
interface EtcdKv {
  key: string;
  value?: string;
  create_revision?: string;
  mod_revision?: string;
  version?: string;
  lease?: string;
}
interface RangeResponse {
  header: Header;
  kvs?: EtcdKv[];
  more?: boolean;
}
interface TxnResponse {
  header: Header;
  succeeded?: boolean;
  responses?: { response_put?: unknown; response_delete_range?: { deleted?: string } }[];
}
interface WatchResponse {
  header?: Header;
  created?: boolean;
  canceled?: boolean;
  compact_revision?: string;
  cancel_reason?: string;
  events?: { type?: "PUT" | "DELETE"; kv: EtcdKv }[];
}

/** A watcher of this handle. */
interface EtcdWatcher {
  prefix: string;
  cb: WatchCallback;
  onError?: (e: Error) => void;
  /** Last revision delivered; null until the start revision is known. */
  pos: number | null;
  /** For a watch without `fromRevision`: one below the oldest own commit issued after it. */
  floor: number;
  /** The handle's operation counter at the call. */
  callSeq: number;
  done: boolean;
  ctrl: AbortController;
  loop: Promise<void> | null;
}

const enc = new TextEncoder();
const dec = new TextDecoder("utf-8", { fatal: true });
const LEASE_ID_RE = /^[1-9]\d{0,18}$/;

class EtcdStore implements Store {
  readonly #client: EtcdClient;
  readonly #ns: string;
  #closed = false;
  #watchers = new Set<EtcdWatcher>();
  /** Counter of writes and watch calls (orders a watch call against this handle's writes). */
  #seq = 0;
  /** Writes in flight by their sequence number (settled, never rejecting). */
  #inflight = new Map<number, Promise<void>>();

  constructor(client: EtcdClient, ns: string) {
    this.#client = client;
    this.#ns = ns;
  }

  #assertOpen(): void {
    if (this.#closed) throw new StoreError("store is closed");
  }

  // ---- keys and values ----

  #key(key: string): string {
    return b64(enc.encode(this.#ns + key));
  }

  /** The store key of an etcd key (base64). */
  #unkey(b64key: string): string {
    return dec.decode(Uint8Array.fromBase64(b64key)).slice(this.#ns.length);
  }

  #toKeyValue<T>(kv: EtcdKv): KeyValue<T> {
    const key = this.#unkey(kv.key);
    return {
      key,
      value: decodeValue(key, kv.value) as T,
      modRevision: kv.mod_revision ?? "0",
      createRevision: kv.create_revision ?? "0",
      version: Number(kv.version ?? 0),
      lease: kv.lease && kv.lease !== "0" ? kv.lease : null,
    };
  }

  // ---- reads ----

  async get<T = unknown>(key: string): Promise<KeyValue<T> | null> {
    this.#assertOpen();
    const res = await this.#read<RangeResponse>("kv/range", { key: this.#key(key) });
    return res.kvs?.length ? this.#toKeyValue<T>(res.kvs[0]) : null;
  }

  async range<T = unknown>(prefix: string, opts: RangeOptions = {}): Promise<RangeResult<T>> {
    this.#assertOpen();
    const limit = opts.limit ?? Infinity;
    if (!(limit >= 1)) throw new StoreError("range limit must be >= 1");
    const after = opts.cursor ? decodeCursor(opts.cursor, prefix) : null;
    const full = enc.encode(this.#ns + prefix);
    const rangeEnd = b64(prefixEnd(full));
    const startKey = after === null ? nonEmpty(full) : enc.encode(this.#ns + after + "\0");
    if (Number.isFinite(limit)) {
      const res = await this.#read<RangeResponse>("kv/range", {
        key: b64(startKey),
        range_end: rangeEnd,
        limit: String(Math.floor(limit)),
      });
      const kvs = (res.kvs ?? []).map((kv) => this.#toKeyValue<T>(kv));
      return {
        kvs,
        nextCursor: res.more && kvs.length ? encodeCursor(kvs[kvs.length - 1].key) : null,
        revision: res.header.revision,
      };
    }
    // No limit: pages of PAGE keys, all read at the first page's revision (one snapshot).
    for (let attempt = 0;; attempt++) {
      const kvs: KeyValue<T>[] = [];
      let revision: string | null = null;
      let from = startKey;
      try {
        for (;;) {
          const res: RangeResponse = await this.#read<RangeResponse>("kv/range", {
            key: b64(from),
            range_end: rangeEnd,
            limit: String(PAGE),
            ...(revision ? { revision } : {}),
          });
          revision ??= res.header.revision;
          const page = res.kvs ?? [];
          for (const kv of page) kvs.push(this.#toKeyValue<T>(kv));
          if (!res.more || !page.length) break;
          from = concat(Uint8Array.fromBase64(page[page.length - 1].key), new Uint8Array([0]));
        }
        return { kvs, nextCursor: null, revision: revision! };
      } catch (e) {
        // The snapshot revision was compacted between pages: read again at a newer one.
        if (!(isCompacted(e) && attempt < 5)) throw asStoreError(e);
      }
    }
  }

  async currentRevision(): Promise<string> {
    this.#assertOpen();
    const res = await this.#read<RangeResponse>("kv/range", {
      key: b64(nonEmpty(enc.encode(this.#ns))),
      count_only: true,
    });
    return res.header.revision;
  }

  /**
   * A read (safe to repeat on another member).
   *
   * @throws StoreError when etcd refuses it (an EtcdRpcError when the revision is compacted)
   * @throws ApiError `store_unavailable` when no member answers
   */
  async #read<T>(path: string, body: Record<string, unknown>): Promise<T> {
    try {
      return await this.#client.call<T>(path, body, { idempotent: true });
    } catch (e) {
      throw isCompacted(e) ? e : asStoreError(e);
    }
  }

  // ---- writes ----

  txn(req: TxnRequest): Promise<TxnResult> {
    let body: Record<string, unknown>;
    let branches: Op[][];
    try {
      this.#assertOpen();
      branches = [req.success, req.failure ?? []];
      for (const branch of branches) {
        const seen = new Set<string>();
        for (const op of branch) {
          if (seen.has(op.key)) throw new StoreError(`duplicate key in transaction: ${op.key}`);
          seen.add(op.key);
        }
      }
      body = {
        compare: req.compare.flatMap((c) => this.#compare(c)),
        success: this.#ops(req.success),
        failure: this.#ops(req.failure ?? []),
      };
    } catch (e) {
      return Promise.reject(e);
    }
    return this.#write(async (seq) => {
      let res: TxnResponse;
      try {
        res = await this.#client.call<TxnResponse>("kv/txn", body);
      } catch (e) {
        throw writeError(e);
      }
      const succeeded = res.succeeded === true;
      const ops = succeeded ? branches[0] : branches[1];
      const changed = ops.some((o) => o.type === "put") ||
        (res.responses ?? []).some((r) => Number(r.response_delete_range?.deleted ?? 0) > 0);
      if (changed) this.#committed(seq, Number(res.header.revision));
      return { succeeded, revision: res.header.revision };
    });
  }

  async put(key: string, value: StoreValue, opts: { lease?: string | null } = {}) {
    const res = await this.txn({
      compare: [],
      success: [{ type: "put", key, value, lease: opts.lease ?? null }],
    });
    return res.revision;
  }

  delete(key: string): Promise<boolean> {
    try {
      this.#assertOpen();
    } catch (e) {
      return Promise.reject(e);
    }
    return this.#write(async (seq) => {
      let res: { header: Header; deleted?: string };
      try {
        res = await this.#client.call("kv/deleterange", { key: this.#key(key) });
      } catch (e) {
        throw writeError(e);
      }
      const deleted = Number(res.deleted ?? 0) > 0;
      if (deleted) this.#committed(seq, Number(res.header.revision));
      return deleted;
    });
  }

  /** Runs a write as operation `seq`, tracked while in flight (for watch start positions). */
  #write<T>(fn: (seq: number) => Promise<T>): Promise<T> {
    const seq = ++this.#seq;
    const p = fn(seq);
    const settled = p.then(() => {}, () => {});
    this.#inflight.set(seq, settled);
    settled.then(() => this.#inflight.delete(seq));
    return p;
  }

  /** Write `seq` committed `rev`: watchers called before it must start at or below rev - 1. */
  #committed(seq: number, rev: number): void {
    for (const w of this.#watchers) {
      if (w.pos === null && w.callSeq < seq && rev - 1 < w.floor) w.floor = rev - 1;
    }
  }

  #compare(c: Compare): Record<string, unknown>[] {
    const key = this.#key(c.key);
    if ("modRevision" in c) {
      const rev = parseRevision(c.modRevision, "compare.modRevision");
      if (rev === 0) {
        // "exists with mod revision 0" never holds in etcd (an absent key has mod 0).
        return [
          { key, target: "MOD", result: "EQUAL", mod_revision: "0" },
          { key, target: "VERSION", result: "GREATER", version: "0" },
        ];
      }
      return [{ key, target: "MOD", result: "EQUAL", mod_revision: String(rev) }];
    }
    if ("version" in c) {
      return [{ key, target: "VERSION", result: "EQUAL", version: String(c.version) }];
    }
    return [{ key, target: "VERSION", result: c.absent ? "EQUAL" : "GREATER", version: "0" }];
  }

  /** etcd request ops for `ops`, in key order (the order of their watch events). */
  #ops(ops: Op[]): Record<string, unknown>[] {
    return [...ops].sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0)).map((op) => {
      if (op.type === "delete") return { request_delete_range: { key: this.#key(op.key) } };
      const put: Record<string, unknown> = {
        key: this.#key(op.key),
        value: b64(encodeValue(op.key, op.value)),
      };
      if (op.lease) {
        if (!LEASE_ID_RE.test(op.lease)) {
          throw new StoreError(`lease ${op.lease} not found or expired`);
        }
        put.lease = op.lease;
      }
      return { request_put: put };
    });
  }

  // ---- watch ----

  watch(prefix: string, cb: WatchCallback, opts: WatchOptions = {}): () => void {
    this.#assertOpen();
    const pos = opts.fromRevision === undefined
      ? null
      : parseRevision(opts.fromRevision, "fromRevision");
    const w: EtcdWatcher = {
      prefix,
      cb,
      onError: opts.onError,
      pos,
      floor: Infinity,
      callSeq: ++this.#seq,
      done: false,
      ctrl: new AbortController(),
      loop: null,
    };
    this.#watchers.add(w);
    w.loop = this.#follow(w);
    return () => this.#stop(w);
  }

  #stop(w: EtcdWatcher): void {
    if (w.done) return;
    w.done = true;
    w.ctrl.abort();
    this.#watchers.delete(w);
  }

  #fail(w: EtcdWatcher, err: Error): void {
    if (w.done) return;
    this.#stop(w);
    try {
      w.onError?.(err);
    } catch {
      // ignored (Store.watch)
    }
  }

  /** Runs one watcher: finds its start, then follows etcd's watch, re-opening it as needed. */
  async #follow(w: EtcdWatcher): Promise<void> {
    await Promise.resolve(); // callbacks never run in the caller's stack
    let backoff = 50;
    const pause = async () => {
      await abortableDelay(backoff, w.ctrl.signal);
      backoff = Math.min(backoff * 2, WATCH_BACKOFF_MAX_MS);
    };
    while (w.pos === null && !w.done) {
      try {
        const rev = Number(await this.currentRevision());
        // Own writes issued after the call but not yet answered may have committed at or
        // below `rev`: wait for them, so their revisions lower the floor.
        const pending = [...this.#inflight].filter(([seq]) => seq > w.callSeq);
        await Promise.all(pending.map(([, p]) => p));
        w.pos = Math.min(rev, w.floor);
      } catch (e) {
        if (!(e instanceof ApiError && e.code === "store_unavailable")) {
          return this.#fail(w, asStoreError(e));
        }
        await pause();
      }
    }
    const full = enc.encode(this.#ns + w.prefix);
    while (!w.done) {
      const request = {
        create_request: {
          key: b64(nonEmpty(full)),
          range_end: b64(prefixEnd(full)),
          start_revision: String(w.pos! + 1),
        },
      };
      try {
        for await (const msg of this.#client.stream("watch", request, w.ctrl.signal)) {
          const res = msg as WatchResponse;
          backoff = 50;
          if (res.canceled) {
            const c = Number(res.compact_revision ?? 0);
            return this.#fail(
              w,
              c > 0
                ? new StoreCompactedError(String(c - 1), String(w.pos))
                : new StoreError(`watch cancelled by etcd: ${res.cancel_reason || "no reason"}`),
            );
          }
          if (res.events?.length) this.#deliver(w, res.events);
          if (w.done) return;
        }
      } catch (e) {
        if (w.done) return;
        if (e instanceof EtcdRpcError && e.code !== GrpcCode.Unavailable) {
          return this.#fail(w, new StoreError(`watch refused by etcd: ${e.message}`));
        }
        if (e instanceof StoreError) return this.#fail(w, e);
      }
      if (!w.done) await pause();
    }
  }

  /** Hands `w` the events of one watch response newer than its position. */
  #deliver(w: EtcdWatcher, events: NonNullable<WatchResponse["events"]>): void {
    const pos = w.pos!;
    let last = pos;
    for (const ev of events) {
      if (w.done) return;
      const rev = Number(ev.kv.mod_revision);
      if (rev <= pos) continue; // already delivered before the stream was re-opened
      const key = this.#unkey(ev.kv.key);
      const event: WatchEvent = ev.type === "DELETE"
        ? { type: "delete", key, revision: String(rev) }
        : { type: "put", key, value: decodeValue(key, ev.kv.value), revision: String(rev) };
      if (rev > last) last = rev;
      try {
        w.cb(event);
      } catch {
        // a watcher's failure affects neither the writer nor other watchers
      }
    }
    w.pos = last;
  }

  // ---- compaction ----

  async compact(revision: string): Promise<void> {
    this.#assertOpen();
    const target = parseRevision(revision);
    if (target === 0) return;
    // etcd keeps revision C itself when compacting at C: ask for target + 1 (see module doc).
    for (const at of [target + 1, target]) {
      try {
        await this.#client.call("kv/compaction", { revision: String(at) }, { idempotent: true });
        return;
      } catch (e) {
        if (isCompacted(e)) return; // already compacted that far
        if (!(e instanceof EtcdRpcError && /future revision/.test(e.message))) {
          throw asStoreError(e);
        }
      }
    }
    throw new ApiError("validation_failed", `cannot compact: revision ${target} is in the future`, {
      fields: [{ path: "revision", message: "newer than the current revision" }],
    });
  }

  // ---- leases ----

  async grant(ttlSeconds: number): Promise<string> {
    this.#assertOpen();
    if (!(ttlSeconds > 0)) throw new StoreError("lease TTL must be > 0");
    try {
      const res = await this.#client.call<{ ID: string }>(
        "lease/grant",
        { TTL: String(Math.ceil(ttlSeconds)) },
        { idempotent: true },
      );
      return res.ID;
    } catch (e) {
      throw asStoreError(e);
    }
  }

  async keepAlive(lease: string): Promise<void> {
    this.#assertOpen();
    if (!LEASE_ID_RE.test(lease)) throw new StoreError(`lease ${lease} not found or expired`);
    const ctrl = new AbortController();
    try {
      for await (const res of this.#client.stream("lease/keepalive", { ID: lease }, ctrl.signal)) {
        if (Number(res.TTL ?? 0) > 0) return;
        throw new StoreError(`lease ${lease} not found or expired`);
      }
    } catch (e) {
      throw asStoreError(e);
    } finally {
      ctrl.abort();
    }
  }

  async revoke(lease: string): Promise<void> {
    this.#assertOpen();
    if (!LEASE_ID_RE.test(lease)) return;
    try {
      await this.#client.call("lease/revoke", { ID: lease }, { idempotent: true });
    } catch (e) {
      if (e instanceof EtcdRpcError && e.code === GrpcCode.NotFound) return;
      throw asStoreError(e);
    }
  }

  // ---- lifecycle ----

  async ping(): Promise<void> {
    await this.currentRevision();
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    const loops = [...this.#watchers].map((w) => w.loop);
    for (const w of [...this.#watchers]) this.#stop(w);
    await Promise.allSettled(loops);
    await Promise.allSettled([...this.#inflight.values()]);
    this.#client.close();
  }
}

// ---- helpers ----

function b64(bytes: Uint8Array): string {
  return bytes.toBase64();
}

/** etcd's empty key is "no key": a range from the very start uses "\0". */
function nonEmpty(bytes: Uint8Array): Uint8Array {
  return bytes.length ? bytes : new Uint8Array([0]);
}

/** The end of the prefix range of `prefix` (etcd `GetPrefixRangeEnd`; "\0" = to the end). */
export function prefixEnd(prefix: Uint8Array): Uint8Array {
  for (let i = prefix.length - 1; i >= 0; i--) {
    if (prefix[i] < 0xff) {
      const end = prefix.slice(0, i + 1);
      end[i]++;
      return end;
    }
  }
  return new Uint8Array([0]);
}

function concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}

/**
 * The stored form of a value: JSON text, or `0x00` + the bytes of a `Uint8Array`.
 *
 * @throws StoreError for a value JSON cannot represent
 */
export function encodeValue(key: string, value: StoreValue): Uint8Array {
  if (value instanceof Uint8Array) return concat(new Uint8Array([0]), value);
  const json = JSON.stringify(value);
  if (json === undefined) throw new StoreError(`value of ${key} is not JSON-serializable`);
  return enc.encode(json);
}

/**
 * Decodes a stored value (base64 as etcd's gateway sends it; absent = empty).
 *
 * @throws StoreError when it is neither tagged bytes nor JSON text (not written by a store)
 */
export function decodeValue(key: string, b64value: string | undefined): unknown {
  const bytes = Uint8Array.fromBase64(b64value ?? "");
  if (bytes.length && bytes[0] === 0) return bytes.slice(1);
  try {
    return JSON.parse(dec.decode(bytes));
  } catch {
    throw new StoreError(`value of ${key} in etcd is not a store value (JSON or tagged bytes)`);
  }
}

function isCompacted(e: unknown): boolean {
  return e instanceof EtcdRpcError && /required revision has been compacted/.test(e.message);
}

/** etcd's refusal of a write, as the store reports it. */
function writeError(e: unknown): Error {
  if (!(e instanceof EtcdRpcError)) return e as Error;
  if (/lease not found/.test(e.message)) return new StoreError("lease not found or expired");
  if (/too large/.test(e.message) || e.code === GrpcCode.ResourceExhausted) {
    return new StoreError(`transaction too large: ${e.message}`);
  }
  return new StoreError(`etcd refused the transaction: ${e.message}`);
}

/** An etcd refusal as a StoreError; ApiErrors (store_unavailable) pass through. */
function asStoreError(e: unknown): Error {
  if (e instanceof EtcdRpcError) return new StoreError(`etcd: ${e.message}`);
  return e as Error;
}

/** Waits `ms`, or less when `signal` aborts. */
function abortableDelay(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const t = setTimeout(done, ms);
    function done() {
      clearTimeout(t);
      signal.removeEventListener("abort", done);
      resolve();
    }
    signal.addEventListener("abort", done, { once: true });
  });
}

/** `store.etcd` of the control-plane config for an external cluster (cp/config.ts). */
export interface EtcdStoreConfig {
  /** Client URLs of the members (`https://host:port`). */
  endpoints: string[];
  /** CA certificate file (PEM) of the members' certificates. */
  ca_file?: string;
  /** Client certificate and key files (PEM), both or neither. */
  cert_file?: string;
  key_file?: string;
  /** Key namespace ({@link EtcdStoreOptions.prefix}). */
  prefix?: string;
}

/**
 * Opens the store on the external etcd cluster of the config (`store.etcd`), reading its TLS
 * files.
 *
 * @throws StoreError naming a TLS file that cannot be read, or as {@link openEtcdStore}
 * @throws ApiError `store_unavailable` when no endpoint answers
 */
export async function openConfiguredEtcdStore(cfg: EtcdStoreConfig): Promise<Store> {
  const read = async (key: string, path: string | undefined) => {
    if (!path) return undefined;
    try {
      return await Deno.readTextFile(path);
    } catch (e) {
      throw new StoreError(`store.etcd.${key} ${path}: ${(e as Error).message}`);
    }
  };
  const caPem = await read("ca_file", cfg.ca_file);
  return await openEtcdStore({
    endpoints: cfg.endpoints,
    tls: caPem === undefined ? null : {
      caPem,
      certPem: await read("cert_file", cfg.cert_file),
      keyPem: await read("key_file", cfg.key_file),
    },
    prefix: cfg.prefix,
  });
}
