/**
 * Streams one HTTP(S) download into a new file while hashing it (SHA-256): the image cache's
 * transfer step (agent/images.ts decides where the file goes and what it is called).
 *
 * The transfer is a pipeline, so the network, the hash and the disk work at the same time:
 *
 * ```
 * fetch body ──read──▶ SHA-256 (reader side) ──▶ ChunkQueue (≤ queueBytes) ──▶ writer ──▶ file
 *                                                                              └─▶ fdatasync
 * ```
 *
 * - the reader hashes each chunk as it arrives and queues it; it waits only when the queue
 *   holds more than `queueBytes` (back-pressure: memory stays bounded whatever the disk does);
 * - the writer joins queued chunks into writes of up to `writeChunkBytes` and writes them;
 * - every `flushEveryBytes` written, the writer starts an `fdatasync` through a second file
 *   descriptor without waiting for it (at most one at a time), so the kernel writes the data
 *   back while the download goes on instead of all of it at the final `fsync` (which still
 *   happens, once, before the call returns). The same bytes are written and synced as with
 *   `curl | tee | sha256` + `sync`; only the waiting overlaps (`scripts/bench_download.ts`).
 *
 * Downloads ask for `Accept-Encoding: identity`, so the digest covers the bytes as published
 * (what `sha256sum` of the file gives) and `Content-Length` counts those bytes.
 *
 * Credentials in the URL (`http://user:pass@nas/img`) are sent as HTTP Basic authorization
 * and appear as `***` in every error message and detail (shared/url_redact.ts). A failure
 * before any response (DNS, refused, reset, TLS) is reported as one message that does not
 * tell whether a port is open (agent/policy_fetch.ts `CONNECT_FAILED`); the cause stays in
 * the error's `cause` for the agent's log.
 *
 * @module
 */
import { createHash } from "node:crypto";
import { ApiError } from "../shared/errors.ts";
import { redactUrl, splitCredentials } from "../shared/url_redact.ts";
import { errorMessage, writeAll } from "./fsutil.ts";
import { CONNECT_FAILED, UrlPolicyError } from "./policy_fetch.ts";
import { formatBytes } from "./units.ts";

/** Default bytes held between the network reader and the disk writer (16 MiB). */
export const DEFAULT_QUEUE_BYTES = 16 * 1024 * 1024;
/** Default size of one disk write, bytes (1 MiB; queued chunks are joined up to it). */
export const DEFAULT_WRITE_CHUNK_BYTES = 1024 * 1024;
/** Default interval between background `fdatasync`s, bytes written (64 MiB). */
export const DEFAULT_FLUSH_EVERY_BYTES = 64 * 1024 * 1024;

/** Options of {@link downloadToFile}. */
export interface DownloadOptions {
  /** http(s) URL (the caller validates it). */
  url: string;
  /** The file to create; it must not exist (created with `createNew`, mode 0644). */
  dest: string;
  /** Abort when nothing arrives for this long, ms. */
  idleTimeoutMs: number;
  /** Largest body accepted, bytes (`Content-Length` and the streamed body). */
  maxBytes: number;
  /** Aborts the transfer; the call then rejects (the caller maps the reason). */
  signal?: AbortSignal;
  /** `fetch` to use (default the global one). */
  fetch?: typeof fetch;
  /**
   * Called with the announced `Content-Length` (bytes) before `dest` is created; throwing
   * refuses the download (the body is cancelled, nothing is written).
   */
  checkLength?: (bytes: number) => Promise<void>;
  /** Bytes received so far and the announced total (null when unknown), after each chunk. */
  onProgress?: (received: number, total: number | null) => void;
  /** Bytes held between reader and writer; default {@link DEFAULT_QUEUE_BYTES}. */
  queueBytes?: number;
  /** Largest single write, bytes; default {@link DEFAULT_WRITE_CHUNK_BYTES}. */
  writeChunkBytes?: number;
  /** Background `fdatasync` interval, bytes; 0 = only the final `fsync`. */
  flushEveryBytes?: number;
}

/** A completed download. */
export interface DownloadResult {
  /** Lowercase hex SHA-256 of the body. */
  sha256: string;
  /** Body size, bytes. */
  sizeBytes: number;
}

/**
 * Downloads `o.url` into the new file `o.dest` (fsynced before the call returns) and returns
 * the body's SHA-256 and size. On failure `dest` may be left partially written: the caller
 * owns it (agent/images.ts removes its temp file).
 *
 * @throws ApiError `download_failed` (network error, HTTP non-2xx, idle timeout, truncated
 *   body, `Content-Length` or body larger than `maxBytes`; `details.url`),
 *   `image_unavailable` (`dest` cannot be created, written or synced); whatever
 *   `checkLength` throws; when `o.signal` aborts, a `download_failed` naming the reason
 */
export async function downloadToFile(o: DownloadOptions): Promise<DownloadResult> {
  const ctrl = new AbortController();
  const signal = o.signal ? AbortSignal.any([ctrl.signal, o.signal]) : ctrl.signal;
  let timer: ReturnType<typeof setTimeout> | undefined;
  const arm = () => {
    clearTimeout(timer);
    timer = setTimeout(
      () => ctrl.abort(new Error(`no data received for ${o.idleTimeoutMs / 1000} s`)),
      o.idleTimeoutMs,
    );
  };
  const shown = redactUrl(o.url);
  const failed = (why: string, cause?: unknown) => {
    const err = new ApiError("download_failed", `download ${shown}: ${why}`, { url: shown });
    if (cause !== undefined) Object.defineProperty(err, "cause", { value: cause });
    return err;
  };
  // Before any response: only a policy refusal says why; everything else is one message.
  const connectFailed = (e: unknown) =>
    signal.aborted
      ? failed(why(e))
      : e instanceof UrlPolicyError
      ? failed(e.message)
      : failed(CONNECT_FAILED, (e as Error)?.cause ?? e);
  const why = (e: unknown) => signal.aborted ? errorMessage(signal.reason) : errorMessage(e);
  const unwritable = (e: unknown) =>
    new ApiError("image_unavailable", `cannot write image cache ${o.dest}: ${errorMessage(e)}`);
  arm();
  try {
    let res: Response;
    try {
      const { url, authorization } = splitCredentials(o.url);
      // identity: a transparently decompressed body would not match the published
      // checksum, nor the Content-Length, which then counts the compressed bytes.
      const headers: Record<string, string> = { "accept-encoding": "identity" };
      if (authorization) headers.authorization = authorization;
      res = await (o.fetch ?? fetch)(url, { signal, headers });
    } catch (e) {
      throw connectFailed(e);
    }
    if (!res.ok || !res.body) {
      await res.body?.cancel().catch(() => {});
      throw failed(`HTTP ${res.status}${res.statusText ? " " + res.statusText : ""}`);
    }
    const body = res.body;
    const lenHeader = res.headers.get("content-length");
    const total = lenHeader && /^\d+$/.test(lenHeader) ? Number(lenHeader) : null;
    if (total !== null) {
      try {
        if (total > o.maxBytes) {
          throw failed(
            `image is ${total} bytes (${formatBytes(total)}), over images.max_download_bytes ` +
              `${o.maxBytes} (${formatBytes(o.maxBytes)})`,
          );
        }
        await o.checkLength?.(total);
      } catch (e) {
        await body.cancel().catch(() => {});
        throw e;
      }
    }
    let file: Deno.FsFile;
    try {
      file = await Deno.open(o.dest, { write: true, createNew: true, mode: 0o644 });
    } catch (e) {
      await body.cancel().catch(() => {});
      throw unwritable(e);
    }
    const queue = new ChunkQueue(o.queueBytes ?? DEFAULT_QUEUE_BYTES);
    const writer = writeQueued(file, o.dest, queue, {
      writeChunkBytes: o.writeChunkBytes ?? DEFAULT_WRITE_CHUNK_BYTES,
      flushEveryBytes: o.flushEveryBytes ?? DEFAULT_FLUSH_EVERY_BYTES,
    }).catch((e) => {
      queue.fail(); // the reader stops at its next push
      throw unwritable(e);
    });
    writer.catch(() => {}); // awaited below; a failure meanwhile is not "unhandled"
    const hash = createHash("sha256");
    let received = 0;
    const reader = body.getReader();
    // A reader waiting for queue space (slow disk) is not in `read()`: stop it from here.
    const stop = () => queue.fail();
    signal.addEventListener("abort", stop, { once: true });
    try {
      while (true) {
        let chunk: ReadableStreamReadResult<Uint8Array>;
        try {
          arm();
          chunk = await reader.read();
        } catch (e) {
          throw failed(why(e));
        }
        if (chunk.done) break;
        if (received + chunk.value.length > o.maxBytes) {
          throw failed(
            `body exceeds images.max_download_bytes ${o.maxBytes} (${formatBytes(o.maxBytes)}); ` +
              `aborted after ${received} bytes`,
          );
        }
        hash.update(chunk.value);
        received += chunk.value.length;
        o.onProgress?.(received, total);
        // Waits only while the writer is `queueBytes` behind (not an idle network).
        clearTimeout(timer);
        if (!await queue.push(chunk.value)) break; // the writer failed, or an abort
      }
      if (signal.aborted) throw failed(why(null));
      if (total !== null && received !== total) {
        throw failed(`truncated: received ${received} of ${total} bytes`);
      }
      queue.close();
      await writer;
    } catch (e) {
      queue.fail();
      await reader.cancel().catch(() => {});
      await writer.catch(() => {});
      // A write error surfaces as itself, not as the reader's reaction to it.
      throw await writer.then(() => e, (we) => we);
    } finally {
      signal.removeEventListener("abort", stop);
      file.close();
    }
    return { sha256: hash.digest("hex"), sizeBytes: received };
  } finally {
    clearTimeout(timer);
  }
}

/** Tuning of {@link writeQueued}. */
interface WriterOptions {
  writeChunkBytes: number;
  flushEveryBytes: number;
}

/**
 * The writer side: writes everything `queue` yields to `file`, starting a background
 * `fdatasync` (second descriptor on `path`) every `flushEveryBytes`, then `fsync`s once.
 * Resolves when the queue is closed and drained; rejects on the first I/O error.
 */
async function writeQueued(
  file: Deno.FsFile,
  path: string,
  queue: ChunkQueue,
  o: WriterOptions,
): Promise<void> {
  const buf = new Uint8Array(o.writeChunkBytes);
  let syncFile: Deno.FsFile | null = null;
  let flushing: Promise<void> | null = null;
  const flushed: { failed: boolean; error: unknown } = { failed: false, error: null };
  let written = 0;
  let flushedAt = 0;
  try {
    for (;;) {
      const data = await queue.take(buf);
      if (flushed.failed) throw flushed.error;
      if (data === null) break;
      await writeAll(file, data);
      written += data.length;
      if (o.flushEveryBytes > 0 && !flushing && written - flushedAt >= o.flushEveryBytes) {
        flushedAt = written;
        syncFile ??= await Deno.open(path, { read: true });
        // Not awaited: writeback of what is written so far overlaps the next writes.
        flushing = syncFile.syncData()
          .catch((error) => {
            if (!flushed.failed) Object.assign(flushed, { failed: true, error });
          })
          .finally(() => (flushing = null));
      }
    }
    if (queue.failed) return; // the download failed: no point syncing the temp file
    await flushing;
    if (flushed.failed) throw flushed.error;
    await file.sync();
  } finally {
    await flushing?.catch(() => {});
    syncFile?.close();
  }
}

/**
 * A bounded FIFO of byte chunks between one producer and one consumer.
 *
 * `push` resolves once the queued bytes are at most `limitBytes` (so the producer runs at
 * most one chunk ahead of the limit); `take` joins queued chunks into the consumer's buffer.
 * `fail` ends both sides: a pending or later `push` resolves false, `take` returns null.
 */
export class ChunkQueue {
  #chunks: Uint8Array[] = [];
  #bytes = 0;
  #closed = false;
  #failed = false;
  #onData: (() => void) | null = null;
  #onSpace: (() => void) | null = null;

  /** @param limitBytes queued bytes above which `push` waits */
  constructor(readonly limitBytes: number) {}

  /** Bytes queued now. */
  get bytes(): number {
    return this.#bytes;
  }

  /** True once {@link fail} was called. */
  get failed(): boolean {
    return this.#failed;
  }

  /**
   * Queues `chunk` (kept by reference: do not reuse it) and waits while more than
   * `limitBytes` are queued.
   *
   * @returns false when the queue failed (the consumer is gone; stop producing)
   * @throws Error when the queue was closed
   */
  async push(chunk: Uint8Array): Promise<boolean> {
    if (this.#closed) throw new Error("ChunkQueue: push after close");
    if (this.#failed) return false;
    if (chunk.length > 0) {
      this.#chunks.push(chunk);
      this.#bytes += chunk.length;
      this.#wake("data");
    }
    while (this.#bytes > this.limitBytes && !this.#failed) {
      await new Promise<void>((r) => (this.#onSpace = r));
    }
    return !this.#failed;
  }

  /** No more chunks: `take` returns null once the queue is drained. */
  close(): void {
    this.#closed = true;
    this.#wake("data");
  }

  /** Ends both sides at once (an error on either side); queued chunks are dropped. */
  fail(): void {
    this.#failed = true;
    this.#chunks = [];
    this.#bytes = 0;
    this.#wake("data");
    this.#wake("space");
  }

  /**
   * The next data: one queued chunk as is when it alone fills `buf` or is the only one,
   * otherwise as many whole chunks as fit copied into `buf`; waits while the queue is empty.
   *
   * @returns a view of the data (valid until the next `take`), or null when closed and
   *   drained, or failed
   */
  async take(buf: Uint8Array): Promise<Uint8Array | null> {
    while (!this.#chunks.length && !this.#closed && !this.#failed) {
      await new Promise<void>((r) => (this.#onData = r));
    }
    if (this.#failed || !this.#chunks.length) return null;
    let out: Uint8Array;
    if (this.#chunks.length === 1 || this.#chunks[0].length + this.#chunks[1].length > buf.length) {
      out = this.#chunks.shift()!;
    } else {
      let n = 0;
      while (this.#chunks.length && n + this.#chunks[0].length <= buf.length) {
        const c = this.#chunks.shift()!;
        buf.set(c, n);
        n += c.length;
      }
      out = buf.subarray(0, n);
    }
    this.#bytes -= out.length;
    this.#wake("space");
    return out;
  }

  #wake(which: "data" | "space"): void {
    const f = which === "data" ? this.#onData : this.#onSpace;
    if (which === "data") this.#onData = null;
    else this.#onSpace = null;
    f?.();
  }
}
