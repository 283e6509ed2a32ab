/**
 * One connection of the resource event stream (`shared/api/events.ts`), independent of HTTP:
 * list, sync, then follow the store's watch, writing frames to a {@link FrameSink}.
 *
 * Without `since` (a fresh stream):
 * 1. R = the store's current revision;
 * 2. every current object of the selected kinds (all pages of a store range, each read at a
 *    revision ≥ R) → an `added` frame. These frames carry no `id:`, so a client (a browser's
 *    `EventSource` too) that loses the connection mid-snapshot reconnects without
 *    `Last-Event-ID` and gets a full snapshot again instead of resuming from a revision it did
 *    not fully see;
 * 3. `sync {revision: R}` with `id: R`;
 * 4. the watch from R: changes with revision > R. A page read after R may already show a
 *    change the watch then replays; the stream remembers, per key it sent, the revision of the
 *    state sent and drops watch events not newer than it, so the client sees every change once
 *    (no gap, no repeat).
 *
 * Ids: `id: <revision>` goes on the last frame of each revision only (one transaction may
 * change several followed objects, e.g. a VM and its task): a client resuming from its last
 * id then never skips the rest of a revision it saw in part (the frames of an interrupted
 * revision are sent again). This relies on the store delivering the events of one revision
 * together (one synchronous burst of callbacks), as `cp/store/watch_hub.ts` does.
 *
 * With `since` (a resumed stream): the watch from `since`, nothing else. A put of a key the
 * connection has not sent yet is reported `added` when that change created the key (the key's
 * current `createRevision` is the event's revision: one store read per such key, since watch
 * events carry no create revision) and `modified` otherwise; a delete of such a key is
 * reported with the name derived from the key (the key convention of `source.ts`), since the
 * connection cannot know whether the client saw it.
 *
 * Names: the stream keeps a map key → name of the objects the client holds from this
 * connection (snapshot and later puts; O(objects followed) memory), used for `deleted` frames
 * and visibility changes: a put whose view is null for the caller (the caller may no longer see
 * it) becomes `deleted` when the client holds the object, and is dropped otherwise.
 *
 * One store watch covers every selected kind (on the kinds' common prefix), so frames leave in
 * revision order even across kinds and ids only grow after `sync`: resuming from the last id
 * misses nothing.
 *
 * Backpressure: a frame is written only once the transport accepted the previous one, so
 * changes wait in a queue while the client is slow to read. The queue holds at most
 * `maxQueuedEvents` events: when it is full the store watch is paused (cancelled) and, once the
 * client has read the queue, started again after the newest complete revision queued, the
 * store's history replaying what happened meanwhile (etcd's "unsynced watcher"). Memory stays
 * bounded and a slow but live client is never cut off; a client that falls behind the
 * retained history gets `revision_compacted` and lists again. (Ending a slow client's stream
 * with an error instead would also cut off fast clients resuming across a burst bigger than
 * the queue, and their resumed streams again, forever.) Only one revision with more events
 * than the queue holds ends the stream, with `internal_error`.
 *
 * @module
 */
import type { EventKind, ResourceEvent } from "../../shared/api/events.ts";
import type { ErrorInfo } from "../../shared/errors.ts";
import type { Store, WatchEvent } from "../store/store.ts";
import { compareRevisions, StoreCompactedError } from "../store/store.ts";
import {
  commonPrefix,
  type EventSource,
  matchesName,
  nameOfKey,
  prefixFor,
  type Viewer,
} from "./source.ts";

/** Interval of `: ping` comments, ms (shared/api/events.ts: every 15 s). */
export const DEFAULT_PING_INTERVAL_MS = 15_000;
/** Most watch events queued for one client before its watch is paused (see the module doc). */
export const DEFAULT_MAX_QUEUED_EVENTS = 10_000;
/** Keys read per store range page of the initial listing. */
export const DEFAULT_PAGE_SIZE = 500;

/** One SSE frame (`event:`, `data:`, optional `id:`). */
export interface Frame {
  event: "added" | "modified" | "deleted" | "sync" | "error";
  data: string;
  id?: string;
}

/** Where a connection writes: resolves once the transport accepted the frame. */
export interface FrameSink {
  /** Writes one frame. */
  frame(frame: Frame): Promise<void>;
  /** Writes an SSE comment line (`: <text>`). */
  comment(text: string): Promise<void>;
}

/** What one connection follows. */
export interface StreamRequest {
  /** The selected kinds (see `selectSources`). */
  sources: readonly EventSource[];
  /** `name=`: one object (see `matchesName`). */
  name?: string;
  /** `since=` / `Last-Event-ID`: resume after this revision (no snapshot). */
  since?: string;
  /** The caller, for `view()`. */
  user: Viewer;
}

/** Tunables of a connection (defaults above). */
export interface StreamLimits {
  /** Interval of `: ping` comments, ms. */
  pingIntervalMs?: number;
  /** Most queued watch events before the watch is paused until the client caught up. */
  maxQueuedEvents?: number;
  /** Store range page size of the snapshot. */
  pageSize?: number;
}

/** The events of one revision (the store delivers them together, in key order). */
interface Batch {
  revision: string;
  events: { source: EventSource; event: WatchEvent }[];
}

/** What the client holds of one key: its name and the revision of the state sent. */
interface Held {
  name: string;
  revision: string;
}

/**
 * Serves one connection until `signal` aborts (client gone or server shutting down: the stream
 * just ends, and the client resumes with its last id) or the stream fails (`event: error`:
 * `revision_compacted` when the resume point is older than the retained history,
 * `internal_error` otherwise). The watch is cancelled and the ping timer cleared on every
 * exit path.
 *
 * @throws whatever the store's range throws during the snapshot
 */
export async function runEventStream(
  store: Store,
  req: StreamRequest,
  sink: FrameSink,
  signal: AbortSignal,
  limits: StreamLimits = {},
): Promise<void> {
  const conn = new Connection(store, req, sink, signal, limits);
  try {
    await conn.run();
  } finally {
    conn.close();
  }
}

class Connection {
  readonly #store: Store;
  readonly #req: StreamRequest;
  readonly #sink: FrameSink;
  readonly #signal: AbortSignal;
  readonly #pingMs: number;
  readonly #maxQueued: number;
  readonly #pageSize: number;
  readonly #prefixes: string[];
  /** Keys the client holds from this connection. */
  readonly #held = new Map<string, Held>();
  /** Complete revisions waiting to be written, oldest first. */
  #queue: Batch[] = [];
  #head = 0;
  /** Events in the queue. */
  #queued = 0;
  /** The revision the current watch started from. */
  #watchFrom = "0";
  /** The newest complete revision accepted into the queue (the watch's position). */
  #position = "0";
  /** The revision whose events are being received. */
  #receiving = "0";
  /** Set while the watch is paused (queue full): the revision to watch from again. */
  #resumeFrom: string | null = null;
  /** Why the stream ends (a function: built when written, for the last id sent by then). */
  #failure: (() => ErrorInfo) | null = null;
  #pingDue = false;
  #wake: (() => void) | null = null;
  #cancelWatch: (() => void) | null = null;
  #pingTimer: ReturnType<typeof setInterval> | null = null;
  /** The last `id:` written (the revision a client resumes from). */
  #lastId = "0";
  readonly #onAbort = () => this.#poke();

  constructor(
    store: Store,
    req: StreamRequest,
    sink: FrameSink,
    signal: AbortSignal,
    limits: StreamLimits,
  ) {
    this.#store = store;
    this.#req = req;
    this.#sink = sink;
    this.#signal = signal;
    this.#pingMs = limits.pingIntervalMs ?? DEFAULT_PING_INTERVAL_MS;
    this.#maxQueued = limits.maxQueuedEvents ?? DEFAULT_MAX_QUEUED_EVENTS;
    this.#pageSize = limits.pageSize ?? DEFAULT_PAGE_SIZE;
    this.#prefixes = req.sources.map((s) => prefixFor(s, req.name));
  }

  async run(): Promise<void> {
    this.#signal.addEventListener("abort", this.#onAbort);
    this.#pingTimer = setInterval(() => {
      this.#pingDue = true;
      this.#poke();
    }, this.#pingMs);
    let from = this.#req.since;
    if (from === undefined) {
      from = await this.#store.currentRevision();
      await this.#snapshot();
      if (this.#signal.aborted) return;
      await this.#sink.frame({ event: "sync", id: from, data: JSON.stringify({ revision: from }) });
    }
    this.#lastId = from;
    this.#watch(from);
    await this.#pump();
  }

  close(): void {
    this.#signal.removeEventListener("abort", this.#onAbort);
    this.#cancelWatch?.();
    this.#cancelWatch = null;
    if (this.#pingTimer !== null) clearInterval(this.#pingTimer);
    this.#pingTimer = null;
    this.#queue = [];
    this.#head = 0;
    this.#queued = 0;
  }

  /** `added` for every current object the caller may see (no `id:`; see the module doc). */
  async #snapshot(): Promise<void> {
    const { sources, name } = this.#req;
    for (const source of sources) {
      let cursor: string | null = null;
      do {
        if (this.#signal.aborted) return;
        const page: Awaited<ReturnType<Store["range"]>> = await this.#store.range(
          prefixFor(source, name),
          { limit: this.#pageSize, cursor },
        );
        for (const kv of page.kvs) {
          const frame = this.#put(source, kv.key, kv.value, kv.modRevision, true);
          if (frame) await this.#sink.frame(frame);
        }
        cursor = page.nextCursor;
      } while (cursor);
    }
  }

  /** One watch over the selected kinds' common prefix, from `from`. */
  #watch(from: string): void {
    const { sources } = this.#req;
    this.#watchFrom = this.#position = this.#receiving = from;
    this.#cancelWatch = this.#store.watch(commonPrefix(this.#prefixes), (event) => {
      if (this.#failure || this.#resumeFrom !== null || this.#signal.aborted) return;
      const source = sources.find((_, i) => event.key.startsWith(this.#prefixes[i]));
      if (!source) return;
      this.#accept(source, event);
    }, {
      fromRevision: from,
      onError: (e) => {
        const info: ErrorInfo = e instanceof StoreCompactedError
          ? e.toInfo()
          : { code: "internal_error", message: `watch failed: ${errorText(e)}` };
        this.#fail(() => info);
      },
    });
  }

  /**
   * Queues a watch event. When the queue is full, the watch is paused instead of growing the
   * queue: the revision being received (maybe incomplete) is dropped, and once the client has
   * read the queue the watch starts again after the newest complete revision queued (the
   * store's history replays the rest; if it was compacted meanwhile, the stream ends with
   * `revision_compacted` and the client lists again). Only a single revision with more events
   * than the queue holds cannot be paused at a revision boundary: the stream then ends with
   * `internal_error`.
   */
  #accept(source: EventSource, event: WatchEvent): void {
    if (event.revision !== this.#receiving) {
      this.#position = this.#receiving; // the store delivers a revision's events together
      this.#receiving = event.revision;
    }
    const tail = this.#queue.length > this.#head ? this.#queue[this.#queue.length - 1] : null;
    if (this.#queued >= this.#maxQueued) {
      if (tail?.revision === event.revision) this.#queued -= this.#queue.pop()!.events.length;
      if (this.#position === this.#watchFrom) {
        this.#fail(() => ({
          code: "internal_error",
          message: `revision ${event.revision} changed more than ${this.#maxQueued} objects,` +
            ` more than one stream can queue: list again (without since)`,
          details: { revision: event.revision },
        }));
        return;
      }
      this.#resumeFrom = this.#position;
      this.#cancelWatch?.();
      this.#cancelWatch = null;
      return;
    }
    if (tail?.revision === event.revision) tail.events.push({ source, event });
    else this.#queue.push({ revision: event.revision, events: [{ source, event }] });
    this.#queued++;
    this.#poke();
  }

  /** Writes queued revisions, pings and finally the failure, until aborted or failed. */
  async #pump(): Promise<void> {
    for (;;) {
      if (this.#signal.aborted) return;
      if (this.#failure) {
        const failure = this.#failure();
        this.close(); // drop the queue and the watch before the (maybe slow) last write
        await this.#sink.frame({ event: "error", data: JSON.stringify(failure) });
        return;
      }
      if (this.#head < this.#queue.length) {
        await this.#write(this.#take());
        continue;
      }
      if (this.#resumeFrom !== null) {
        const from = this.#resumeFrom;
        this.#resumeFrom = null;
        this.#watch(from);
        continue;
      }
      if (this.#pingDue) {
        this.#pingDue = false;
        await this.#sink.comment("ping");
        continue;
      }
      await new Promise<void>((resolve) => (this.#wake = resolve));
      this.#wake = null;
    }
  }

  #take(): Batch {
    const batch = this.#queue[this.#head++];
    this.#queued -= batch.events.length;
    if (this.#head >= 1024 && this.#head * 2 >= this.#queue.length) {
      this.#queue = this.#queue.slice(this.#head);
      this.#head = 0;
    }
    return batch;
  }

  /**
   * Writes the frames of one revision; only the last carries `id: <revision>`, so a client
   * resuming from its last id never skips the rest of a revision it saw in part.
   */
  async #write(batch: Batch): Promise<void> {
    const frames: Frame[] = [];
    for (const { source, event } of batch.events) {
      const frame = await this.#frameOf(source, event);
      if (frame) frames.push(frame);
    }
    for (const [i, frame] of frames.entries()) {
      if (this.#signal.aborted) return;
      await this.#sink.frame(i === frames.length - 1 ? { ...frame, id: batch.revision } : frame);
    }
    if (frames.length) this.#lastId = batch.revision;
  }

  async #frameOf(source: EventSource, event: WatchEvent): Promise<Frame | null> {
    if (event.type === "put") {
      const created = this.#req.since !== undefined && !this.#held.has(event.key) &&
        await this.#createdAt(event);
      return this.#put(source, event.key, event.value, event.revision, false, created);
    }
    const held = this.#held.get(event.key);
    if (held) {
      if (compareRevisions(event.revision, held.revision) <= 0) return null; // replayed
      this.#held.delete(event.key);
      return this.#frame(source, "deleted", held.name, event.revision, null);
    }
    // Not sent on this connection: on a fresh stream the client never held it (it was not
    // visible, or it was created and deleted before the snapshot read it); on a resumed
    // stream it may have, from an earlier connection.
    if (this.#req.since === undefined) return null;
    const name = nameOfKey(source, event.key);
    if (!matchesName(this.#req.name, name)) return null;
    return this.#frame(source, "deleted", name, event.revision, null);
  }

  /** The frame for a stored value of `key` (snapshot or watch put), updating what is held. */
  #put(
    source: EventSource,
    key: string,
    value: unknown,
    revision: string,
    snapshot: boolean,
    created = false,
  ): Frame | null {
    const name = source.nameOf(value);
    if (!matchesName(this.#req.name, name)) return null;
    const held = this.#held.get(key);
    if (held && compareRevisions(revision, held.revision) <= 0) return null; // already shown
    const object = source.view(value, this.#req.user);
    if (object === null) {
      if (!held) return null;
      this.#held.delete(key);
      return this.#frame(source, "deleted", held.name, revision, null);
    }
    this.#held.set(key, { name, revision });
    const type = snapshot || (!held && (this.#req.since === undefined || created))
      ? "added"
      : "modified";
    return this.#frame(source, type, name, revision, object);
  }

  /**
   * True when the put `event` created its key: the key's current incarnation was created at
   * the event's revision (one read; a key deleted and re-created since reads as not created).
   */
  async #createdAt(event: WatchEvent): Promise<boolean> {
    try {
      return (await this.#store.get(event.key))?.createRevision === event.revision;
    } catch {
      return false; // the type is a nicety; the stream goes on
    }
  }

  /** A frame without `id:` (see {@link #write}). */
  #frame(
    source: EventSource,
    type: ResourceEvent["type"],
    name: string,
    revision: string,
    object: unknown,
  ): Frame {
    const data: ResourceEvent = { revision, kind: source.kind as EventKind, type, name, object };
    return { event: type, data: JSON.stringify(data) };
  }

  #fail(error: () => ErrorInfo): void {
    if (this.#failure) return;
    this.#failure = error;
    this.#cancelWatch?.();
    this.#cancelWatch = null;
    this.#poke();
  }

  #poke(): void {
    this.#wake?.();
  }
}

function errorText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
