import { assert, assertEquals, assertRejects, assertStringIncludes } from "../assert.ts";
import { createHash } from "node:crypto";
import { gzipSync } from "node:zlib";
import { ApiError } from "../../shared/errors.ts";
import { formatBytes, imageBasename, ImageCache, usableFreeBytes } from "../../agent/images.ts";
import { waitUntil } from "./helpers.ts";

function sha(bytes: Uint8Array): string {
  return createHash("sha256").update(bytes).digest("hex");
}

/** A loopback HTTP server serving `files` by path, counting requests per path. */
function startServer(files: Map<string, Uint8Array<ArrayBuffer>>) {
  const hits = new Map<string, number>();
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, (req) => {
    const path = new URL(req.url).pathname;
    hits.set(path, (hits.get(path) ?? 0) + 1);
    if (path.startsWith("/stall/")) {
      // Sends 4 bytes, then nothing: the idle timeout must fire.
      let timer: ReturnType<typeof setTimeout> | undefined;
      const body = new ReadableStream<Uint8Array>({
        start(c) {
          c.enqueue(new Uint8Array([1, 2, 3, 4]));
          timer = setTimeout(() => c.close(), 10_000);
        },
        cancel() {
          clearTimeout(timer);
        },
      });
      return new Response(body);
    }
    const data = files.get(path);
    if (!data) return new Response("not found", { status: 404 });
    return new Response(data);
  });
  const base = `http://127.0.0.1:${server.addr.port}`;
  return { server, hits, base };
}

async function listDir(path: string): Promise<string[]> {
  const out: string[] = [];
  try {
    for await (const e of Deno.readDir(path)) out.push(e.name);
  } catch { /* missing */ }
  return out.sort();
}

function randomBytes(n: number): Uint8Array<ArrayBuffer> {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i += 65536) crypto.getRandomValues(b.subarray(i, Math.min(n, i + 65536)));
  return b;
}

Deno.test("images: download, sidecar, cache hit, shared concurrent download", async () => {
  const root = await Deno.makeTempDir({ prefix: "otherix-img-" });
  const data = randomBytes(3 * 1024 * 1024 + 17);
  const other = randomBytes(1000);
  const { server, hits, base } = startServer(
    new Map([["/img/disk.img", data], ["/img/other.img", other]]),
  );
  try {
    const cache = new ImageCache({ idleTimeoutMs: 5000 });
    const pool = `${root}/pools/default`;
    const progress: number[] = [];
    const first = await cache.ensure({
      poolPath: pool,
      url: `${base}/img/disk.img`,
      sha256: sha(data),
      onProgress: (n) => progress.push(n),
    });
    assertEquals(first.cacheHit, false);
    assertEquals(first.path, `${pool}/images/disk.img`);
    assertEquals(first.sha256, sha(data));
    assertEquals(first.sizeBytes, data.length);
    assertEquals(sha(await Deno.readFile(first.path)), sha(data));
    assertEquals((await Deno.readTextFile(`${first.path}.sha256`)).trim(), sha(data));
    assertEquals(progress[progress.length - 1], data.length);

    // Second call: cache hit, no request (with and without a requested checksum).
    const second = await cache.ensure({ poolPath: pool, url: `${base}/img/disk.img` });
    assertEquals(second.cacheHit, true);
    assertEquals(second.sha256, sha(data));
    const third = await cache.ensure({
      poolPath: pool,
      url: `${base}/img/disk.img?x=1`,
      sha256: sha(data),
    });
    assertEquals(third.cacheHit, true);
    assertEquals(hits.get("/img/disk.img"), 1);

    // Concurrent creates of a new image share one download.
    const [a, b] = await Promise.all([
      cache.ensure({ poolPath: pool, url: `${base}/img/other.img` }),
      cache.ensure({ poolPath: pool, url: `${base}/img/other.img` }),
    ]);
    assertEquals(hits.get("/img/other.img"), 1);
    assertEquals([a.cacheHit, b.cacheHit].sort(), [false, true]);

    assertEquals(await listDir(`${pool}/images`), [
      "disk.img",
      "disk.img.sha256",
      "other.img",
      "other.img.sha256",
    ]);
    assertEquals(await ImageCache.list(pool), [
      { basename: "disk.img", sha256: sha(data), size_bytes: data.length },
      { basename: "other.img", sha256: sha(other), size_bytes: other.length },
    ]);
  } finally {
    await server.shutdown();
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("images: wrong sha256 → checksum_mismatch and no file left", async () => {
  const root = await Deno.makeTempDir({ prefix: "otherix-img-" });
  const data = randomBytes(200_000);
  const { server, base } = startServer(new Map([["/disk.img", data]]));
  try {
    const cache = new ImageCache({ idleTimeoutMs: 5000 });
    const err = await assertRejects(() =>
      cache.ensure({ poolPath: root, url: `${base}/disk.img`, sha256: "0".repeat(64) })
    );
    assert(err instanceof ApiError);
    assertEquals(err.code, "checksum_mismatch");
    assertStringIncludes(err.message, sha(data));
    assertEquals(await listDir(`${root}/images`), []);
  } finally {
    await server.shutdown();
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("images: cached sidecar differing from the request re-downloads once", async () => {
  const root = await Deno.makeTempDir({ prefix: "otherix-img-" });
  const v1 = randomBytes(5000);
  const v2 = randomBytes(6000);
  const files = new Map([["/disk.img", v1]]);
  const { server, hits, base } = startServer(files);
  try {
    const cache = new ImageCache({ idleTimeoutMs: 5000 });
    await cache.ensure({ poolPath: root, url: `${base}/disk.img` });
    // The URL still serves v1 but v2's checksum is requested: mismatch, cache untouched.
    const err = await assertRejects(() =>
      cache.ensure({ poolPath: root, url: `${base}/disk.img`, sha256: sha(v2) })
    );
    assertEquals((err as ApiError).code, "checksum_mismatch");
    assertStringIncludes(err.message, "cached sidecar");
    assertEquals(hits.get("/disk.img"), 2);
    assertEquals(await listDir(`${root}/images`), ["disk.img", "disk.img.sha256"]);
    assertEquals(sha(await Deno.readFile(`${root}/images/disk.img`)), sha(v1));
    // Now the URL serves v2: the re-download replaces the cached copy.
    files.set("/disk.img", v2);
    const got = await cache.ensure({ poolPath: root, url: `${base}/disk.img`, sha256: sha(v2) });
    assertEquals([got.cacheHit, got.sha256], [false, sha(v2)]);
    assertEquals(sha(await Deno.readFile(`${root}/images/disk.img`)), sha(v2));
    assertEquals((await Deno.readTextFile(`${root}/images/disk.img.sha256`)).trim(), sha(v2));
  } finally {
    await server.shutdown();
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("images: 404, refused connection and idle timeout → download_failed", async () => {
  const root = await Deno.makeTempDir({ prefix: "otherix-img-" });
  const { server, base } = startServer(new Map());
  try {
    const cache = new ImageCache({ idleTimeoutMs: 500 });
    const e404 = await assertRejects(() =>
      cache.ensure({ poolPath: root, url: `${base}/nope/missing.img` })
    );
    assertEquals((e404 as ApiError).code, "download_failed");
    assertStringIncludes(e404.message, "HTTP 404");

    const stall = await assertRejects(() =>
      cache.ensure({ poolPath: root, url: `${base}/stall/slow.img` })
    );
    assertEquals((stall as ApiError).code, "download_failed");
    assertStringIncludes(stall.message, "no data received");

    // A port nobody listens on.
    const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const port = (l.addr as Deno.NetAddr).port;
    l.close();
    const refused = await assertRejects(() =>
      cache.ensure({ poolPath: root, url: `http://127.0.0.1:${port}/x.img` })
    );
    assertEquals((refused as ApiError).code, "download_failed");
    assertEquals(await listDir(`${root}/images`), []);
  } finally {
    await server.shutdown();
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("images: unwritable cache → image_unavailable", async () => {
  const root = await Deno.makeTempDir({ prefix: "otherix-img-" });
  const { server, base } = startServer(new Map([["/disk.img", new Uint8Array(10)]]));
  try {
    // The pool path is a regular file, so <pool>/images cannot be created.
    await Deno.writeTextFile(`${root}/pool`, "");
    const err = await assertRejects(() =>
      new ImageCache({ idleTimeoutMs: 5000 }).ensure({
        poolPath: `${root}/pool`,
        url: `${base}/disk.img`,
      })
    );
    assertEquals((err as ApiError).code, "image_unavailable");
  } finally {
    await server.shutdown();
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("images: a server that compresses on request still yields the published bytes", async () => {
  const root = await Deno.makeTempDir({ prefix: "otherix-img-" });
  const data = new Uint8Array(300_000).fill(7); // compresses to a few hundred bytes
  // Like a CDN compressing on the fly: gzip whenever the client accepts it.
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, (req) => {
    if (!(req.headers.get("accept-encoding") ?? "").includes("gzip")) return new Response(data);
    const gz = new Uint8Array(gzipSync(data));
    return new Response(gz, {
      headers: { "content-encoding": "gzip", "content-length": String(gz.length) },
    });
  });
  try {
    const got = await new ImageCache({ idleTimeoutMs: 5000 }).ensure({
      poolPath: root,
      url: `http://127.0.0.1:${server.addr.port}/disk.img`,
      sha256: sha(data),
    });
    assertEquals([got.sha256, got.sizeBytes], [sha(data), data.length]);
    assertEquals(sha(await Deno.readFile(got.path)), sha(data));
  } finally {
    await server.shutdown();
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("images: a symlink planted in the cache is never a cache hit", async () => {
  const root = await Deno.makeTempDir({ prefix: "otherix-img-" });
  const data = randomBytes(4096);
  const { server, hits, base } = startServer(new Map([["/disk.img", data]]));
  try {
    // A host file outside the pool, linked into the cache with a matching sidecar: a cache
    // hit would make it the backing file of the next VM's disk.
    const secret = new TextEncoder().encode("host secret\n");
    await Deno.writeFile(`${root}/secret`, secret);
    await Deno.mkdir(`${root}/pool/images`, { recursive: true });
    await Deno.symlink(`${root}/secret`, `${root}/pool/images/disk.img`);
    await Deno.writeTextFile(`${root}/pool/images/disk.img.sha256`, sha(secret) + "\n");
    assertEquals(await ImageCache.list(`${root}/pool`), []);

    const got = await new ImageCache({ idleTimeoutMs: 5000 }).ensure({
      poolPath: `${root}/pool`,
      url: `${base}/disk.img`,
    });
    assertEquals([got.cacheHit, got.sha256], [false, sha(data)]);
    assertEquals(hits.get("/disk.img"), 1);
    // The link was replaced by a regular file; its target is untouched.
    const st = await Deno.lstat(`${root}/pool/images/disk.img`);
    assert(st.isFile && !st.isSymlink);
    assertEquals(await Deno.readFile(`${root}/secret`), secret);
  } finally {
    await server.shutdown();
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("images: only http(s) URLs are fetched (fetch would also read file: URLs)", async () => {
  const root = await Deno.makeTempDir({ prefix: "otherix-img-" });
  try {
    await Deno.writeTextFile(`${root}/agent.key`, "private\n");
    const cache = new ImageCache({ idleTimeoutMs: 5000 });
    for (const url of [`file://${root}/agent.key`, "data:,hello/x.img"]) {
      const err = await assertRejects(() => cache.ensure({ poolPath: `${root}/pool`, url }));
      assertEquals((err as ApiError).code, "validation_failed", url);
    }
    assertEquals(await listDir(root), ["agent.key"]);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("images: basename validation", () => {
  assertEquals(imageBasename("https://h/a/b/ubuntu.img?x=y#z"), "ubuntu.img");
  assertEquals(imageBasename("https://h/a%2Fb.img"), "a%2Fb.img");
  for (
    const bad of [
      "https://h/",
      "https://h/a/",
      "https://h/.hidden.img",
      "https://h/x.img.sha256",
      "https://h/" + "a".repeat(249),
    ]
  ) {
    let code = "";
    try {
      imageBasename(bad);
    } catch (e) {
      code = (e as ApiError).code;
    }
    assertEquals(code, "validation_failed", bad);
  }
  assertEquals(imageBasename("https://h/" + "a".repeat(248)).length, 248);
});

/**
 * A loopback HTTP/1.1 server written by hand (Deno.serve sets Content-Length itself): each
 * connection gets `head` (status line and headers, CRLF-separated, without the blank line),
 * then `body`, then the connection is closed.
 */
function rawHttpServer(head: string, body: Uint8Array = new Uint8Array()) {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  let requests = 0;
  const done = (async () => {
    for await (const conn of listener) {
      requests++;
      (async () => {
        try {
          // Read the request head before answering.
          const buf = new Uint8Array(8192);
          let got = "";
          while (!got.includes("\r\n\r\n")) {
            const n = await conn.read(buf);
            if (n === null) break;
            got += new TextDecoder().decode(buf.subarray(0, n));
          }
          await conn.write(new TextEncoder().encode(head + "\r\n\r\n"));
          if (body.length) await conn.write(body);
        } catch { /* client went away */ }
        try {
          conn.close();
        } catch { /* closed */ }
      })();
    }
  })();
  return {
    base: `http://127.0.0.1:${(listener.addr as Deno.NetAddr).port}`,
    requests: () => requests,
    async close() {
      listener.close();
      await done.catch(() => {});
    },
  };
}

Deno.test("images: usable free space keeps min(1 GiB, 5 %) free", () => {
  const GiB = 1024 ** 3;
  // Large filesystem: the margin is 1 GiB.
  assertEquals(usableFreeBytes({ availableBytes: 10 * GiB, totalBytes: 100 * GiB }), 9 * GiB);
  // Small filesystem (10 GiB): 5 % = 512 MiB.
  assertEquals(
    usableFreeBytes({ availableBytes: 2 * GiB, totalBytes: 10 * GiB }),
    2 * GiB - 512 * 1024 ** 2,
  );
  // Never negative.
  assertEquals(usableFreeBytes({ availableBytes: 100, totalBytes: 100 * GiB }), 0);
  assertEquals(formatBytes(512), "512 bytes");
  assertEquals(formatBytes(1536), "1.5 KiB");
  assertEquals(formatBytes(64 * GiB), "64.0 GiB");
});

Deno.test("images: a Content-Length beyond the pool's free space → image_unavailable, nothing written", async () => {
  const root = await Deno.makeTempDir({ prefix: "otherix-img-" });
  // 1 PiB announced (more than this disk), a few bytes sent.
  const srv = rawHttpServer(
    "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: 1125899906842624",
    new Uint8Array(1000),
  );
  try {
    const pool = `${root}/pools/tank`;
    const err = await assertRejects(() =>
      // A cap above the announced size: the free-space check is what fails.
      new ImageCache({ idleTimeoutMs: 5000, maxDownloadBytes: 2 ** 52 }).ensure({
        poolPath: pool,
        poolName: "tank",
        url: `${srv.base}/huge.img`,
      })
    );
    assert(err instanceof ApiError);
    assertEquals(err.code, "image_unavailable");
    assertStringIncludes(err.message, "not enough free space in pool tank: need 1.0 PiB");
    assertStringIncludes(err.message, "have ");
    assertEquals(err.details?.needed_bytes, 1125899906842624);
    assertEquals(srv.requests(), 1);
    assertEquals(await listDir(`${pool}/images`), []);
  } finally {
    await srv.close();
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("images: the free-space check uses statfs of the pool, with the margin", async () => {
  const root = await Deno.makeTempDir({ prefix: "otherix-img-" });
  const data = randomBytes(10_000);
  const { server, base } = startServer(new Map([["/disk.img", data]]));
  const GiB = 1024 ** 3;
  const asked: string[] = [];
  // 20 GiB filesystem (margin 1 GiB) with 1 GiB + 9 999 bytes available: one byte short.
  const cache = (avail: number) =>
    new ImageCache({
      idleTimeoutMs: 5000,
      filesystemSpace: (p) => {
        asked.push(p);
        return Promise.resolve({ availableBytes: avail, totalBytes: 20 * GiB });
      },
    });
  try {
    const err = await assertRejects(() =>
      cache(GiB + 9_999).ensure({ poolPath: `${root}/default`, url: `${base}/disk.img` })
    );
    assertEquals((err as ApiError).code, "image_unavailable");
    assertStringIncludes(err.message, "pool default: need 9.8 KiB (10000 bytes)");
    assertStringIncludes(err.message, "have 9.8 KiB (9999 bytes free beyond a safety margin");
    assertEquals(asked, [`${root}/default/images`]);
    assertEquals(await listDir(`${root}/default/images`), []);
    // Exactly enough: downloads.
    const got = await cache(GiB + 10_000).ensure({
      poolPath: `${root}/default`,
      url: `${base}/disk.img`,
    });
    assertEquals(got.sizeBytes, data.length);
  } finally {
    await server.shutdown();
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("images: a chunked body over images.max_download_bytes is aborted → download_failed, no temp file", async () => {
  const root = await Deno.makeTempDir({ prefix: "otherix-img-" });
  let sent = 0;
  let cancelled = false;
  // No Content-Length: an endless chunked body of random bytes.
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, () =>
    new Response(
      new ReadableStream<Uint8Array>({
        pull(c) {
          const chunk = randomBytes(64 * 1024);
          sent += chunk.length;
          c.enqueue(chunk);
        },
        cancel() {
          cancelled = true;
        },
      }),
    ));
  try {
    const cap = 1024 * 1024;
    const progress: number[] = [];
    const err = await assertRejects(() =>
      new ImageCache({ idleTimeoutMs: 5000, maxDownloadBytes: cap }).ensure({
        poolPath: root,
        url: `http://127.0.0.1:${server.addr.port}/endless.img`,
        onProgress: (n, total) => {
          assertEquals(total, null);
          progress.push(n);
        },
      })
    );
    assert(err instanceof ApiError);
    assertEquals(err.code, "download_failed");
    assertStringIncludes(err.message, "exceeds images.max_download_bytes 1048576 (1.0 MiB)");
    assert(progress.length > 0 && progress[progress.length - 1] <= cap);
    assertEquals(await listDir(`${root}/images`), []);
    // The transfer stopped: the server is not still streaming.
    await new Promise((r) => setTimeout(r, 300));
    const after = sent;
    await new Promise((r) => setTimeout(r, 300));
    assertEquals(sent, after);
    assert(sent < 64 * cap, `server sent ${sent} bytes`);
    assert(cancelled || sent < 64 * cap);
  } finally {
    await server.shutdown();
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("images: a Content-Length over images.max_download_bytes fails before downloading", async () => {
  const root = await Deno.makeTempDir({ prefix: "otherix-img-" });
  const data = randomBytes(3000);
  const { server, base } = startServer(new Map([["/disk.img", data]]));
  try {
    const err = await assertRejects(() =>
      new ImageCache({ idleTimeoutMs: 5000, maxDownloadBytes: 2999 }).ensure({
        poolPath: root,
        url: `${base}/disk.img`,
      })
    );
    assertEquals((err as ApiError).code, "download_failed");
    assertStringIncludes(
      err.message,
      "image is 3000 bytes (2.9 KiB), over images.max_download_bytes 2999",
    );
    assertEquals(await listDir(`${root}/images`), []);
    // At the cap exactly: fine.
    const got = await new ImageCache({ idleTimeoutMs: 5000, maxDownloadBytes: 3000 }).ensure({
      poolPath: root,
      url: `${base}/disk.img`,
    });
    assertEquals([got.sizeBytes, got.sha256], [3000, sha(data)]);
  } finally {
    await server.shutdown();
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("images: a cancelled request aborts its download, or stops waiting for another's", async () => {
  const root = await Deno.makeTempDir({ prefix: "otherix-img-" });
  // `/stall/` sends 4 bytes then nothing for 10 s: a download that is in progress for a while.
  const { server, base, hits } = startServer(new Map());
  try {
    const cache = new ImageCache({ idleTimeoutMs: 30_000 });
    const url = `${base}/stall/slow.img`;
    const first = new AbortController();
    const second = new AbortController();
    const a = cache.ensure({ poolPath: root, url, signal: first.signal });
    const b = cache.ensure({ poolPath: root, url, signal: second.signal });
    // The second waits for the first one's download of the same file: cancelling it returns
    // at once and leaves the first alone.
    second.abort(new ApiError("task_cancelled", "vm b is being deleted"));
    const eb = await assertRejects(() => b);
    assertEquals([(eb as ApiError).code, eb.message], ["task_cancelled", "vm b is being deleted"]);
    await waitUntil(
      async () => (await listDir(`${root}/images`)).some((f) => f.endsWith(".part")),
      5000,
      "the first download's temp file",
    );
    first.abort(new Error("gone"));
    const ea = await assertRejects(() => a);
    assertEquals((ea as ApiError).code, "task_cancelled");
    assertStringIncludes(ea.message, "image request cancelled: gone");
    assertEquals(await listDir(`${root}/images`), []); // no partial download left
    assertEquals(hits.get("/stall/slow.img"), 1);
  } finally {
    await server.shutdown();
    await Deno.remove(root, { recursive: true });
  }
});
