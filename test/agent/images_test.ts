/**
 * The agent's image cache (agent/images.ts, agent/image_entries.ts) against real loopback
 * HTTP servers and a real filesystem: content identity per source, coexisting basenames,
 * immutable entries, single-flight downloads, checksums, limits, cancellation.
 */
import { assert, assertEquals, assertRejects, assertStringIncludes } from "../assert.ts";
import { createHash } from "node:crypto";
import { gzipSync } from "node:zlib";
import { ApiError } from "../../shared/errors.ts";
import { formatBytes, imageBasename, ImageCache, usableFreeBytes } from "../../agent/images.ts";
import { entryNames, variantName } from "../../agent/image_entries.ts";
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

/**
 * A loopback server that sends the first `holdAfter` bytes of `data` for every request and
 * the rest only once `release()` is called: a download that is visibly in progress.
 */
function gatedServer(data: Uint8Array<ArrayBuffer>, holdAfter: number) {
  let requests = 0;
  let release!: () => void;
  const released = new Promise<void>((r) => (release = r));
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, () => {
    requests++;
    const body = new ReadableStream<Uint8Array>({
      async start(c) {
        c.enqueue(data.slice(0, holdAfter));
        await released;
        c.enqueue(data.slice(holdAfter));
        c.close();
      },
    });
    return new Response(body, { headers: { "content-length": String(data.length) } });
  });
  return {
    base: `http://127.0.0.1:${server.addr.port}`,
    requests: () => requests,
    release,
    close: () => server.shutdown(),
  };
}

Deno.test("images: download, sidecars, cache hits per source", async (t) => {
  const root = await Deno.makeTempDir({ prefix: "otherix-img-" });
  const data = randomBytes(3 * 1024 * 1024 + 17);
  const { server, hits, base } = startServer(new Map([["/img/disk.img", data]]));
  const cache = new ImageCache({ idleTimeoutMs: 5000 });
  const pool = `${root}/pools/default`;
  const url = `${base}/img/disk.img`;
  const variant = `disk-${sha(data).slice(0, 12)}.img`;
  try {
    await t.step(
      "first use: downloaded as images/<basename> with .sha256 and .source",
      async () => {
        const progress: number[] = [];
        const first = await cache.ensure({
          poolPath: pool,
          url,
          sha256: sha(data),
          onProgress: (n) => progress.push(n),
        });
        assertEquals(first, {
          path: `${pool}/images/disk.img`,
          basename: "disk.img",
          sha256: sha(data),
          source: url,
          sizeBytes: data.length,
          cacheHit: false,
        });
        assertEquals(sha(await Deno.readFile(first.path)), sha(data));
        assertEquals(await Deno.readTextFile(`${first.path}.sha256`), sha(data) + "\n");
        assertEquals(await Deno.readTextFile(`${first.path}.source`), url + "\n");
        assertEquals(progress[progress.length - 1], data.length);
      },
    );

    await t.step("the same URL again: a cache hit without a request", async () => {
      for (const req of [{ url }, { url: `${url}#frag` }, { url, sha256: sha(data) }]) {
        const hit = await cache.ensure({ poolPath: pool, ...req });
        assertEquals([hit.cacheHit, hit.basename, hit.sha256], [true, "disk.img", sha(data)]);
      }
      assertEquals(hits.get("/img/disk.img"), 1);
    });

    await t.step("another URL with that basename (a query differs) is another entry", async () => {
      const other = await cache.ensure({ poolPath: pool, url: `${url}?x=1`, sha256: sha(data) });
      assertEquals([other.cacheHit, other.basename], [false, variant]);
      assertEquals(hits.get("/img/disk.img"), 2);
      assertEquals(await Deno.readTextFile(`${other.path}.source`), `${url}?x=1\n`);
      assertEquals(await listDir(`${pool}/images`), [
        variant,
        `${variant}.sha256`,
        `${variant}.source`,
        "disk.img",
        "disk.img.sha256",
        "disk.img.source",
      ]);
      assertEquals(await ImageCache.list(pool), [
        { basename: variant, sha256: sha(data), size_bytes: data.length },
        { basename: "disk.img", sha256: sha(data), size_bytes: data.length },
      ]);
    });
  } finally {
    await server.shutdown();
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("images: two servers publishing different img.qcow2 → two entries, never mixed up", async (t) => {
  const root = await Deno.makeTempDir({ prefix: "otherix-img-" });
  const bytesA = randomBytes(300_000);
  const bytesB = randomBytes(200_000);
  // Two users' servers: the same path, different bytes.
  const a = startServer(new Map([["/img.qcow2", bytesA]]));
  const b = startServer(new Map([["/img.qcow2", bytesB]]));
  const cache = new ImageCache({ idleTimeoutMs: 5000 });
  const pool = `${root}/pool`;
  try {
    const fromA = await cache.ensure({ poolPath: pool, url: `${a.base}/img.qcow2` });
    await t.step("the second URL downloads its own bytes into a second file", async () => {
      const fromB = await cache.ensure({ poolPath: pool, url: `${b.base}/img.qcow2` });
      assertEquals(fromB.cacheHit, false);
      assertEquals(b.hits.get("/img.qcow2"), 1);
      assertEquals(fromB.basename, `img-${sha(bytesB).slice(0, 12)}.qcow2`);
      assertEquals([fromA.basename, fromA.sha256], ["img.qcow2", sha(bytesA)]);
      assertEquals(fromB.sha256, sha(bytesB));
      assertEquals(sha(await Deno.readFile(fromA.path)), sha(bytesA));
      assertEquals(sha(await Deno.readFile(fromB.path)), sha(bytesB));
    });
    await t.step("each URL keeps hitting its own entry", async () => {
      const againA = await cache.ensure({ poolPath: pool, url: `${a.base}/img.qcow2` });
      const againB = await cache.ensure({ poolPath: pool, url: `${b.base}/img.qcow2` });
      assertEquals([againA.cacheHit, againA.sha256], [true, sha(bytesA)]);
      assertEquals([againB.cacheHit, againB.sha256], [true, sha(bytesB)]);
      assertEquals([a.hits.get("/img.qcow2"), b.hits.get("/img.qcow2")], [1, 1]);
    });
    await t.step(
      "A's checksum requested from B's URL: B's bytes are fetched, mismatch",
      async () => {
        const err = await assertRejects(() =>
          cache.ensure({ poolPath: pool, url: `${b.base}/img.qcow2`, sha256: sha(bytesA) })
        );
        assertEquals((err as ApiError).code, "checksum_mismatch");
        assertStringIncludes(err.message, `SHA-256 is ${sha(bytesB)}, expected ${sha(bytesA)}`);
        assertEquals(b.hits.get("/img.qcow2"), 2);
        assertEquals((await ImageCache.list(pool)).length, 2);
      },
    );
  } finally {
    await a.server.shutdown();
    await b.server.shutdown();
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("images: new content at a cached URL gets a new file; the old one is never touched", async () => {
  const root = await Deno.makeTempDir({ prefix: "otherix-img-" });
  const v1 = randomBytes(5000);
  const v2 = randomBytes(6000);
  const files = new Map([["/disk.img", v1]]);
  const { server, hits, base } = startServer(files);
  try {
    const cache = new ImageCache({ idleTimeoutMs: 5000 });
    const first = await cache.ensure({ poolPath: root, url: `${base}/disk.img` });
    const before = await Deno.stat(first.path);
    // The URL still serves v1 but v2's checksum is requested: mismatch, cache untouched.
    const err = await assertRejects(() =>
      cache.ensure({ poolPath: root, url: `${base}/disk.img`, sha256: sha(v2) })
    );
    assertEquals((err as ApiError).code, "checksum_mismatch");
    assertStringIncludes(err.message, `(cached sidecar has sha256 ${sha(v1)})`);
    assertEquals(hits.get("/disk.img"), 2);
    assertEquals(await listDir(`${root}/images`), [
      "disk.img",
      "disk.img.sha256",
      "disk.img.source",
    ]);
    // Now the URL serves v2: downloaded into a new file beside the old one.
    files.set("/disk.img", v2);
    const got = await cache.ensure({ poolPath: root, url: `${base}/disk.img`, sha256: sha(v2) });
    assertEquals([got.cacheHit, got.sha256], [false, sha(v2)]);
    assertEquals(got.basename, `disk-${sha(v2).slice(0, 12)}.img`);
    assertEquals(sha(await Deno.readFile(got.path)), sha(v2));
    // The old file: same inode, same bytes, same sidecar (a VM overlay backed by it reads v1).
    const after = await Deno.stat(first.path);
    assertEquals([after.ino, after.size, after.mtime], [before.ino, before.size, before.mtime]);
    assertEquals(sha(await Deno.readFile(first.path)), sha(v1));
    assertEquals(await Deno.readTextFile(`${first.path}.sha256`), sha(v1) + "\n");
    // Without a checksum the newest entry of the URL is used; with one, the matching entry.
    const newest = await cache.ensure({ poolPath: root, url: `${base}/disk.img` });
    assertEquals([newest.cacheHit, newest.sha256], [true, sha(v2)]);
    const old = await cache.ensure({ poolPath: root, url: `${base}/disk.img`, sha256: sha(v1) });
    assertEquals([old.cacheHit, old.basename], [true, "disk.img"]);
    assertEquals(hits.get("/disk.img"), 3);
  } finally {
    await server.shutdown();
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("images: N concurrent requests share one download (one GET) and its progress", async (t) => {
  const root = await Deno.makeTempDir({ prefix: "otherix-img-" });
  const data = randomBytes(2 * 1024 * 1024);
  const srv = gatedServer(data, 512 * 1024);
  const cache = new ImageCache({ idleTimeoutMs: 10_000 });
  const url = `${srv.base}/shared.img`;
  try {
    const N = 8;
    const seen: number[][] = Array.from({ length: N + 1 }, () => []);
    const early = Array.from(
      { length: N },
      (_, i) => cache.ensure({ poolPath: root, url, onProgress: (n) => seen[i].push(n) }),
    );
    await t.step(
      "while the download is held half-way, nothing is visible but a temp file",
      async () => {
        await waitUntil(() => seen[0].at(-1) === 512 * 1024, 5000, "the first half");
        assertEquals(await ImageCache.list(root), []);
        const names = await listDir(`${root}/images`);
        assertEquals(names.length, 1);
        assert(/^\.shared\.img\.[0-9a-f]{8}\.part$/.test(names[0]), names[0]);
      },
    );
    await t.step("a request arriving late joins and gets the progress so far at once", () => {
      early.push(
        cache.ensure({ poolPath: root, url, onProgress: (n) => seen[N].push(n) }),
      );
      assertEquals(seen[N], [512 * 1024]);
    });
    srv.release();
    const results = await Promise.all(early);
    await t.step("one GET; one request started it, the rest joined", () => {
      assertEquals(srv.requests(), 1);
      assertEquals(results.filter((r) => !r.cacheHit).length, 1);
      assertEquals(new Set(results.map((r) => r.path)).size, 1);
      assert(results.every((r) => r.sha256 === sha(data)));
      assert(seen.every((s) => s.at(-1) === data.length), "every caller saw the end");
    });
  } finally {
    srv.release();
    await srv.close();
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("images: one of two waiting requests cancelled → the other still gets the download", async () => {
  const root = await Deno.makeTempDir({ prefix: "otherix-img-" });
  const data = randomBytes(1024 * 1024);
  const srv = gatedServer(data, 4096);
  try {
    const cache = new ImageCache({ idleTimeoutMs: 10_000 });
    const url = `${srv.base}/x.img`;
    const gone = new AbortController();
    let started = false;
    const leader = cache.ensure({ poolPath: root, url, signal: gone.signal });
    const stays = cache.ensure({ poolPath: root, url, onProgress: () => (started = true) });
    await waitUntil(() => started, 5000, "the download to start");
    gone.abort(new ApiError("task_cancelled", "vm a is being deleted"));
    const err = await assertRejects(() => leader);
    assertEquals(err.message, "vm a is being deleted");
    srv.release();
    const got = await stays;
    assertEquals([got.sha256, got.sizeBytes], [sha(data), data.length]);
    assertEquals(srv.requests(), 1);
  } finally {
    srv.release();
    await srv.close();
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("images: requests naming different checksums of one URL do not share a download", async () => {
  const root = await Deno.makeTempDir({ prefix: "otherix-img-" });
  const data = randomBytes(100_000);
  const { server, hits, base } = startServer(new Map([["/d.img", data]]));
  try {
    const cache = new ImageCache({ idleTimeoutMs: 5000 });
    const url = `${base}/d.img`;
    const [plain, checked, wrong] = await Promise.allSettled([
      cache.ensure({ poolPath: root, url }),
      cache.ensure({ poolPath: root, url, sha256: sha(data) }),
      cache.ensure({ poolPath: root, url, sha256: "f".repeat(64) }),
    ]);
    assertEquals(hits.get("/d.img"), 3);
    assert(plain.status === "fulfilled" && checked.status === "fulfilled");
    // Both good ones end up with the one entry of (URL, digest).
    assertEquals([plain.value.basename, checked.value.basename], ["d.img", "d.img"]);
    assertEquals(
      wrong.status === "rejected" && (wrong.reason as ApiError).code,
      "checksum_mismatch",
    );
    assertEquals(await listDir(`${root}/images`), ["d.img", "d.img.sha256", "d.img.source"]);
  } finally {
    await server.shutdown();
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("images: an entry without .source (an older agent's) is never reused nor replaced", async () => {
  const root = await Deno.makeTempDir({ prefix: "otherix-img-" });
  const legacy = randomBytes(2000);
  const data = randomBytes(3000);
  const { server, hits, base } = startServer(new Map([["/disk.img", data]]));
  try {
    await Deno.mkdir(`${root}/images`);
    await Deno.writeFile(`${root}/images/disk.img`, legacy);
    await Deno.writeTextFile(`${root}/images/disk.img.sha256`, sha(legacy) + "\n");
    // Its digest is even the one requested: the unknown source still rules it out.
    const got = await new ImageCache({ idleTimeoutMs: 5000 }).ensure({
      poolPath: root,
      url: `${base}/disk.img`,
    });
    assertEquals([got.cacheHit, got.sha256], [false, sha(data)]);
    assertEquals(got.basename, `disk-${sha(data).slice(0, 12)}.img`);
    assertEquals(hits.get("/disk.img"), 1);
    assertEquals(sha(await Deno.readFile(`${root}/images/disk.img`)), sha(legacy));
    // Still listed (it may back VM disks).
    assertEquals((await ImageCache.list(root)).map((i) => i.basename), [
      `disk-${sha(data).slice(0, 12)}.img`,
      "disk.img",
    ]);
  } finally {
    await server.shutdown();
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("images: variant names keep the extension, fit 248 bytes and avoid taken names", async () => {
  const d = "7f3c1a9b0e2d" + "0".repeat(52);
  assertEquals(variantName("img.qcow2", d), "img-7f3c1a9b0e2d.qcow2");
  assertEquals(variantName("img.qcow2", d, 3), "img-7f3c1a9b0e2d-3.qcow2");
  assertEquals(variantName("noble.tar.xz", d), "noble.tar-7f3c1a9b0e2d.xz");
  assertEquals(variantName("disk", d), "disk-7f3c1a9b0e2d");
  const long = "a".repeat(240) + ".img";
  assertEquals(variantName(long, d).length, 248);
  assert(variantName(long, d).endsWith("-7f3c1a9b0e2d.img"));
  const names = [...entryNames("img.qcow2", d)];
  assertEquals(names.slice(0, 3), [
    "img.qcow2",
    "img-7f3c1a9b0e2d.qcow2",
    "img-7f3c1a9b0e2d-2.qcow2",
  ]);
  assertEquals(new Set(names).size, names.length);

  // Publication skips names taken by anything, even a directory or a stray file.
  const root = await Deno.makeTempDir({ prefix: "otherix-img-" });
  const data = randomBytes(1000);
  const { server, base } = startServer(new Map([["/img.qcow2", data]]));
  try {
    const real = sha(data);
    await Deno.mkdir(`${root}/images/img.qcow2`, { recursive: true });
    await Deno.writeTextFile(`${root}/images/img-${real.slice(0, 12)}.qcow2`, "stray");
    const got = await new ImageCache({ idleTimeoutMs: 5000 }).ensure({
      poolPath: root,
      url: `${base}/img.qcow2`,
    });
    assertEquals(got.basename, `img-${real.slice(0, 12)}-2.qcow2`);
    assertEquals(await Deno.readTextFile(`${root}/images/img-${real.slice(0, 12)}.qcow2`), "stray");
  } finally {
    await server.shutdown();
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("images: an image named like a sidecar (x.source) and image x never overwrite each other", async () => {
  const root = await Deno.makeTempDir({ prefix: "otherix-img-" });
  const named = randomBytes(3000); // served as /foo.source
  const plain = randomBytes(4000); // served as /foo
  const { server, hits, base } = startServer(new Map([["/foo.source", named], ["/foo", plain]]));
  try {
    const cache = new ImageCache({ idleTimeoutMs: 5000 });
    const a = await cache.ensure({ poolPath: root, url: `${base}/foo.source` });
    assertEquals(a.basename, "foo.source");
    // `foo`'s sidecar would be `foo.source`: that path is an image, so `foo` takes a variant.
    const b = await cache.ensure({ poolPath: root, url: `${base}/foo` });
    assertEquals(b.basename, `foo-${sha(plain).slice(0, 12)}`);
    assertEquals(sha(await Deno.readFile(a.path)), sha(named));
    assertEquals(sha(await Deno.readFile(b.path)), sha(plain));
    // Both are found again, and listed.
    const again = await Promise.all([
      cache.ensure({ poolPath: root, url: `${base}/foo.source` }),
      cache.ensure({ poolPath: root, url: `${base}/foo` }),
    ]);
    assertEquals(again.map((e) => [e.cacheHit, e.basename]), [
      [true, "foo.source"],
      [true, `foo-${sha(plain).slice(0, 12)}`],
    ]);
    assertEquals([hits.get("/foo.source"), hits.get("/foo")], [1, 1]);
    assertEquals((await ImageCache.list(root)).map((i) => i.basename), [
      `foo-${sha(plain).slice(0, 12)}`,
      "foo.source",
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

Deno.test("images: a symlink planted in the cache is never a cache hit nor followed", async () => {
  const root = await Deno.makeTempDir({ prefix: "otherix-img-" });
  const data = randomBytes(4096);
  const { server, hits, base } = startServer(new Map([["/disk.img", data]]));
  try {
    // A host file outside the pool, linked into the cache with matching sidecars: a cache
    // hit would make it the backing file of the next VM's disk.
    const secret = new TextEncoder().encode("host secret\n");
    await Deno.writeFile(`${root}/secret`, secret);
    await Deno.mkdir(`${root}/pool/images`, { recursive: true });
    await Deno.symlink(`${root}/secret`, `${root}/pool/images/disk.img`);
    await Deno.writeTextFile(`${root}/pool/images/disk.img.sha256`, sha(secret) + "\n");
    await Deno.writeTextFile(`${root}/pool/images/disk.img.source`, `${base}/disk.img\n`);
    assertEquals(await ImageCache.list(`${root}/pool`), []);

    const got = await new ImageCache({ idleTimeoutMs: 5000 }).ensure({
      poolPath: `${root}/pool`,
      url: `${base}/disk.img`,
    });
    assertEquals([got.cacheHit, got.sha256], [false, sha(data)]);
    assertEquals(got.basename, `disk-${sha(data).slice(0, 12)}.img`);
    assertEquals(hits.get("/disk.img"), 1);
    // The download is a regular file; the link and its target are untouched.
    assert((await Deno.lstat(got.path)).isFile);
    assert((await Deno.lstat(`${root}/pool/images/disk.img`)).isSymlink);
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
