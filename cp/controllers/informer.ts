/**
 * An informer (client-go's `SharedIndexInformer`, on the store): lists every key under a
 * prefix, then watches from the revision of the list, keeping an in-memory cache with
 * secondary indexes and calling handlers on each change. Level-triggered controllers read
 * from the cache instead of scanning the store per event.
 *
 * Consistency: the cache applies a change only when its revision is newer than the cached
 * key's `modRevision`, so events that repeat what the list already showed are ignored. When
 * the watch reports the history compacted (`StoreCompactedError`) the informer lists again
 * and resumes (handlers see the differences as adds, updates and deletes).
 *
 * @module
 */
import { compareRevisions, type KeyValue, type Store, type WatchEvent } from "../store/store.ts";

/** Change handlers; exceptions are logged by the caller's `onError` and otherwise ignored. */
export interface InformerHandlers<T> {
  onAdd?(key: string, value: T): void;
  onUpdate?(key: string, oldValue: T, newValue: T): void;
  onDelete?(key: string, oldValue: T): void;
}

/**
 * An index: the index values an object is filed under (e.g. a VM's node name), from its value
 * and its store key.
 */
export type Indexer<T> = (value: T, key: string) => string[];

/** Options of {@link Informer}. */
export interface InformerOptions<T> {
  store: Store;
  prefix: string;
  indexers?: Record<string, Indexer<T>>;
  /** Called with errors of handlers and of re-listing. */
  onError?: (e: unknown) => void;
}

interface Entry<T> {
  value: T;
  modRevision: string;
}

/** A running informer over one store prefix. */
export class Informer<T> {
  #o: InformerOptions<T>;
  #cache = new Map<string, Entry<T>>();
  #indexes = new Map<string, Map<string, Set<string>>>();
  #handlers: InformerHandlers<T>[] = [];
  #cancel: (() => void) | null = null;
  #synced: Promise<void> | null = null;
  #stopped = false;
  #revision = "0";

  constructor(opts: InformerOptions<T>) {
    this.#o = opts;
    for (const name of Object.keys(opts.indexers ?? {})) this.#indexes.set(name, new Map());
  }

  /** Registers change handlers (before {@link start} to see the initial adds). */
  addHandlers(h: InformerHandlers<T>): void {
    this.#handlers.push(h);
  }

  /** Lists and starts watching; resolves once the cache holds the initial list. */
  start(): Promise<void> {
    return this.#synced ??= this.#listAndWatch();
  }

  /** The store revision the cache reflects (at least). */
  get revision(): string {
    return this.#revision;
  }

  /** The cached value of `key`. */
  get(key: string): T | undefined {
    return this.#cache.get(key)?.value;
  }

  /** Every cached key. */
  keys(): string[] {
    return [...this.#cache.keys()];
  }

  /** Every cached value. */
  list(): T[] {
    return [...this.#cache.values()].map((e) => e.value);
  }

  /** Keys filed under `value` in index `name`. @throws Error for an unknown index */
  byIndex(name: string, value: string): string[] {
    const idx = this.#indexes.get(name);
    if (!idx) throw new Error(`informer ${this.#o.prefix}: no index ${name}`);
    return [...(idx.get(value) ?? [])];
  }

  /** Stops watching. */
  stop(): void {
    this.#stopped = true;
    this.#cancel?.();
    this.#cancel = null;
  }

  async #listAndWatch(): Promise<void> {
    const { store, prefix } = this.#o;
    let cursor: string | null = null;
    let revision: string | null = null;
    const seen = new Set<string>();
    do {
      const page: Awaited<ReturnType<Store["range"]>> = await store.range<T>(prefix, {
        limit: 500,
        cursor,
      });
      revision ??= page.revision;
      for (const kv of page.kvs as KeyValue<T>[]) {
        seen.add(kv.key);
        this.#apply(kv.key, kv.value, kv.modRevision);
      }
      cursor = page.nextCursor;
    } while (cursor);
    for (const key of [...this.#cache.keys()]) {
      if (!seen.has(key)) this.#remove(key, revision ?? "0");
    }
    this.#revision = revision ?? "0";
    if (this.#stopped) return;
    this.#cancel = store.watch(prefix, (ev) => this.#onEvent(ev), {
      fromRevision: this.#revision,
      onError: (e) => {
        this.#o.onError?.(e);
        if (this.#stopped) return;
        // Compacted or failed: list again and resume from the new revision.
        this.#cancel = null;
        this.#synced = this.#listAndWatch().catch((err) => this.#o.onError?.(err));
      },
    });
  }

  #onEvent(ev: WatchEvent): void {
    if (compareRevisions(ev.revision, this.#revision) > 0) this.#revision = ev.revision;
    if (ev.type === "put") this.#apply(ev.key, ev.value as T, ev.revision);
    else this.#remove(ev.key, ev.revision);
  }

  #apply(key: string, value: T, modRevision: string): void {
    const cur = this.#cache.get(key);
    if (cur && compareRevisions(modRevision, cur.modRevision) <= 0) return;
    this.#cache.set(key, { value, modRevision });
    this.#reindex(key, cur?.value, value);
    for (const h of this.#handlers) {
      try {
        if (cur) h.onUpdate?.(key, cur.value, value);
        else h.onAdd?.(key, value);
      } catch (e) {
        this.#o.onError?.(e);
      }
    }
  }

  #remove(key: string, revision: string): void {
    const cur = this.#cache.get(key);
    if (!cur || compareRevisions(revision, cur.modRevision) < 0) return;
    this.#cache.delete(key);
    this.#reindex(key, cur.value, undefined);
    for (const h of this.#handlers) {
      try {
        h.onDelete?.(key, cur.value);
      } catch (e) {
        this.#o.onError?.(e);
      }
    }
  }

  #reindex(key: string, oldValue: T | undefined, newValue: T | undefined): void {
    for (const [name, fn] of Object.entries(this.#o.indexers ?? {})) {
      const idx = this.#indexes.get(name)!;
      for (const v of oldValue === undefined ? [] : fn(oldValue, key)) {
        const set = idx.get(v);
        set?.delete(key);
        if (set?.size === 0) idx.delete(v);
      }
      for (const v of newValue === undefined ? [] : fn(newValue, key)) {
        let set = idx.get(v);
        if (!set) idx.set(v, set = new Set());
        set.add(key);
      }
    }
  }
}
