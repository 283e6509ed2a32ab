/**
 * The embedded store backend: Deno KV (SQLite) in `<data_dir>/store.kv` (DESIGN.md "Store",
 * "embedded (default)"). This module and `kv_layout.ts` are the only ones that touch Deno KV;
 * `watch_hub.ts` delivers watches, `serial.ts` orders a handle's commits.
 *
 * Layout inside Deno KV (details and record shapes in `kv_layout.ts`):
 * - `["m", "rev"]` → the store revision (number); `["m", "compact"]` → the compact revision;
 * - `["k", key]` → envelope `{ver, lease, n, enc, d, mod, cr}` (writes since creation, lease,
 *   chunk count, encoding, first chunk, revision of the last write, creating revision) and
 *   `["c", key, i]` → further chunks of values over 60 000 bytes;
 * - `["e", rev, idx]` → change `idx` of revision `rev` `{t, key, at, n, enc, d}` (a put
 *   carries the value written) and `["ec", rev, idx, i]` → further chunks of that value;
 * - `["l", lease]` → `{ttl, expires}`; `["lk", lease, key]` → attached keys.
 * Stores written before revisions were kept read as revision 0 (`mod`/`cr` absent, no counter).
 *
 * Revisions (etcd semantics, see `store.ts`): one counter `["m", "rev"]`. A commit reads it
 * with every key it involves, evaluates the compares locally, then commits the chosen branch
 * with `kv.atomic()` checking the counter's versionstamp and setting it to revision + 1, and
 * writing one change-log entry per changed key (`["e", rev, idx]`, values chunked like key
 * values). Any commit in between (this or another handle/process on the file) fails the check
 * and the transaction is re-evaluated, so transactions are serializable across handles. A
 * handle runs its own commits one at a time ({@link SerialQueue}), so only commits of other
 * handles make it retry. A transaction that changes nothing takes no revision.
 *
 * Watches ({@link WatchHub}) are fed from the change log: a handle delivers its own commits
 * right after they commit, and notices other handles' commits by polling the revision
 * counter every `watchPollMs` while it has watchers (Deno KV's `kv.watch()` does not notify
 * across handles). The log is compacted to the last `retainRevisions` revisions (and, with
 * `retainMs`, to entries younger than that) by the periodic sweep, or by {@link Store.compact}.
 *
 * Leases: `["l", lease]` records with absolute expiry (ms epoch of the handle's clock). Every
 * handle sweeps expired leases every `sweepIntervalMs`; a revoke deletes the attached keys in
 * revisioned commits checked against concurrent writes, so concurrent sweeps and revokes from
 * several handles are safe (each key is deleted once; a key re-attached meanwhile survives).
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
  StoreError,
  type StoreValue,
  type TxnRequest,
  type TxnResult,
  type WatchCallback,
  type WatchEvent,
  type WatchOptions,
} from "./store.ts";
import {
  C,
  COMPACT_KEY,
  concat,
  decodeValue,
  deleteMutations,
  E,
  EC,
  type EncodedValue,
  encodeValue,
  type Envelope,
  eventMutations,
  type EventRecord,
  K,
  L,
  type LeaseRec,
  LK,
  putMutations,
  REV_KEY,
  TXN_VALUE_BUDGET_BYTES,
} from "./kv_layout.ts";
import { SerialQueue } from "./serial.ts";
import { type LogRevision, WatchHub } from "./watch_hub.ts";

export { CHUNK_BYTES, MAX_VALUE_BYTES } from "./kv_layout.ts";

/** How often expired leases are swept (and the change log compacted), milliseconds. */
export const SWEEP_INTERVAL_MS = 250;
/** How often a handle with watchers polls for other handles' commits, milliseconds. */
export const WATCH_POLL_MS = 100;
/** Revisions of change history kept for resuming watches (etcd auto-compaction retention). */
export const RETAIN_REVISIONS = 10_000;

/** Change-log entries read per page by watches. */
const LOG_PAGE = 500;
/** Keys deleted per commit by a revoke. */
const REVOKE_BATCH = 50;
/** Attempts of a transaction that keeps losing races to other handles. */
const TXN_ATTEMPTS = 100;

/** Options of {@link openKvStore}. */
export interface KvStoreOptions {
  /** Clock (ms epoch) for lease expiry and change-log timestamps; tests may inject one. */
  now?: () => number;
  /** Sweep interval for expired leases and log compaction, ms (default 250). */
  sweepIntervalMs?: number;
  /** Poll interval for other handles' commits while watchers exist, ms (default 100). */
  watchPollMs?: number;
  /** Keep at least the last this many revisions of change history (default 10 000, ≥ 1). */
  retainRevisions?: number;
  /**
   * Also discard change history older than this, ms (default: no time bound); history is
   * discarded when it is more than `retainRevisions` old OR older than this.
   */
  retainMs?: number;
}

/**
 * Opens (creating if needed) the embedded store at `path` (a Deno KV file, e.g.
 * `<data_dir>/store.kv`). Several handles (in one or several processes) may open one file;
 * they see each other's writes, watch events and leases. Requires `--unstable-kv` and
 * read/write permission on the file.
 *
 * @throws StoreError for invalid options
 */
export async function openKvStore(path: string, opts: KvStoreOptions = {}): Promise<Store> {
  for (
    const [name, v, min] of [
      ["sweepIntervalMs", opts.sweepIntervalMs, 1],
      ["watchPollMs", opts.watchPollMs, 1],
      ["retainRevisions", opts.retainRevisions, 1],
      ["retainMs", opts.retainMs, 0],
    ] as const
  ) {
    if (v !== undefined && !(Number.isInteger(v) && v >= min)) {
      throw new StoreError(`store option ${name} must be an integer >= ${min}, got ${v}`);
    }
  }
  const kv = await Deno.openKv(path);
  const head = (await kv.get<number>(REV_KEY)).value ?? 0;
  return new KvStore(kv, head, opts);
}

interface ReadState {
  revEntry: Deno.KvEntryMaybe<number>;
  rev: number;
  envs: Map<string, Envelope | null>;
  /** True when everything was read in one snapshot. */
  snapshot: boolean;
}

interface LogGroup {
  rev: number;
  recs: Deno.KvEntry<EventRecord>[];
}

class KvStore implements Store {
  #kv: Deno.Kv;
  #now: () => number;
  #retainRevisions: number;
  #retainMs: number | undefined;
  #hub: WatchHub;
  #serial = new SerialQueue();
  #timer: ReturnType<typeof setInterval>;
  #sweepRun: Promise<void> | null = null;
  #closed = false;

  constructor(kv: Deno.Kv, head: number, opts: KvStoreOptions) {
    this.#kv = kv;
    this.#now = opts.now ?? Date.now;
    this.#retainRevisions = opts.retainRevisions ?? RETAIN_REVISIONS;
    this.#retainMs = opts.retainMs;
    this.#hub = new WatchHub(
      {
        readRevision: () => this.#readCounter(REV_KEY),
        readCompacted: () => this.#readCounter(COMPACT_KEY),
        readLog: (from) => this.#readLog(from),
      },
      head,
      { pollMs: opts.watchPollMs ?? WATCH_POLL_MS },
    );
    this.#timer = setInterval(() => {
      if (this.#sweepRun || this.#closed) return;
      this.#sweepRun = this.#sweep().finally(() => {
        this.#sweepRun = null;
      });
    }, opts.sweepIntervalMs ?? SWEEP_INTERVAL_MS);
    Deno.unrefTimer(this.#timer);
  }

  #assertOpen(): void {
    if (this.#closed) throw new StoreError("store is closed");
  }

  async #readCounter(key: Deno.KvKey): Promise<number> {
    return (await this.#kv.get<number>(key)).value ?? 0;
  }

  // ---- reads ----

  async get<T = unknown>(key: string): Promise<KeyValue<T> | null> {
    this.#assertOpen();
    const entry = await this.#kv.get<Envelope>([K, key]);
    return entry.value === null ? null : await this.#materialize<T>(key, entry.value);
  }

  /** Builds a KeyValue from an envelope, reading further chunks in one consistent snapshot. */
  async #materialize<T>(key: string, first: Envelope): Promise<KeyValue<T> | null> {
    let env = first;
    for (let attempt = 0; attempt < 20; attempt++) {
      if (env.n <= 1) return toKeyValue<T>(key, env, env.d);
      const keys: Deno.KvKey[] = [[K, key]];
      for (let i = 1; i < env.n; i++) keys.push([C, key, i]);
      const entries = await this.#kv.getMany<unknown[]>(keys);
      const head = entries[0].value as Envelope | null;
      if (head === null) return null;
      if (head.n === env.n) {
        const chunks = entries.slice(1).map((e) => e.value as Uint8Array);
        return toKeyValue<T>(key, head, concat([head.d, ...chunks]));
      }
      env = head;
    }
    throw new StoreError(`read of ${key}: value keeps changing`);
  }

  async range<T = unknown>(prefix: string, opts: RangeOptions = {}): Promise<RangeResult<T>> {
    this.#assertOpen();
    const limit = opts.limit ?? Infinity;
    if (!(limit >= 1)) throw new StoreError("range limit must be >= 1");
    const after = opts.cursor ? decodeCursor(opts.cursor, prefix) : null;
    // Read before the keys: every change after this revision is > it (see RangeResult).
    const rev = await this.#readCounter(REV_KEY);
    this.#hub.observe(rev);
    const kvs: KeyValue<T>[] = [];
    let more = false;
    const iter = this.#kv.list<Envelope>({ prefix: [K], start: [K, after ?? prefix] });
    for await (const entry of iter) {
      const key = entry.key[1] as string;
      if (!key.startsWith(prefix)) break;
      if (after !== null && key === after) continue;
      if (kvs.length >= limit) {
        more = true;
        break;
      }
      const kv = await this.#materialize<T>(key, entry.value);
      if (kv) kvs.push(kv);
    }
    return {
      kvs,
      nextCursor: more && kvs.length ? encodeCursor(kvs[kvs.length - 1].key) : null,
      revision: String(rev),
    };
  }

  async currentRevision(): Promise<string> {
    this.#assertOpen();
    const rev = await this.#readCounter(REV_KEY);
    this.#hub.observe(rev);
    return String(rev);
  }

  /** Reads the revision counter and the envelopes of `keys` (the first 9 in one snapshot). */
  async #readState(keys: string[]): Promise<ReadState> {
    const envs = new Map<string, Envelope | null>();
    const first = keys.slice(0, 9);
    const res = await this.#kv.getMany<unknown[]>([REV_KEY, ...first.map((k) => [K, k])]);
    const revEntry = res[0] as Deno.KvEntryMaybe<number>;
    first.forEach((k, i) => envs.set(k, res[i + 1].value as Envelope | null));
    for (let i = 9; i < keys.length; i += 10) {
      const batch = keys.slice(i, i + 10);
      const more = await this.#kv.getMany<Envelope[]>(batch.map((k) => [K, k]));
      batch.forEach((k, j) => envs.set(k, more[j].value));
    }
    return { revEntry, rev: revEntry.value ?? 0, envs, snapshot: keys.length <= 9 };
  }

  // ---- writes ----

  txn(req: TxnRequest): Promise<TxnResult> {
    try {
      this.#assertOpen();
      for (const branch of [req.success, req.failure ?? []]) {
        const seen = new Set<string>();
        for (const op of branch) {
          if (seen.has(op.key)) throw new StoreError(`duplicate key in transaction: ${op.key}`);
          seen.add(op.key);
        }
      }
      for (const c of req.compare) {
        if ("modRevision" in c) parseRevision(c.modRevision, "compare.modRevision");
      }
    } catch (e) {
      return Promise.reject(e);
    }
    return this.#serial.run(() => this.#txnLocked(req));
  }

  async #txnLocked(req: TxnRequest): Promise<TxnResult> {
    const keys = [
      ...new Set([...req.compare, ...req.success, ...(req.failure ?? [])].map((x) => x.key)),
    ];
    const encoded = new Map<Op, EncodedValue>();
    const encode = (op: Op & { type: "put" }) => {
      let v = encoded.get(op);
      if (!v) encoded.set(op, v = encodeValue(op.key, op.value));
      return v;
    };
    for (let attempt = 0; attempt < TXN_ATTEMPTS; attempt++) {
      const st = await this.#readState(keys);
      const succeeded = req.compare.every((c) => holds(c, st.envs.get(c.key) ?? null));
      const ops = [...(succeeded ? req.success : (req.failure ?? []))]
        .sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
      const leaseIds = [
        ...new Set(ops.flatMap((o) => (o.type === "put" && o.lease ? [o.lease] : []))),
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

      const rev = st.rev + 1;
      const revision = String(rev);
      const atomic = this.#kv.atomic().check(st.revEntry);
      for (const l of leases) atomic.check(l);
      // The watch events, values decoded only when a watcher wants them.
      const events: { key: string; value: EncodedValue | null }[] = [];
      let bytes = 0;
      for (const op of ops) {
        const old = st.envs.get(op.key) ?? null;
        if (op.type === "delete") {
          if (!old) continue;
          deleteMutations(atomic, op.key, old);
          eventMutations(atomic, rev, events.length, op.key, now, null);
          events.push({ key: op.key, value: null });
          continue;
        }
        const v = encode(op);
        bytes += 2 * v.bytes.length;
        putMutations(atomic, op.key, old, v, op.lease ?? null, rev);
        eventMutations(atomic, rev, events.length, op.key, now, v);
        events.push({ key: op.key, value: v });
      }
      if (bytes > TXN_VALUE_BUDGET_BYTES) {
        throw new StoreError(
          `transaction too large: writes ${bytes / 2} value bytes (max about ` +
            `${Math.floor(TXN_VALUE_BUDGET_BYTES / 2)} per transaction)`,
        );
      }
      if (!events.length) {
        // Nothing changes: no revision. The compares saw one consistent state if read in one
        // snapshot; otherwise confirm nothing was committed meanwhile.
        if (st.snapshot) return { succeeded, revision: String(st.rev) };
        if ((await commit(this.#kv.atomic().check(st.revEntry))).ok) {
          return { succeeded, revision: String(st.rev) };
        }
        continue;
      }
      atomic.set(REV_KEY, rev);
      if (!(await commit(atomic)).ok) {
        await backoff(attempt);
        continue;
      }
      this.#hub.committed(
        rev,
        () =>
          events.map(({ key, value: v }): WatchEvent =>
            v
              ? { type: "put", key, value: decodeValue(v.enc, concat(v.chunks)), revision }
              : { type: "delete", key, revision }
          ),
      );
      return { succeeded, revision };
    }
    throw new StoreError("transaction: too many concurrent writes");
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

  // ---- watch and change log ----

  watch(prefix: string, cb: WatchCallback, opts?: WatchOptions): () => void {
    this.#assertOpen();
    return this.#hub.add(prefix, cb, opts);
  }

  /** Complete revisions of the change log from `from` on (one page), values included. */
  async #readLog(from: number): Promise<LogRevision[]> {
    const page: Deno.KvEntry<EventRecord>[] = [];
    // One batch, so the page is one consistent snapshot (revisions in it are complete).
    const sel = { prefix: [E], start: [E, from] };
    const it = this.#kv.list<EventRecord>(sel, { limit: LOG_PAGE, batchSize: LOG_PAGE });
    for await (const e of it) page.push(e);
    let groups = groupByRevision(page);
    if (page.length === LOG_PAGE) groups = await this.#completeLast(groups);
    const out: LogRevision[] = [];
    for (const g of groups) {
      const revision = String(g.rev);
      const events: WatchEvent[] = [];
      for (const { key, value: r } of g.recs) {
        if (r.t === "delete") {
          events.push({ type: "delete", key: r.key, revision });
          continue;
        }
        const parts = [r.d!];
        if (r.n! > 1) {
          const idx = key[2] as number;
          const keys = Array.from({ length: r.n! - 1 }, (_, i) => [EC, g.rev, idx, i + 1]);
          const chunks = await this.#kv.getMany<Uint8Array[]>(keys);
          // A missing chunk: compacted since the page was read; stop before this revision.
          if (chunks.some((c) => c.value === null)) return out;
          parts.push(...chunks.map((c) => c.value!));
        }
        events.push({
          type: "put",
          key: r.key,
          value: decodeValue(r.enc!, concat(parts)),
          revision,
        });
      }
      out.push({ rev: g.rev, events });
    }
    return out;
  }

  /**
   * A full page may end inside a revision: drop the last group, or, when it is the only one,
   * read that revision whole (a revision has fewer entries than Deno KV's 1000 mutations).
   */
  async #completeLast(groups: LogGroup[]): Promise<LogGroup[]> {
    if (groups.length > 1) return groups.slice(0, -1);
    const rev = groups[0].rev;
    const recs: Deno.KvEntry<EventRecord>[] = [];
    for await (const e of this.#kv.list<EventRecord>({ prefix: [E, rev] })) recs.push(e);
    return [{ rev, recs }];
  }

  async compact(revision: string): Promise<void> {
    this.#assertOpen();
    const target = parseRevision(revision);
    const current = await this.#readCounter(REV_KEY);
    if (target > current) {
      throw new ApiError(
        "validation_failed",
        `cannot compact: revision ${target} is in the future`,
        {
          fields: [{ path: "revision", message: `newer than the current revision ${current}` }],
        },
      );
    }
    await this.#compactTo(target);
  }

  /**
   * Deletes whole revisions of the change log up to `target` in commits of at most ~990
   * mutations, each advancing `["m", "compact"]` (checked, so concurrent compactions of
   * several handles are safe).
   */
  async #compactTo(target: number): Promise<void> {
    for (let attempt = 0; attempt < 10_000 && !this.#closed; attempt++) {
      const cEntry = await this.#kv.get<number>(COMPACT_KEY);
      const c = cEntry.value ?? 0;
      if (c >= target) return;
      const page: Deno.KvEntry<EventRecord>[] = [];
      const sel = { start: [E, c + 1], end: [E, target + 1] };
      const it = this.#kv.list<EventRecord>(sel, { limit: LOG_PAGE, batchSize: LOG_PAGE });
      for await (const e of it) page.push(e);
      const full = page.length === LOG_PAGE;
      let groups = groupByRevision(page);
      if (full) groups = await this.#completeLast(groups);
      const atomic = this.#kv.atomic().check(cEntry);
      let mutations = 1;
      let done = 0;
      let last = c;
      for (const g of groups) {
        const m = g.recs.reduce((n, r) => n + (r.value.t === "put" ? r.value.n! : 1), 0);
        if (done > 0 && mutations + m > 990) break;
        for (const r of g.recs) {
          atomic.delete(r.key);
          for (let i = 1; i < (r.value.n ?? 1); i++) atomic.delete([EC, ...r.key.slice(1), i]);
        }
        mutations += m;
        done++;
        last = g.rev;
      }
      atomic.set(COMPACT_KEY, !full && done === groups.length ? target : last);
      await commit(atomic);
    }
  }

  /** Compacts by the retention options. */
  async #autoCompact(): Promise<void> {
    const [revE, cE] = await this.#kv.getMany<number[]>([REV_KEY, COMPACT_KEY]);
    const rev = revE.value ?? 0, c = cE.value ?? 0;
    let target = rev - this.#retainRevisions;
    if (this.#retainMs !== undefined) {
      const cutoff = this.#now() - this.#retainMs;
      const sel = { start: [E, Math.max(c, target) + 1], end: [E, rev + 1] };
      for await (const e of this.#kv.list<EventRecord>(sel, { batchSize: 100 })) {
        if (e.value.at >= cutoff) break;
        target = e.key[1] as number;
      }
    }
    if (target > c) await this.#compactTo(target);
  }

  // ---- leases ----

  async grant(ttlSeconds: number): Promise<string> {
    this.#assertOpen();
    if (!(ttlSeconds > 0)) throw new StoreError("lease TTL must be > 0");
    const id = crypto.randomUUID();
    for (let attempt = 0; attempt < TXN_ATTEMPTS; attempt++) {
      const rec: LeaseRec = { ttl: ttlSeconds, expires: this.#now() + ttlSeconds * 1000 };
      if ((await commit(this.#kv.atomic().set([L, id], rec))).ok) return id;
      await backoff(attempt);
    }
    throw new StoreError("grant: the database stays busy");
  }

  async keepAlive(lease: string): Promise<void> {
    this.#assertOpen();
    for (let attempt = 0; attempt < TXN_ATTEMPTS; attempt++) {
      const cur = await this.#kv.get<LeaseRec>([L, lease]);
      if (cur.value === null || cur.value.expires <= this.#now()) {
        throw new StoreError(`lease ${lease} not found or expired`);
      }
      const res = await commit(
        this.#kv.atomic()
          .check(cur)
          .set([L, lease], { ...cur.value, expires: this.#now() + cur.value.ttl * 1000 }),
      );
      if (res.ok) return;
      await backoff(attempt);
    }
    throw new StoreError(`keep-alive of lease ${lease}: too many concurrent writes`);
  }

  async revoke(lease: string): Promise<void> {
    this.#assertOpen();
    // Expire the lease record first (a new versionstamp): a transaction that read the live
    // lease then fails its check and, retrying, finds it expired, so no key can be attached
    // once the attached keys are listed below. A crash mid-revoke leaves an expired record
    // that the next sweep (of any handle) revokes again.
    for (let attempt = 0;; attempt++) {
      const cur = await this.#kv.get<LeaseRec>([L, lease]);
      if (cur.value === null || cur.value.expires === 0) break;
      const expired = this.#kv.atomic().check(cur).set([L, lease], { ...cur.value, expires: 0 });
      if ((await commit(expired)).ok) break;
      await backoff(attempt);
      if (attempt >= TXN_ATTEMPTS) {
        throw new StoreError(`revoke of lease ${lease}: too many concurrent writes`);
      }
    }
    for (let attempt = 0; attempt < TXN_ATTEMPTS; attempt++) {
      const keys: string[] = [];
      for await (const e of this.#kv.list({ prefix: [LK, lease] })) keys.push(e.key[2] as string);
      let ok = true;
      for (let i = 0; i < keys.length && ok; i += REVOKE_BATCH) {
        const batch = keys.slice(i, i + REVOKE_BATCH);
        ok = await this.#serial.run(() => this.#revokeBatch(lease, batch));
      }
      if (!ok) {
        await backoff(attempt);
        continue; // raced another writer: list again
      }
      let remaining = false;
      for await (const _ of this.#kv.list({ prefix: [LK, lease] }, { limit: 1 })) remaining = true;
      if (!remaining && (await commit(this.#kv.atomic().delete([L, lease]))).ok) return;
    }
    throw new StoreError(`revoke of lease ${lease}: too many concurrent writes`);
  }

  /**
   * Deletes the keys of `batch` still attached to `lease` (one revision) and their links, in
   * one commit checked against any concurrent commit. False when that check failed.
   */
  async #revokeBatch(lease: string, batch: string[]): Promise<boolean> {
    const st = await this.#readState(batch);
    const rev = st.rev + 1;
    const atomic = this.#kv.atomic().check(st.revEntry);
    const events: WatchEvent[] = [];
    const now = this.#now();
    for (const key of [...batch].sort()) {
      const old = st.envs.get(key) ?? null;
      if (!old || old.lease !== lease) {
        atomic.delete([LK, lease, key]); // stale link: the key was detached or deleted
        continue;
      }
      deleteMutations(atomic, key, old);
      eventMutations(atomic, rev, events.length, key, now, null);
      events.push({ type: "delete", key, revision: String(rev) });
    }
    if (events.length) atomic.set(REV_KEY, rev);
    const res = await commit(atomic);
    if (res.ok && events.length) this.#hub.committed(rev, () => events);
    return res.ok;
  }

  /** Revokes expired leases, then compacts the change log by retention. */
  async #sweep(): Promise<void> {
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
      if (!this.#closed) await this.#autoCompact();
    } catch {
      // the next sweep retries
    }
  }

  // ---- lifecycle ----

  async ping(): Promise<void> {
    this.#assertOpen();
    await this.#kv.get(REV_KEY);
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    clearInterval(this.#timer);
    await this.#sweepRun;
    await this.#hub.close();
    await this.#serial.idle();
    this.#kv.close();
  }
}

function toKeyValue<T>(key: string, env: Envelope, bytes: Uint8Array): KeyValue<T> {
  return {
    key,
    value: decodeValue(env.enc, bytes) as T,
    modRevision: String(env.mod ?? 0),
    createRevision: String(env.cr ?? 0),
    version: env.ver,
    lease: env.lease,
  };
}

function holds(c: Compare, env: Envelope | null): boolean {
  if ("modRevision" in c) return env !== null && (env.mod ?? 0) === parseRevision(c.modRevision);
  if ("version" in c) return c.version === 0 ? env === null : env !== null && env.ver === c.version;
  return c.absent ? env === null : env !== null;
}

function groupByRevision(page: Deno.KvEntry<EventRecord>[]): LogGroup[] {
  const groups: LogGroup[] = [];
  for (const e of page) {
    const rev = e.key[1] as number;
    const last = groups[groups.length - 1];
    if (last && last.rev === rev) last.recs.push(e);
    else groups.push({ rev, recs: [e] });
  }
  return groups;
}

/**
 * Commits. SQLite refusing the write because another handle's write is in progress
 * ("database is locked") counts as a lost race (`ok: false`, the caller retries) like a
 * failed check; other refusals (Deno KV's size and count limits) become a StoreError.
 *
 * @throws StoreError when Deno KV rejects the operation
 */
async function commit(atomic: Deno.AtomicOperation): Promise<{ ok: boolean }> {
  try {
    return await atomic.commit();
  } catch (e) {
    const msg = (e as Error).message;
    if (/database is locked|busy/i.test(msg)) return { ok: false };
    throw new StoreError(`commit rejected by Deno KV: ${msg}`);
  }
}

/** After a few lost races to other handles, waits a random 0..attempt ms (max 20). */
function backoff(attempt: number): Promise<void> {
  if (attempt < 2) return Promise.resolve();
  return new Promise((r) => setTimeout(r, Math.random() * Math.min(attempt, 20)));
}
