/**
 * Cursor pagination of list endpoints (`?limit=&cursor=` → `{items, next_cursor}`), on top
 * of store ranges; the cursor is the store's opaque cursor.
 *
 * @module
 */
import type { ListQuery } from "../../shared/api/common.ts";
import { encodeCursor, type Store } from "../store/store.ts";

/** A list envelope. */
export interface Page<V> {
  items: V[];
  next_cursor: string | null;
}

/**
 * One page of records under `prefix`, mapped through `view` and optionally filtered (a
 * filtered page may be shorter than `limit` only at the end of the list).
 *
 * @throws ApiError `validation_failed` for a foreign or malformed cursor
 */
export async function listPage<T, V>(
  store: Store,
  prefix: string,
  query: ListQuery,
  view: (rec: T) => V,
  filter?: (rec: T) => boolean,
): Promise<Page<V>> {
  if (!filter) {
    const page = await store.range<T>(prefix, { limit: query.limit, cursor: query.cursor });
    return { items: page.kvs.map((kv) => view(kv.value)), next_cursor: page.nextCursor };
  }
  const items: V[] = [];
  let cursor: string | null = query.cursor ?? null;
  for (;;) {
    const page = await store.range<T>(prefix, { limit: query.limit, cursor });
    for (let i = 0; i < page.kvs.length; i++) {
      const kv = page.kvs[i];
      if (!filter(kv.value)) continue;
      items.push(view(kv.value));
      if (items.length === query.limit) {
        const more = i < page.kvs.length - 1 || page.nextCursor !== null;
        return { items, next_cursor: more ? encodeCursor(kv.key) : null };
      }
    }
    if (!page.nextCursor) return { items, next_cursor: null };
    cursor = page.nextCursor;
  }
}
