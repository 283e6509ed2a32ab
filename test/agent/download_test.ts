/**
 * The pipelined download (agent/download.ts): the bounded chunk queue between the network
 * reader and the disk writer, the bytes and digest under any tuning, and a disk that fills up
 * mid-transfer (a real 1 MiB tmpfs) → `image_unavailable` with the transfer stopped.
 */
import { assert, assertEquals, assertRejects, assertStringIncludes } from "../assert.ts";
import { ApiError } from "../../shared/errors.ts";
import { ChunkQueue, downloadToFile } from "../../agent/download.ts";
import { sha256Hex, waitUntil } from "./helpers.ts";

function bytes(n: number, fill = 0): Uint8Array {
  return new Uint8Array(n).fill(fill);
}

/** Settles within the current macrotask? (true when `p` already settled). */
async function settledNow(p: Promise<unknown>): Promise<boolean> {
  let done = false;
  p.then(() => (done = true), () => (done = true));
  await new Promise((r) => setTimeout(r, 0));
  return done;
}

Deno.test("ChunkQueue: back-pressure, joined takes, close and fail", async (t) => {
  await t.step(
    "push waits while more than the limit is queued, until take frees room",
    async () => {
      const q = new ChunkQueue(10);
      assertEquals(await q.push(bytes(6, 1)), true); // 6 ≤ 10: no wait
      const second = q.push(bytes(6, 2)); // 12 > 10: waits
      assertEquals(await settledNow(second), false);
      assertEquals(q.bytes, 12);
      const buf = new Uint8Array(100);
      const got = await q.take(buf); // both fit into buf: joined
      assertEquals([...got!], [1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2]);
      assertEquals(await second, true);
      assertEquals(q.bytes, 0);
    },
  );

  await t.step("a chunk larger than the buffer, or alone, is handed over as is", async () => {
    const q = new ChunkQueue(1000);
    const big = bytes(50, 7);
    await q.push(big);
    await q.push(bytes(5, 8));
    const first = await q.take(new Uint8Array(20));
    assert(first === big, "the chunk itself, not a copy");
    assertEquals((await q.take(new Uint8Array(20)))!.length, 5);
  });

  await t.step("take waits for data; after close it drains, then returns null", async () => {
    const q = new ChunkQueue(100);
    const buf = new Uint8Array(10);
    const pending = q.take(buf);
    assertEquals(await settledNow(pending), false);
    await q.push(bytes(3, 9));
    assertEquals([...(await pending)!], [9, 9, 9]);
    await q.push(bytes(2, 4));
    q.close();
    assertEquals([...(await q.take(buf))!], [4, 4]);
    assertEquals(await q.take(buf), null);
    const late = await assertRejects(() => q.push(bytes(1)));
    assertStringIncludes(late.message, "push after close");
  });

  await t.step(
    "fail releases a waiting producer (false) and a waiting consumer (null)",
    async () => {
      const q = new ChunkQueue(1);
      const producer = q.push(bytes(5));
      const consumerQ = new ChunkQueue(100);
      const consumer = consumerQ.take(new Uint8Array(4));
      q.fail();
      consumerQ.fail();
      assertEquals(await producer, false);
      assertEquals(await consumer, null);
      assertEquals(await q.push(bytes(1)), false);
      assertEquals(q.failed, true);
    },
  );
});

Deno.test("download: same bytes and digest whatever the pipeline tuning", async () => {
  const dir = await Deno.makeTempDir({ prefix: "otx-dl-" });
  const data = new Uint8Array(5 * 1024 * 1024 + 3);
  for (let i = 0; i < data.length; i += 65536) {
    crypto.getRandomValues(data.subarray(i, Math.min(data.length, i + 65536)));
  }
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen() {} },
    () => new Response(data),
  );
  try {
    const tunings = [
      {}, // defaults
      { queueBytes: 1, writeChunkBytes: 1, flushEveryBytes: 1 }, // one chunk at a time, syncs
      { queueBytes: 64 * 1024 * 1024, writeChunkBytes: 8 * 1024 * 1024, flushEveryBytes: 0 },
      { queueBytes: 100_000, writeChunkBytes: 70_001, flushEveryBytes: 1024 * 1024 },
    ];
    for (const [i, tuning] of tunings.entries()) {
      const dest = `${dir}/out-${i}`;
      const progress: number[] = [];
      const got = await downloadToFile({
        url: `http://127.0.0.1:${server.addr.port}/x`,
        dest,
        idleTimeoutMs: 5000,
        maxBytes: 1 << 30,
        onProgress: (n) => progress.push(n),
        ...tuning,
      });
      assertEquals(
        got,
        { sha256: sha256Hex(data), sizeBytes: data.length },
        JSON.stringify(tuning),
      );
      assertEquals(sha256Hex(await Deno.readFile(dest)), sha256Hex(data));
      assertEquals(progress.at(-1), data.length);
      assert(progress.every((n, j) => j === 0 || n > progress[j - 1]), "monotonic progress");
    }
  } finally {
    await server.shutdown();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("download: the disk filling up mid-transfer → image_unavailable, transfer stopped", async () => {
  const dir = await Deno.makeTempDir({ prefix: "otx-dl-" });
  const mnt = `${dir}/tiny`;
  await Deno.mkdir(mnt);
  const mount = await new Deno.Command("mount", {
    args: ["-t", "tmpfs", "-o", "size=1m", "tmpfs", mnt],
    stderr: "piped",
  }).output();
  assert(mount.success, `mount tmpfs: ${new TextDecoder().decode(mount.stderr)}`);
  let sent = 0;
  let cancelled = false;
  // 64 MiB announced (no free-space check here), streamed 64 KiB at a time.
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, () =>
    new Response(
      new ReadableStream<Uint8Array>({
        pull(c) {
          if (sent >= 64 * 1024 * 1024) return c.close();
          sent += 65536;
          c.enqueue(new Uint8Array(65536).fill(1));
        },
        cancel() {
          cancelled = true;
        },
      }),
      { headers: { "content-length": String(64 * 1024 * 1024) } },
    ));
  try {
    const err = await assertRejects(() =>
      downloadToFile({
        url: `http://127.0.0.1:${server.addr.port}/big`,
        dest: `${mnt}/big.part`,
        idleTimeoutMs: 5000,
        maxBytes: 1 << 30,
        queueBytes: 256 * 1024,
      })
    );
    assert(err instanceof ApiError);
    assertEquals(err.code, "image_unavailable");
    assertStringIncludes(err.message, `cannot write image cache ${mnt}/big.part`);
    // The reader stopped at the writer's failure instead of fetching the remaining ~63 MiB.
    await waitUntil(() => cancelled, 5000, "the response body to be cancelled");
    assert(sent < 8 * 1024 * 1024, `server sent ${sent} bytes`);
  } finally {
    await server.shutdown();
    await new Deno.Command("umount", { args: [mnt] }).output();
    await Deno.remove(dir, { recursive: true });
  }
});
