/**
 * The agent-owned per-pool image cache (spec: storage pools "The agent-owned image cache";
 * troubleshooting `image_unavailable`, `checksum_mismatch`, `download_failed`).
 *
 * Layout (agent/image_entries.ts): `{poolPath}/images/{name}` plus two sidecars,
 * `{name}.sha256` (lowercase hex and a newline) and `{name}.source` (the URL it came from and
 * a newline). The URL's last path segment is the name of its first entry (the spec's
 * `{basename}`); hidden `.*.part` / `.*.tmp` files are transfers in progress.
 *
 * Identity: an entry is its content (the `.sha256` digest) from its source (the `.source`
 * URL, without fragment). A request reuses an entry only when the entry's source is the
 * request's URL and, when the request names `image_sha256`, the digests are equal; otherwise
 * it downloads. An entry without a `.source` (written before sources were recorded) or whose
 * image is not a regular file is never reused. Such a hit is IfNotPresent: not re-hashed;
 * without `image_sha256` the newest entry of the URL wins.
 *
 * Two images with one basename coexist (decision for issue 7's cross-user case): when the
 * name `{basename}` is taken by another source's entry, or by older content of the same
 * source, the new entry is `{stem}-{first 12 hex of its sha256}{ext}` (`img.qcow2` →
 * `img-7f3c1a9b0e2d.qcow2`; `-2`, `-3`, … if that is taken as well). So `http://a/img.qcow2`
 * and `http://b/img.qcow2` are two files, each VM's `image` (the entry name this cache
 * returns, stored by the control plane) names its own, and its qcow2 overlay refers to it
 * by path.
 *
 * Immutability: a published image file is never replaced, renamed over or rewritten (VM
 * overlays refer to their backing file by path; new content always gets a new name). It is
 * published by a no-clobber hard link after its sidecars are written, so a visible image
 * always has its sidecars.
 *
 * Single flight: requests for one (pool, URL, `image_sha256`) share one download
 * (agent/single_flight.ts): the first starts it, the others join and see its progress; one
 * that is cancelled leaves, and the download stops only when every request left. A different
 * `image_sha256` for the same URL is a separate flight (it may accept other bytes). Transfers
 * stream into a hidden temp file (agent/download.ts: network, hashing and disk pipelined,
 * fsynced) that is published only when complete and verified; publications into one pool are
 * serialized.
 *
 * Checksums: when the request names `image_sha256` and the downloaded bytes differ, the task
 * fails with `checksum_mismatch` and nothing is published.
 *
 * Size limits: a download whose `Content-Length` exceeds the pool filesystem's usable free
 * space ({@link usableFreeBytes}) fails with `image_unavailable` before anything is written;
 * one whose `Content-Length` or streamed body exceeds `images.max_download_bytes` fails with
 * `download_failed` (a server that omits or lies about the length cannot fill the disk).
 *
 * Fetch policy and credentials: with `urlPolicy` (agent config `images.url_policy`), every
 * connection goes only to an address the policy allows, judged after DNS resolution
 * (agent/policy_fetch.ts). Credentials in a URL are used for the download only: the `.source`
 * sidecar, log lines and error messages carry the URL with them redacted to `***`
 * (shared/url_redact.ts), so an entry's source identity ignores credentials.
 *
 * Entries are not removed by the agent (no garbage collection yet).
 *
 * @module
 */
import { statfs } from "node:fs/promises";
import { basename as pathBasename, join } from "node:path";
import { ApiError } from "../shared/errors.ts";
import { imageBasenameOf, imageUrlProblem } from "../shared/api/images.ts";
import type { CachedImage } from "../shared/api/nodes.ts";
import type { Logger } from "../shared/log.ts";
import type { UrlPolicy } from "../shared/url_policy.ts";
import { redactUrl } from "../shared/url_redact.ts";
import { downloadToFile } from "./download.ts";
import { policyFetch } from "./policy_fetch.ts";
import { errorMessage } from "./fsutil.ts";
import {
  type CacheEntry,
  downloadTempName,
  findEntries,
  listCachedImages,
  normalizeSource,
  publishEntry,
} from "./image_entries.ts";
import { KeyedMutex } from "./lock.ts";
import { SingleFlight } from "./single_flight.ts";
import { formatBytes } from "./units.ts";

export { formatBytes } from "./units.ts";
export { readSidecar } from "./image_entries.ts";

/** Default `images.max_download_bytes` (64 GiB). */
export const DEFAULT_MAX_DOWNLOAD_BYTES = 64 * 1024 ** 3;
/** Free space kept on a pool's filesystem: 1 GiB, or 5 % of it when that is smaller. */
export const FREE_SPACE_MARGIN_BYTES = 1024 ** 3;
/** The fraction of the filesystem size kept free when below {@link FREE_SPACE_MARGIN_BYTES}. */
export const FREE_SPACE_MARGIN_FRACTION = 0.05;

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
  /**
   * Progress callback: bytes received so far and the expected total (null if unknown).
   * Called after every chunk received (callers throttle); a request that joins a download
   * in progress gets the latest figures at once.
   */
  onProgress?: (received: number, total: number | null) => void;
  /**
   * Cancels the request (a `vm delete` during the create). A request sharing a download
   * with others leaves it at once; the download itself is aborted, and its temp file
   * removed, when the last request sharing it is cancelled (that call settles after the
   * cleanup). The call then rejects with the signal's reason when it is an {@link ApiError},
   * else with `task_cancelled`.
   */
  signal?: AbortSignal;
}

/** A cached image on disk. */
export interface EnsuredImage {
  /** Absolute path of the cached image (`<poolPath>/images/<basename>`). */
  path: string;
  /**
   * The entry's file name inside `images/`: the URL's basename, or a variant of it such as
   * `img-7f3c1a9b0e2d.qcow2` (see the module doc). The VM's `image`.
   */
  basename: string;
  /** Lowercase hex SHA-256 (from the sidecar). */
  sha256: string;
  /** The entry's source URL (normalized: no fragment). */
  source: string;
  /** Size of the cached file, bytes. */
  sizeBytes: number;
  /**
   * False for exactly one request per download: the one that started it. Requests that
   * found the entry cached, or joined another request's download, get true.
   */
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
  /** `fetch` to use (tests may inject one; it then bypasses `urlPolicy`). */
  fetch?: typeof fetch;
  /**
   * `images.url_policy`: connect only to addresses it allows, judged after DNS resolution on
   * every connection (agent/policy_fetch.ts). The agent always sets it (agent/main.ts);
   * unset (unit tests of the cache itself) fetches without a policy.
   */
  urlPolicy?: UrlPolicy;
  /**
   * Pipeline tuning of agent/download.ts (bytes; defaults there): reader-writer queue,
   * write size, background flush interval.
   */
  transfer?: { queueBytes?: number; writeChunkBytes?: number; flushEveryBytes?: number };
}

/** The error of a cancelled request: the signal's ApiError reason, else `task_cancelled`. */
function cancelled(signal: AbortSignal): ApiError {
  return signal.reason instanceof ApiError
    ? signal.reason
    : new ApiError("task_cancelled", `image request cancelled: ${errorMessage(signal.reason)}`);
}

/** Bytes received and the announced total (null when unknown). */
interface ByteProgress {
  received: number;
  total: number | null;
}

/** What one flight produced. */
interface FlightOutcome {
  entry: CacheEntry;
  /** True when the flight downloaded the entry (false: it was cached). */
  downloaded: boolean;
}

/** The per-pool image cache. */
export class ImageCache {
  #flights = new SingleFlight<FlightOutcome, ByteProgress>();
  #publish = new KeyedMutex();
  #opts: ImageCacheOptions;

  #fetch?: typeof fetch;

  constructor(opts: ImageCacheOptions) {
    this.#opts = opts;
    this.#fetch = opts.fetch ??
      (opts.urlPolicy ? policyFetch({ policy: opts.urlPolicy }) : undefined);
  }

  /**
   * Makes sure `opts.url` is cached in `opts.poolPath` (with `opts.sha256`, when given) and
   * returns its entry.
   *
   * @throws ApiError `task_cancelled` (or the `signal`'s ApiError reason) when `opts.signal`
   *   aborts; `validation_failed` (not an http(s) URL, bad basename),
   *   `download_failed` (HTTP non-2xx, network error, idle timeout, truncated body,
   *   `Content-Length` or body larger than `maxDownloadBytes`), `checksum_mismatch` (bytes
   *   differ from `opts.sha256`), `image_unavailable` (the cache directory or file cannot be
   *   written; `Content-Length` larger than the pool filesystem's usable free space, see
   *   {@link usableFreeBytes} — then nothing is written)
   */
  async ensure(opts: EnsureImageOptions): Promise<EnsuredImage> {
    // Also refuses file:, data: and blob: URLs (which `fetch` would read): only the network
    // is a source.
    const basename = imageBasename(opts.url);
    // The source identity, as stored and logged: credentials redacted.
    const source = normalizeSource(redactUrl(opts.url));
    const want = opts.sha256?.toLowerCase();
    const dir = join(opts.poolPath, "images");
    const key = `${dir}\n${source}\n${want ?? ""}`;
    try {
      const { value, leader } = await this.#flights.run(
        key,
        (ctx) => this.#flight(opts, { dir, basename, source, want }, ctx.signal, ctx.progress),
        {
          signal: opts.signal,
          onProgress: opts.onProgress && ((p) => opts.onProgress!(p.received, p.total)),
        },
      );
      const e = value.entry;
      return {
        path: e.path,
        basename: e.name,
        sha256: e.sha256,
        source,
        sizeBytes: e.sizeBytes,
        cacheHit: !(leader && value.downloaded),
      };
    } catch (e) {
      throw opts.signal?.aborted ? cancelled(opts.signal) : e;
    }
  }

  /** One flight: the cached entry, or a download verified and published. */
  async #flight(
    opts: EnsureImageOptions,
    id: { dir: string; basename: string; source: string; want: string | undefined },
    signal: AbortSignal,
    progress: (p: ByteProgress) => void,
  ): Promise<FlightOutcome> {
    const { dir, basename, source, want } = id;
    const cached = await findEntries(dir, source);
    const hit = want ? cached.find((e) => e.sha256 === want) : cached[0];
    if (hit) return { entry: hit, downloaded: false };
    try {
      await Deno.mkdir(dir, { recursive: true, mode: 0o750 });
    } catch (e) {
      throw new ApiError(
        "image_unavailable",
        `cannot create image cache ${dir}: ${errorMessage(e)}`,
      );
    }
    const tmp = join(dir, downloadTempName(basename));
    try {
      const t = this.#opts.transfer ?? {};
      const got = await downloadToFile({
        url: opts.url,
        dest: tmp,
        idleTimeoutMs: this.#opts.idleTimeoutMs,
        maxBytes: this.#opts.maxDownloadBytes ?? DEFAULT_MAX_DOWNLOAD_BYTES,
        signal,
        fetch: this.#fetch,
        checkLength: (n) => this.#checkFreeSpace(opts, dir, n),
        onProgress: (received, total) => progress({ received, total }),
        ...t,
      }).catch((e) => {
        // The task error says only that the connection failed; the node's log says why.
        const cause = (e as Error)?.cause;
        if (cause !== undefined) {
          this.#opts.log?.warn("image: download failed", {
            source,
            err: errorMessage(e),
            cause: redactUrl(errorMessage(cause)),
          });
        }
        throw e;
      });
      if (want && got.sha256 !== want) {
        const note = cached.length
          ? ` (cached sidecar has sha256 ${cached.map((e) => e.sha256).join(", ")})`
          : "";
        throw new ApiError(
          "checksum_mismatch",
          `image ${source}: SHA-256 is ${got.sha256}, expected ${want}${note}`,
          { expected: want, actual: got.sha256 },
        );
      }
      signal.throwIfAborted();
      const entry = await this.#publish.run(dir, async () => {
        try {
          return await publishEntry(dir, tmp, basename, source, got.sha256);
        } catch (e) {
          throw new ApiError(
            "image_unavailable",
            `cannot write image cache ${join(dir, basename)}: ${errorMessage(e)}`,
          );
        }
      });
      return { entry, downloaded: true };
    } finally {
      await Deno.remove(tmp).catch(() => {});
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
   * The cached images of a pool: every `images/<name>` that is a regular file with a valid
   * `<name>.sha256` sidecar (hidden temp files and sidecars are skipped), by name. A missing
   * directory yields `[]`.
   */
  static list(poolPath: string): Promise<CachedImage[]> {
    return listCachedImages(poolPath);
  }
}
