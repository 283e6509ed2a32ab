/**
 * Watch delivery of the embedded store for one store handle: resumable prefix watches over a
 * change log (etcd watch semantics, see {@link Store.watch}), independent of Deno KV.
 *
 * The hub knows the newest committed revision (`head`) from this handle's own commits
 * ({@link WatchHub.committed}, delivered right away from memory) and, while at least one watcher
 * exists, from polling the store's revision counter every `pollMs` (how commits of other
 * handles and processes on the same file are noticed). One pump per hub brings every watcher
 * from its position (the last revision it was given) up to `head`: it reads complete revisions
 * from the log (or from the recent local commits it keeps in memory), hands each watcher the
 * events under its prefix with a revision above its position, then advances the position. So
 * each event reaches a watcher once, in revision order, and a watcher that resumes from the
 * last revision it saw misses nothing.
 *
 * History gaps: the log is contiguous (every revision has at least one event), so a read that
 * does not start at the needed revision means compaction removed it; the pump then reads the
 * compact revision and fails (once, via `onError`) exactly the watchers whose position is older.
 *
 * Callbacks run in the pump's own task (never in a writer's call stack); their exceptions are
 * caught and ignored.
 *
 * @module
 */
import {
  parseRevision,
  StoreCompactedError,
  StoreError,
  type WatchCallback,
  type WatchEvent,
  type WatchOptions,
} from "./store.ts";

/** The events of one revision, in key order. */
export interface LogRevision {
  /** The revision. */
  rev: number;
  /** Its events, in key order. */
  events: WatchEvent[];
}

/** What the hub reads from the store. */
export interface WatchSource {
  /** The store revision counter (0 for a new store). */
  readRevision(): Promise<number>;
  /** The compact revision (history ≤ it is gone; 0 when never compacted). */
  readCompacted(): Promise<number>;
  /**
   * Complete revisions of the log from `from` on (the first returned may be later than
   * `from` when history was compacted), in order, at least one when any exists; empty when
   * the log holds nothing at or after `from`.
   */
  readLog(from: number): Promise<LogRevision[]>;
}

/** Options of {@link WatchHub}. */
export interface WatchHubOptions {
  /** Poll interval of the revision counter while watchers exist, ms. */
  pollMs: number;
  /** Most local commits kept in memory for fast delivery (default 1024). */
  recentLimit?: number;
}

interface Watcher {
  prefix: string;
  cb: WatchCallback;
  onError?: (e: Error) => void;
  /** Last revision delivered (or skipped); null until the start revision is read. */
  pos: number | null;
  /** Local commits seen while `pos` is null. */
  buf: LogRevision[];
  done: boolean;
}

/** Resumable watches of one store handle (see the module doc). */
export class WatchHub {
  #src: WatchSource;
  #pollMs: number;
  #recentLimit: number;
  #head: number;
  #watchers = new Set<Watcher>();
  /** Local commits by revision, kept while watchers exist (insertion = revision order). */
  #recent = new Map<number, WatchEvent[]>();
  #timer: ReturnType<typeof setInterval> | null = null;
  #tick: Promise<void> | null = null;
  #pump: Promise<void> | null = null;
  #again = false;
  #closed = false;

  /** `head`: the store revision at open. */
  constructor(src: WatchSource, head: number, opts: WatchHubOptions) {
    this.#src = src;
    this.#head = head;
    this.#pollMs = opts.pollMs;
    this.#recentLimit = opts.recentLimit ?? 1024;
  }

  /** The newest revision known committed. */
  get head(): number {
    return this.#head;
  }

  /** Notes a revision learnt from a read (never lowers `head`). */
  observe(rev: number): void {
    if (rev > this.#head) {
      this.#head = rev;
      if (this.#watchers.size) this.#kick();
    }
  }

  /**
   * Registers a watcher (see {@link Store.watch}); returns its cancel function.
   *
   * @throws ApiError `validation_failed` for a malformed `opts.fromRevision`
   * @throws StoreError when the hub is closed
   */
  add(prefix: string, cb: WatchCallback, opts: WatchOptions = {}): () => void {
    if (this.#closed) throw new StoreError("store is closed");
    const pos = opts.fromRevision === undefined
      ? null
      : parseRevision(opts.fromRevision, "fromRevision");
    const w: Watcher = { prefix, cb, onError: opts.onError, pos, buf: [], done: false };
    this.#watchers.add(w);
    if (this.#timer === null) {
      const timer = setInterval(() => this.#poll(), this.#pollMs);
      Deno.unrefTimer(timer);
      this.#timer = timer;
    }
    this.#kick();
    return () => this.#remove(w);
  }

  /**
   * A commit of this handle: revision `rev`, whose events (key order) `events` builds (called
   * at most once, only when watchers exist). Call it as soon as the commit succeeded; delivery
   * happens later, in the pump's task.
   */
  committed(rev: number, events: () => WatchEvent[]): void {
    if (rev > this.#head) this.#head = rev;
    if (!this.#watchers.size || this.#closed) return;
    const evs = events();
    for (const w of this.#watchers) if (w.pos === null) w.buf.push({ rev, events: evs });
    this.#recent.set(rev, evs);
    if (this.#recent.size > this.#recentLimit) {
      this.#recent.delete(this.#recent.keys().next().value!);
    }
    this.#kick();
  }

  /** Stops every watcher and the poll; waits for an in-flight pump or poll to finish. */
  async close(): Promise<void> {
    this.#closed = true;
    for (const w of this.#watchers) w.done = true;
    this.#watchers.clear();
    this.#recent.clear();
    this.#stopTimer();
    await Promise.allSettled([this.#pump, this.#tick]);
  }

  #remove(w: Watcher): void {
    w.done = true;
    this.#watchers.delete(w);
    if (this.#watchers.size === 0) {
      this.#recent.clear();
      this.#stopTimer();
    }
  }

  #stopTimer(): void {
    if (this.#timer !== null) clearInterval(this.#timer);
    this.#timer = null;
  }

  #poll(): void {
    if (this.#tick || this.#closed) return;
    this.#tick = this.#src.readRevision()
      .then((rev) => {
        if (rev > this.#head) this.#head = rev;
        // Also retries a pump that failed on a transient read error.
        const behind = [...this.#watchers].some((w) => w.pos === null || w.pos < this.#head);
        if (behind) this.#kick();
      })
      .catch(() => {/* the next tick retries */})
      .finally(() => {
        this.#tick = null;
      });
  }

  /** Runs the pump in its own task (a microtask later), or asks a running one to go again. */
  #kick(): void {
    if (this.#closed) return;
    if (this.#pump) {
      this.#again = true;
      return;
    }
    this.#pump = Promise.resolve().then(async () => {
      try {
        do {
          this.#again = false;
          await this.#drain();
        } while (this.#again && !this.#closed);
      } catch {
        // A failed read (e.g. a busy database): the next poll tick kicks the pump again.
      } finally {
        this.#pump = null;
      }
    });
  }

  async #drain(): Promise<void> {
    await this.#start();
    for (;;) {
      if (this.#closed) return;
      const active = [...this.#watchers].filter((w) => w.pos !== null);
      if (!active.length) return;
      const min = Math.min(...active.map((w) => w.pos!));
      if (min >= this.#head) return;
      let revs = this.#fromRecent(min + 1);
      if (!revs.length) revs = await this.#src.readLog(min + 1);
      if (this.#closed) return;
      if (!revs.length || revs[0].rev !== min + 1) {
        await this.#gap(min);
        continue;
      }
      // Deliver only the contiguous run; a hole is examined on the next round.
      const hole = revs.findIndex((r, i) => r.rev !== min + 1 + i);
      if (hole > 0) revs = revs.slice(0, hole);
      for (const { rev, events } of revs) {
        for (const w of active) {
          if (w.done || w.pos! >= rev) continue;
          deliver(w, events);
          w.pos = rev;
        }
        if (rev > this.#head) this.#head = rev;
      }
      this.#prune();
    }
  }

  /**
   * Gives watchers without a start revision the store revision read now, and the local
   * commits made since their call (those at or below it), in order.
   */
  async #start(): Promise<void> {
    // Only watchers registered before the read: a later one's start must not precede its call.
    const pending = [...this.#watchers].filter((w) => w.pos === null);
    if (!pending.length) return;
    const rev = await this.#src.readRevision();
    if (rev > this.#head) this.#head = rev;
    for (const w of pending) {
      if (w.done) continue;
      const buf = w.buf;
      w.buf = [];
      w.pos = rev;
      for (const r of buf) if (r.rev <= rev) deliver(w, r.events);
    }
  }

  /** The log does not continue at `min + 1`: fail the watchers that need compacted history. */
  async #gap(min: number): Promise<void> {
    const compacted = await this.#src.readCompacted();
    for (const w of [...this.#watchers]) {
      if (w.pos === null || w.done) continue;
      let err: Error | null = null;
      if (w.pos < compacted) {
        err = new StoreCompactedError(String(compacted), String(w.pos));
      } else if (compacted <= min && w.pos === min) {
        // Not compaction: revision min + 1 should exist but cannot be read.
        err = new StoreError(`watch: revision ${min + 1} is missing from the change log`);
      }
      if (!err) continue;
      this.#remove(w);
      try {
        w.onError?.(err);
      } catch {
        // ignored
      }
    }
  }

  #fromRecent(from: number): LogRevision[] {
    const out: LogRevision[] = [];
    for (let rev = from;; rev++) {
      const events = this.#recent.get(rev);
      if (!events) return out;
      out.push({ rev, events });
    }
  }

  #prune(): void {
    let min = Infinity;
    for (const w of this.#watchers) if (w.pos !== null && w.pos < min) min = w.pos;
    for (const rev of this.#recent.keys()) {
      if (rev > min) break;
      this.#recent.delete(rev);
    }
  }
}

/** Calls `w`'s callback for the events under its prefix, until it is cancelled. */
function deliver(w: Watcher, events: WatchEvent[]): void {
  for (const ev of events) {
    if (w.done) return;
    if (!ev.key.startsWith(w.prefix)) continue;
    try {
      w.cb(ev);
    } catch {
      // a watcher's failure affects neither the writer nor other watchers
    }
  }
}
