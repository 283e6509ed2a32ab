/**
 * The embedded store backend: Deno KV (SQLite) in `<data_dir>/store.kv` (DESIGN.md "Store",
 * "embedded (default)"). This is the only module that touches Deno KV.
 *
 * Layout inside Deno KV:
 * - `["k", key]` → envelope `{ver, lease, n, enc, d}`: write count, lease id, chunk count,
 *   encoding (`json` | `bytes`) and the first chunk of the encoded value;
 * - `["c", key, i]` → chunk `i ≥ 1` of values over {@link CHUNK_BYTES} (Deno KV caps one
 *   value at 64 KiB; VM records carry up to 64 KiB of user-data);
 * - `["l", lease]` → `{ttl, expires}` (ms epoch); `["lk", lease, key]` → attached keys.
 *
 * Transactions read every involved key, evaluate the compares locally, then commit the chosen
 * branch with `kv.atomic().check()` on every read versionstamp, retrying on interference, so
 * they are serializable. The versionstamp of the `["k", key]` entry is the key's revision.
 * Watches are in-process (single-process embedded store): events are emitted after commit.
 * A sweeper deletes the keys of expired leases every {@link SWEEP_INTERVAL_MS}.
 *
 * @module
 */
import {
  type Compare,
  decodeCursor,
  encodeCursor,
  type KeyValue,
  type RangeOptions,
  type RangeResult,
  type Store,
  StoreError,
  type StoreValue,
  type TxnRequest,
  type TxnResult,
  type WatchCallback,
  type WatchEvent,
} from "./store.ts";

/** Bytes per stored chunk (below Deno KV's 64 KiB value cap, leaving room for the envelope). */
export const CHUNK_BYTES = 60_000;
/** Largest value accepted, bytes (envelope + 8 chunks fit one `getMany`, max 10 keys). */
export const MAX_VALUE_BYTES = 9 * CHUNK_BYTES;
/** How often expired leases are swept, milliseconds. */
export const SWEEP_INTERVAL_MS = 250;

interface Envelope {
  ver: number;
  lease: string | null;
  n: number;
  enc: "json" | "bytes";
  d: Uint8Array;
}

interface LeaseRec {
  ttl: number;
  expires: number;
}

const K = "k";
const C = "c";
const L = "l";
const LK = "lk";

const enc = new TextEncoder();
const dec = new TextDecoder();

function encodeValue(value: StoreValue): { enc: "json" | "bytes"; bytes: Uint8Array } {
  if (value instanceof Uint8Array) return { enc: "bytes", bytes: value };
  const json = JSON.stringify(value);
  if (json === undefined) throw new StoreError("value is not JSON-serializable");
  return { enc: "json", bytes: enc.encode(json) };
}

function decodeValue(e: "json" | "bytes", bytes: Uint8Array): unknown {
  return e === "bytes" ? bytes : JSON.parse(dec.decode(bytes));
}

function concat(parts: Uint8Array[]): Uint8Array {
  const total = parts.reduce((n, p) => n + p.length, 0);
  const out = new Uint8Array(total);
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.length;
  }
  return out;
}

/** Options of {@link openKvStore}. */
export interface KvStoreOptions {
  /** Clock (ms epoch) used for lease expiry; tests may inject one. */
  now?: () => number;
  /** Sweep interval for expired leases, ms. */
  sweepIntervalMs?: number;
}

/**
 * Opens (creating if needed) the embedded store at `path` (a Deno KV file, e.g.
 * `<data_dir>/store.kv`). Requires `--unstable-kv` and read/write permission on the file.
 */
export async function openKvStore(path: string, opts: KvStoreOptions = {}): Promise<Store> {
  const kv = await Deno.openKv(path);
  return new KvStore(kv, opts);
}

class KvStore implements Store {
  #kv: Deno.Kv;
  #watchers = new Set<{ prefix: string; cb: WatchCallback }>();
  #now: () => number;
  #timer: number;
  #closed = false;
  #sweeping = false;

  constructor(kv: Deno.Kv, opts: KvStoreOptions) {
    this.#kv = kv;
    this.#now = opts.now ?? Date.now;
    this.#timer = setInterval(() => {
      void this.#sweep();
    }, opts.sweepIntervalMs ?? SWEEP_INTERVAL_MS) as unknown as number;
    Deno.unrefTimer(this.#timer);
  }

  async get<T = unknown>(key: string): Promise<KeyValue<T> | null> {
    const entry = await this.#kv.get<Envelope>([K, key]);
    if (entry.value === null) return null;
    return await this.#materialize<T>(key, entry as Deno.KvEntry<Envelope>);
  }

  /** Builds a KeyValue from an envelope entry, fetching further chunks consistently. */
  async #materialize<T>(key: string, entry: Deno.KvEntry<Envelope>): Promise<KeyValue<T> | null> {
    let env = entry.value;
    let stamp = entry.versionstamp;
    for (let attempt = 0; attempt < 20; attempt++) {
      if (env.n <= 1) {
        return {
          key,
          value: decodeValue(env.enc, env.d) as T,
          modRevision: stamp,
          version: env.ver,
          lease: env.lease,
        };
      }
      const keys: Deno.KvKey[] = [[K, key]];
      for (let i = 1; i < env.n; i++) keys.push([C, key, i]);
      const entries = await this.#kv.getMany<unknown[]>(keys);
      const head = entries[0] as Deno.KvEntryMaybe<Envelope>;
      if (head.value === null) return null;
      if (head.versionstamp === stamp || head.value.n === env.n) {
        const chunks = entries.slice(1).map((e) => e.value as Uint8Array | null);
        if (chunks.every((c) => c instanceof Uint8Array)) {
          const bytes = concat([head.value.d, ...(chunks as Uint8Array[])]);
          return {
            key,
            value: decodeValue(head.value.enc, bytes) as T,
            modRevision: head.versionstamp,
            version: head.value.ver,
            lease: head.value.lease,
          };
        }
      }
      env = head.value;
      stamp = head.versionstamp;
    }
    throw new StoreError(`read of ${key}: value keeps changing`);
  }

  async range<T = unknown>(prefix: string, opts: RangeOptions = {}): Promise<RangeResult<T>> {
    const limit = opts.limit ?? Infinity;
    if (!(limit >= 1)) throw new StoreError("range limit must be >= 1");
    const after = opts.cursor ? decodeCursor(opts.cursor, prefix) : null;
    const start = after ?? prefix;
    const kvs: KeyValue<T>[] = [];
    let more = false;
    const iter = this.#kv.list<Envelope>({ prefix: [K], start: [K, start] });
    for await (const entry of iter) {
      const key = entry.key[1] as string;
      if (!key.startsWith(prefix)) break;
      if (after !== null && key === after) continue;
      if (kvs.length >= limit) {
        more = true;
        break;
      }
      const kv = await this.#materialize<T>(key, entry);
      if (kv) kvs.push(kv);
    }
    return {
      kvs,
      nextCursor: more && kvs.length ? encodeCursor(kvs[kvs.length - 1].key) : null,
    };
  }

  async txn(req: TxnRequest): Promise<TxnResult> {
    for (const branch of [req.success, req.failure ?? []]) {
      const seen = new Set<string>();
      for (const op of branch) {
        if (seen.has(op.key)) throw new StoreError(`duplicate key in transaction: ${op.key}`);
        seen.add(op.key);
      }
    }
    for (let attempt = 0; attempt < 100; attempt++) {
      const cmpKeys = [...new Set(req.compare.map((c) => c.key))];
      const read = new Map<string, Deno.KvEntryMaybe<Envelope>>();
      await this.#readEnvelopes(cmpKeys, read);
      const succeeded = req.compare.every((c) => holds(c, read.get(c.key)!));
      const ops = succeeded ? req.success : (req.failure ?? []);
      await this.#readEnvelopes(ops.map((o) => o.key).filter((k) => !read.has(k)), read);
      const leaseIds = [
        ...new Set(
          ops.flatMap((o) => (o.type === "put" && o.lease ? [o.lease] : [])),
        ),
      ];
      const leases = leaseIds.length
        ? await this.#kv.getMany<LeaseRec[]>(leaseIds.map((l) => [L, l]))
        : [];
      const now = this.#now();
      leases.forEach((l, i) => {
        if (l.value === null || l.value.expires <= now) {
          throw new StoreError(`lease ${leaseIds[i]} not found or expired`);
        }
      });

      const atomic = this.#kv.atomic();
      for (const [key, entry] of read) {
        atomic.check({ key: [K, key], versionstamp: entry.versionstamp });
      }
      for (const l of leases) atomic.check({ key: l.key, versionstamp: l.versionstamp });
      const events: Omit<WatchEvent, "revision">[] = [];
      for (const op of ops) {
        const old = read.get(op.key)!.value;
        if (op.type === "delete") {
          if (!old) continue;
          atomic.delete([K, op.key]);
          for (let i = 1; i < old.n; i++) atomic.delete([C, op.key, i]);
          if (old.lease) atomic.delete([LK, old.lease, op.key]);
          events.push({ type: "delete", key: op.key });
          continue;
        }
        const { enc: e, bytes } = encodeValue(op.value);
        if (bytes.length > MAX_VALUE_BYTES) {
          throw new StoreError(
            `value of ${op.key} too large: ${bytes.length} bytes (max ${MAX_VALUE_BYTES})`,
          );
        }
        const n = Math.max(1, Math.ceil(bytes.length / CHUNK_BYTES));
        const lease = op.lease ?? null;
        atomic.set(
          [K, op.key],
          {
            ver: old ? old.ver + 1 : 1,
            lease,
            n,
            enc: e,
            d: bytes.slice(0, CHUNK_BYTES),
          } satisfies Envelope,
        );
        for (let i = 1; i < n; i++) {
          atomic.set([C, op.key, i], bytes.slice(i * CHUNK_BYTES, (i + 1) * CHUNK_BYTES));
        }
        for (let i = n; i < (old?.n ?? 0); i++) atomic.delete([C, op.key, i]);
        if (old?.lease && old.lease !== lease) atomic.delete([LK, old.lease, op.key]);
        if (lease) atomic.set([LK, lease, op.key], true);
        events.push({
          type: "put",
          key: op.key,
          value: e === "json" ? JSON.parse(dec.decode(bytes)) : bytes,
        });
      }
      const res = await atomic.commit();
      if (!res.ok) continue;
      this.#emit(events.map((ev) => ({ ...ev, revision: res.versionstamp })));
      return { succeeded, revision: res.versionstamp };
    }
    throw new StoreError("transaction: too many concurrent writes");
  }

  async #readEnvelopes(keys: string[], into: Map<string, Deno.KvEntryMaybe<Envelope>>) {
    for (let i = 0; i < keys.length; i += 10) {
      const batch = keys.slice(i, i + 10);
      const entries = await this.#kv.getMany<Envelope[]>(batch.map((k) => [K, k]));
      batch.forEach((k, j) => into.set(k, entries[j]));
    }
  }

  async put(key: string, value: StoreValue, opts: { lease?: string | null } = {}) {
    const res = await this.txn({
      compare: [],
      success: [{ type: "put", key, value, lease: opts.lease ?? null }],
    });
    return res.revision;
  }

  async delete(key: string): Promise<boolean> {
    const res = await this.txn({
      compare: [{ key, absent: false }],
      success: [{ type: "delete", key }],
    });
    return res.succeeded;
  }

  watch(prefix: string, cb: WatchCallback): () => void {
    const w = { prefix, cb };
    this.#watchers.add(w);
    return () => {
      this.#watchers.delete(w);
    };
  }

  #emit(events: WatchEvent[]) {
    for (const ev of events) {
      for (const w of [...this.#watchers]) {
        if (!ev.key.startsWith(w.prefix)) continue;
        try {
          w.cb(ev);
        } catch {
          // a watcher's failure must not affect the writer
        }
      }
    }
  }

  async grant(ttlSeconds: number): Promise<string> {
    if (!(ttlSeconds > 0)) throw new StoreError("lease TTL must be > 0");
    const id = crypto.randomUUID();
    await this.#kv.set([L, id], { ttl: ttlSeconds, expires: this.#now() + ttlSeconds * 1000 });
    return id;
  }

  async keepAlive(lease: string): Promise<void> {
    for (let attempt = 0; attempt < 20; attempt++) {
      const cur = await this.#kv.get<LeaseRec>([L, lease]);
      if (cur.value === null || cur.value.expires <= this.#now()) {
        throw new StoreError(`lease ${lease} not found or expired`);
      }
      const res = await this.#kv.atomic()
        .check(cur)
        .set([L, lease], { ...cur.value, expires: this.#now() + cur.value.ttl * 1000 })
        .commit();
      if (res.ok) return;
    }
    throw new StoreError(`keep-alive of lease ${lease}: too many concurrent writes`);
  }

  async revoke(lease: string): Promise<void> {
    // Expire the lease record first (a new versionstamp): a transaction that read the live
    // lease then fails its check and, retrying, finds it expired, so no key can be attached
    // once the attached keys are listed below. Without this a put landing between the last
    // listing and the final delete of the lease record left a key on a lease that no longer
    // existed, which then never expired. A crash mid-revoke leaves an expired record that the
    // sweeper revokes again.
    for (let attempt = 0;; attempt++) {
      const cur = await this.#kv.get<LeaseRec>([L, lease]);
      if (cur.value === null || cur.value.expires === 0) break;
      const res = await this.#kv.atomic().check(cur).set([L, lease], { ...cur.value, expires: 0 })
        .commit();
      if (res.ok) break;
      if (attempt >= 20) {
        throw new StoreError(`revoke of lease ${lease}: too many concurrent writes`);
      }
    }
    for (let attempt = 0; attempt < 20; attempt++) {
      const keys: string[] = [];
      for await (const e of this.#kv.list({ prefix: [LK, lease] })) keys.push(e.key[2] as string);
      // Delete attached keys (only those still attached to this lease) in batches.
      for (let i = 0; i < keys.length; i += 50) {
        const batch = keys.slice(i, i + 50);
        const read = new Map<string, Deno.KvEntryMaybe<Envelope>>();
        await this.#readEnvelopes(batch, read);
        const atomic = this.#kv.atomic();
        const events: WatchEvent[] = [];
        for (const [key, entry] of read) {
          atomic.check({ key: [K, key], versionstamp: entry.versionstamp });
          atomic.delete([LK, lease, key]);
          const old = entry.value;
          if (!old || old.lease !== lease) continue;
          atomic.delete([K, key]);
          for (let c = 1; c < old.n; c++) atomic.delete([C, key, c]);
          events.push({ type: "delete", key, revision: "" });
        }
        const res = await atomic.commit();
        if (!res.ok) break; // retry the whole revoke
        this.#emit(events.map((e) => ({ ...e, revision: res.versionstamp })));
      }
      let remaining = false;
      for await (const _ of this.#kv.list({ prefix: [LK, lease] }, { limit: 1 })) remaining = true;
      if (!remaining) {
        await this.#kv.delete([L, lease]);
        return;
      }
    }
    throw new StoreError(`revoke of lease ${lease}: too many concurrent writes`);
  }

  async #sweep() {
    if (this.#closed || this.#sweeping) return;
    this.#sweeping = true;
    try {
      const now = this.#now();
      const expired: string[] = [];
      for await (const e of this.#kv.list<LeaseRec>({ prefix: [L] })) {
        if (e.value.expires <= now) expired.push(e.key[1] as string);
      }
      for (const id of expired) {
        if (this.#closed) return;
        await this.revoke(id);
      }
    } catch {
      // the next sweep retries
    } finally {
      this.#sweeping = false;
    }
  }

  async ping(): Promise<void> {
    if (this.#closed) throw new StoreError("store is closed");
    await this.#kv.get(["ping"]);
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    clearInterval(this.#timer);
    // Let an in-flight sweep finish before closing the database.
    for (let i = 0; i < 100 && this.#sweeping; i++) await new Promise((r) => setTimeout(r, 10));
    this.#watchers.clear();
    this.#kv.close();
  }
}

function holds(c: Compare, entry: Deno.KvEntryMaybe<Envelope>): boolean {
  const env = entry.value;
  if ("modRevision" in c) return env !== null && entry.versionstamp === c.modRevision;
  if ("version" in c) return c.version === 0 ? env === null : env !== null && env.ver === c.version;
  return c.absent ? env === null : env !== null;
}
