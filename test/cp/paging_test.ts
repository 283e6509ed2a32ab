import { assertEquals } from "../assert.ts";
import { listPage } from "../../cp/routes/paging.ts";
import { openKvStore } from "../../cp/store/kv.ts";

Deno.test("paging: limit/cursor pages, with and without a filter", async () => {
  const dir = await Deno.makeTempDir({ prefix: "otx-page-" });
  const store = await openKvStore(`${dir}/store.kv`);
  try {
    for (let i = 0; i < 7; i++) await store.put(`/items/${i}`, { n: i, even: i % 2 === 0 });
    type Rec = { n: number; even: boolean };
    const view = (r: Rec) => r.n;
    const seen: number[] = [];
    let cursor: string | undefined;
    for (let guard = 0; guard < 10; guard++) {
      const p = await listPage(store, "/items/", { limit: 3, cursor }, view);
      seen.push(...p.items);
      if (!p.next_cursor) break;
      cursor = p.next_cursor;
    }
    assertEquals(seen, [0, 1, 2, 3, 4, 5, 6]);

    const even = (r: Rec) => r.even;
    const p1 = await listPage(store, "/items/", { limit: 2 }, view, even);
    assertEquals(p1.items, [0, 2]);
    const p2 = await listPage(store, "/items/", { limit: 2, cursor: p1.next_cursor! }, view, even);
    assertEquals(p2.items, [4, 6]);
    // 6 is the last key: no further page.
    assertEquals(p2.next_cursor, null);
    const all = await listPage(store, "/items/", { limit: 100 }, view, even);
    assertEquals([all.items, all.next_cursor], [[0, 2, 4, 6], null]);
  } finally {
    await store.close();
    await Deno.remove(dir, { recursive: true });
  }
});
