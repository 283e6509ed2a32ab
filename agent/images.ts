/**
 * The agent-owned per-pool image cache (spec: storage pools "The agent-owned image cache";
 * troubleshooting `image_unavailable`, `checksum_mismatch`, `download_failed`).
 *
 * Layout: `{poolPath}/images/{basename}` plus the sidecar `{basename}.sha256` (lowercase hex
 * and a newline). IfNotPresent semantics: a regular file (not a symlink) with a valid sidecar
 * is a cache hit and is not re-hashed. Downloads ask for `Accept-Encoding: identity`, so the
 * SHA-256 covers the bytes as published (what `sha256sum` of the file gives); they stream
 * into a hidden temp file in the same directory while the hash is computed, then are
 * renamed into place (image first, sidecar last, so a crash never leaves a sidecar
 * describing other bytes).
 *
 * Checksums: when the request names `image_sha256` and the cached sidecar differs, the image
 * is downloaded again once; if the fresh bytes match, they replace the cached copy
 * (running VMs keep the old inode), otherwise the task fails with `checksum_mismatch` and the
 * cache is left as it was.
 *
 * Concurrent requests for the same cache path are serialized, so they share one download:
 * the second finds the first one's result as a cache hit.
 *
 * Size limits: a download whose `Content-Length` exceeds the pool filesystem's usable free
 * space ({@link usableFreeBytes}) fails with `image_unavailable` before anything is written;
 * one whose `Content-Length` or streamed body exceeds `images.max_download_bytes` fails with
 * `download_failed` (a server that omits or lies about the length cannot fill the disk).
 *
 * @module
 */
import { createHash } from "node:crypto";
import { statfs } from "node:fs/promises";
import { basename as pathBasename, join } from "node:path";
import { ApiError } from "../shared/errors.ts";
import { imageBasenameOf, imageUrlProblem, SIDECAR_SUFFIX } from "../shared/api/images.ts";
import type { CachedImage } from "../shared/api/nodes.ts";
import type { Logger } from "../shared/log.ts";
import { errorMessage, writeAll, writeFileAtomic } from "./fsutil.ts";
import { KeyedMutex } from "./lock.ts";

/** Default `images.max_download_bytes` (64 GiB). */
export const DEFAULT_MAX_DOWNLOAD_BYTES = 64 * 1024 ** 3;
/** Free space kept on a pool's filesystem: 1 GiB, or 5 % of it when that is smaller. */
export const FREE_SPACE_MARGIN_BYTES = 1024 ** 3;
/** The fraction of the filesystem size kept free when below {@link FREE_SPACE_MARGIN_BYTES}. */
export const FREE_SPACE_MARGIN_FRACTION = 0.05;

const HEX64 = /^[0-9a-f]{64}$/;

/** Free space of a filesystem, bytes. */
export interface FsSpace {
  /** Bytes an unprivileged writer may still use (`f_bavail * f_bsize`). */
  availableBytes: number;
  /** Size of the filesystem (`f_blocks * f_bsize`). */
  totalBytes: number;
}

/**
 * The free space of the filesystem holding `path` (statfs). Needs `--allow-sys=statfs`
 * and read access to `path`.
 *
 * @throws the underlying error when statfs fails
 */
export async function filesystemSpace(path: string): Promise<FsSpace> {
  const st = await statfs(path);
  return { availableBytes: st.bavail * st.bsize, totalBytes: st.blocks * st.bsize };
}

/**
 * The free space kept on a filesystem of `totalBytes` bytes: {@link FREE_SPACE_MARGIN_BYTES}
 * (1 GiB) or 5 % of the filesystem size, whichever is smaller; bytes.
 */
export function freeSpaceMarginBytes(totalBytes: number): number {
  return Math.min(FREE_SPACE_MARGIN_BYTES, Math.floor(totalBytes * FREE_SPACE_MARGIN_FRACTION));
}

/**
 * Bytes a download may use on a filesystem: the available bytes minus
 * {@link freeSpaceMarginBytes}; never negative.
 */
export function usableFreeBytes(space: FsSpace): number {
  return Math.max(0, space.availableBytes - freeSpaceMarginBytes(space.totalBytes));
}

/** `1536` → `1.5 KiB`; bytes below 1 KiB as `N bytes`. */
export function formatBytes(n: number): string {
  const units = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
  if (n < 1024) return `${n} bytes`;
  let v = n / 1024;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v.toFixed(1)} ${units[i]}`;
}

/**
 * The cache basename of an image URL (the shared rule of `shared/api/images.ts`).
 *
 * @throws ApiError `validation_failed` when the URL is not an http(s) URL or its last segment
 *   cannot be a cache file name (see {@link imageUrlProblem})
 */
export function imageBasename(imageUrl: string): string {
  const problem = imageUrlProblem(imageUrl);
  if (problem) {
    throw new ApiError("validation_failed", `image_url: ${problem}`, {
      fields: [{ path: "vm.image_url", message: problem }],
    });
  }
  return imageBasenameOf(imageUrl);
}

/** Options of {@link ImageCache.ensure}. */
export interface EnsureImageOptions {
  /** Absolute pool directory; the cache is `<poolPath>/images`. */
  poolPath: string;
  /** Pool name for messages (default: the last segment of `poolPath`). */
  poolName?: string;
  /** http(s) URL of the image. */
  url: string;
  /** Expected lowercase hex SHA-256, if the request named one. */
  sha256?: string;
  /** Progress callback: bytes received so far and the expected total (null if unknown). */
  onProgress?: (received: number, total: number | null) => void;
  /**
   * Cancels the request (a `vm delete` during the create): a download in progress is aborted
   * and its temp file removed; a request waiting for another one's download of the same file
   * gives up at once. The call then rejects with the signal's reason when it is an
   * {@link ApiError}, else with `task_cancelled`.
   */
  signal?: AbortSignal;
}

/** A cached image on disk. */
export interface EnsuredImage {
  /** Absolute path of the cached image. */
  path: string;
  /** The cache key: the URL's last path segment (see {@link imageBasename}). */
  basename: string;
  /** Lowercase hex SHA-256 (from the sidecar). */
  sha256: string;
  /** Size of the cached file, bytes. */
  sizeBytes: number;
  /** True when no download was needed. */
  cacheHit: boolean;
}

/** Options of {@link ImageCache}. */
export interface ImageCacheOptions {
  /** Abort a download that receives nothing for this long, ms. */
  idleTimeoutMs: number;
  /**
   * Largest download, bytes (`images.max_download_bytes`; default
   * {@link DEFAULT_MAX_DOWNLOAD_BYTES}).
   */
  maxDownloadBytes?: number;
  /** Free space of the filesystem holding a path (tests may inject one). */
  filesystemSpace?: (path: string) => Promise<FsSpace>;
  /** Receives a warning when the free space cannot be determined (the download goes on). */
  log?: Logger;
  /** `fetch` to use (tests may inject one). */
  fetch?: typeof fetch;
}

/** The error of a cancelled request: the signal's ApiError reason, else `task_cancelled`. */
function cancelled(signal: AbortSignal): ApiError {
  return signal.reason instanceof ApiError
    ? signal.reason
    : new ApiError("task_cancelled", `image request cancelled: ${errorMessage(signal.reason)}`);
}

/** Reads a sidecar's hex digest (first token; `sha256sum` format is accepted), or null. */
export async function readSidecar(path: string): Promise<string | null> {
  try {
    const token = (await Deno.readTextFile(path)).trim().split(/\s+/)[0]?.toLowerCase() ?? "";
    return HEX64.test(token) ? token : null;
  } catch {
    return null;
  }
}

/** The per-pool image cache. */
export class ImageCache {
  #locks = new KeyedMutex();
  #opts: ImageCacheOptions;

  constructor(opts: ImageCacheOptions) {
    this.#opts = opts;
  }

  /**
   * Makes sure `opts.url` is cached in `opts.poolPath` and returns it.
   *
   * @throws ApiError `task_cancelled` (or the `signal`'s ApiError reason) when `opts.signal`
   *   aborts; `validation_failed` (not an http(s) URL, bad basename),
   *   `download_failed` (HTTP non-2xx, network error, idle timeout, truncated body,
   *   `Content-Length` or body larger than `maxDownloadBytes`), `checksum_mismatch` (bytes
   *   differ from `opts.sha256`), `image_unavailable` (the cache directory or file cannot be
   *   written; `Content-Length` larger than the pool filesystem's usable free space, see
   *   {@link usableFreeBytes} — then nothing is written)
   */
  ensure(opts: EnsureImageOptions): Promise<EnsuredImage> {
    // Also refuses file:, data: and blob: URLs (which `fetch` would read): only the network
    // is a source.
    const basename = imageBasename(opts.url);
    const dir = join(opts.poolPath, "images");
    const path = join(dir, basename);
    return this.#locks.run(path, () => this.#ensureLocked(opts, dir, basename, path), opts.signal)
      .catch((e) => {
        throw opts.signal?.aborted ? cancelled(opts.signal) : e;
      });
  }

  async #ensureLocked(
    opts: EnsureImageOptions,
    dir: string,
    basename: string,
    path: string,
  ): Promise<EnsuredImage> {
    const sidecar = path + SIDECAR_SUFFIX;
    const want = opts.sha256?.toLowerCase();
    const cachedSha = await readSidecar(sidecar);
    const cachedSize = await fileSize(path);
    if (cachedSha !== null && cachedSize !== null && (!want || want === cachedSha)) {
      return { path, basename, sha256: cachedSha, sizeBytes: cachedSize, cacheHit: true };
    }
    try {
      await Deno.mkdir(dir, { recursive: true, mode: 0o750 });
    } catch (e) {
      throw new ApiError(
        "image_unavailable",
        `cannot create image cache ${dir}: ${errorMessage(e)}`,
      );
    }
    const tmp = join(dir, `.${basename.slice(0, 200)}.${crypto.randomUUID().slice(0, 8)}.part`);
    try {
      const { sha256, size } = await this.#download(opts, dir, tmp);
      if (want && sha256 !== want) {
        const cachedNote = cachedSha && cachedSha !== want
          ? ` (cached sidecar has sha256 ${cachedSha})`
          : "";
        throw new ApiError(
          "checksum_mismatch",
          `image ${opts.url}: SHA-256 is ${sha256}, expected ${want}${cachedNote}`,
          { expected: want, actual: sha256 },
        );
      }
      try {
        // Sidecar out first: an image never sits next to a sidecar describing other bytes.
        await Deno.remove(sidecar).catch((e) => {
          if (!(e instanceof Deno.errors.NotFound)) throw e;
        });
        await Deno.rename(tmp, path);
        await writeFileAtomic(sidecar, sha256 + "\n", 0o644);
      } catch (e) {
        throw new ApiError(
          "image_unavailable",
          `cannot write image cache ${path}: ${errorMessage(e)}`,
        );
      }
      return { path, basename, sha256, sizeBytes: size, cacheHit: false };
    } finally {
      await Deno.remove(tmp).catch(() => {});
    }
  }

  async #download(
    opts: EnsureImageOptions,
    dir: string,
    tmp: string,
  ): Promise<{ sha256: string; size: number }> {
    const idleMs = this.#opts.idleTimeoutMs;
    const maxBytes = this.#opts.maxDownloadBytes ?? DEFAULT_MAX_DOWNLOAD_BYTES;
    const ctrl = new AbortController();
    const signal = opts.signal ? AbortSignal.any([ctrl.signal, opts.signal]) : ctrl.signal;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const arm = () => {
      clearTimeout(timer);
      timer = setTimeout(
        () => ctrl.abort(new Error(`no data received for ${idleMs / 1000} s`)),
        idleMs,
      );
    };
    const failed = (why: string) =>
      new ApiError("download_failed", `download ${opts.url}: ${why}`, { url: opts.url });
    arm();
    try {
      let res: Response;
      try {
        // identity: a transparently decompressed body would not match the published
        // checksum, nor the Content-Length, which then counts the compressed bytes.
        res = await (this.#opts.fetch ?? fetch)(opts.url, {
          signal,
          headers: { "accept-encoding": "identity" },
        });
      } catch (e) {
        throw failed(ctrl.signal.aborted ? errorMessage(ctrl.signal.reason) : errorMessage(e));
      }
      if (!res.ok || !res.body) {
        await res.body?.cancel().catch(() => {});
        throw failed(`HTTP ${res.status}${res.statusText ? " " + res.statusText : ""}`);
      }
      const lenHeader = res.headers.get("content-length");
      const total = lenHeader && /^\d+$/.test(lenHeader) ? Number(lenHeader) : null;
      if (total !== null) {
        try {
          if (total > maxBytes) {
            throw failed(
              `image is ${total} bytes (${formatBytes(total)}), over images.max_download_bytes ` +
                `${maxBytes} (${formatBytes(maxBytes)})`,
            );
          }
          await this.#checkFreeSpace(opts, dir, total);
        } catch (e) {
          await res.body.cancel().catch(() => {});
          throw e;
        }
      }
      let file: Deno.FsFile;
      try {
        file = await Deno.open(tmp, { write: true, createNew: true, mode: 0o644 });
      } catch (e) {
        await res.body.cancel().catch(() => {});
        throw new ApiError(
          "image_unavailable",
          `cannot write image cache ${tmp}: ${errorMessage(e)}`,
        );
      }
      const hash = createHash("sha256");
      let received = 0;
      try {
        const reader = res.body.getReader();
        while (true) {
          let chunk: ReadableStreamReadResult<Uint8Array>;
          try {
            arm();
            chunk = await reader.read();
          } catch (e) {
            throw failed(ctrl.signal.aborted ? errorMessage(ctrl.signal.reason) : errorMessage(e));
          }
          if (chunk.done) break;
          if (received + chunk.value.length > maxBytes) {
            await reader.cancel().catch(() => {});
            throw failed(
              `body exceeds images.max_download_bytes ${maxBytes} (${formatBytes(maxBytes)}); ` +
                `aborted after ${received} bytes`,
            );
          }
          hash.update(chunk.value);
          try {
            await writeAll(file, chunk.value);
          } catch (e) {
            await reader.cancel().catch(() => {});
            throw new ApiError(
              "image_unavailable",
              `cannot write image cache ${tmp}: ${errorMessage(e)}`,
            );
          }
          received += chunk.value.length;
          opts.onProgress?.(received, total);
        }
        if (total !== null && received !== total) {
          throw failed(`truncated: received ${received} of ${total} bytes`);
        }
        try {
          await file.sync();
        } catch (e) {
          throw new ApiError(
            "image_unavailable",
            `cannot write image cache ${tmp}: ${errorMessage(e)}`,
          );
        }
      } finally {
        file.close();
      }
      return { sha256: hash.digest("hex"), size: received };
    } finally {
      clearTimeout(timer);
    }
  }

  /**
   * Fails with `image_unavailable` when `need` bytes exceed the usable free space of the
   * filesystem holding `dir`. When statfs fails the check is skipped with a warning (the
   * download cap and write errors still apply).
   */
  async #checkFreeSpace(opts: EnsureImageOptions, dir: string, need: number): Promise<void> {
    let space: FsSpace;
    try {
      space = await (this.#opts.filesystemSpace ?? filesystemSpace)(dir);
    } catch (e) {
      this.#opts.log?.warn("image: cannot determine free space; not checked", {
        dir,
        err: errorMessage(e),
      });
      return;
    }
    const usable = usableFreeBytes(space);
    if (need <= usable) return;
    const margin = freeSpaceMarginBytes(space.totalBytes);
    const pool = opts.poolName ?? pathBasename(opts.poolPath);
    throw new ApiError(
      "image_unavailable",
      `not enough free space in pool ${pool}: need ${formatBytes(need)} (${need} bytes), ` +
        `have ${formatBytes(usable)} (${usable} bytes free beyond a safety margin of ` +
        `${formatBytes(margin)})`,
      {
        pool,
        needed_bytes: need,
        usable_bytes: usable,
        available_bytes: space.availableBytes,
        margin_bytes: margin,
      },
    );
  }

  /**
   * The cached images of a pool: every `images/<name>` with a valid `<name>.sha256` sidecar
   * (hidden temp files are skipped). A missing directory yields `[]`.
   */
  static async list(poolPath: string): Promise<CachedImage[]> {
    const dir = join(poolPath, "images");
    const out: CachedImage[] = [];
    try {
      for await (const e of Deno.readDir(dir)) {
        if (!e.isFile || e.name.startsWith(".") || e.name.endsWith(SIDECAR_SUFFIX)) continue;
        const sha = await readSidecar(join(dir, e.name + SIDECAR_SUFFIX));
        const size = await fileSize(join(dir, e.name));
        if (sha !== null && size !== null) {
          out.push({ basename: e.name, sha256: sha, size_bytes: size });
        }
      }
    } catch {
      return out;
    }
    return out.sort((a, b) => a.basename.localeCompare(b.basename));
  }
}

/**
 * Size of the regular file at `path`, or null when it is missing or not a regular file. A
 * symlink is not followed (and yields null): a planted link must never become a VM's
 * backing file.
 */
async function fileSize(path: string): Promise<number | null> {
  try {
    const st = await Deno.lstat(path);
    return st.isFile ? st.size : null;
  } catch {
    return null;
  }
}
