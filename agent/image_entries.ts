/**
 * The on-disk layout of a pool's image cache (`{poolPath}/images/`): entries, their names,
 * lookup and publication. agent/images.ts describes the rules; this module keeps them.
 *
 * An entry is three files that share a name `N`:
 *
 * | file | content |
 * | --- | --- |
 * | `N` | the image bytes (a regular file; never a symlink) |
 * | `N.sha256` | its SHA-256, lowercase hex and a newline (the content identity) |
 * | `N.source` | the URL it was downloaded from ({@link normalizeSource}) and a newline |
 *
 * Publication writes both sidecars (each atomically) and then hard-links the finished temp
 * file to `N`, which fails if `N` exists: an image file, once visible, always has its
 * sidecars beside it, and no path that a VM disk may refer to is ever replaced or rewritten.
 * Sidecars without an image (a crash before the link) describe nothing and are overwritten
 * by the next publication under that name.
 *
 * Names: the first entry for a URL basename `B` is called `B` (the spec's
 * `{poolPath}/images/{basename}`); another entry whose name would be `B` (another source,
 * or new content from the same source) is called `<stem>-<first 12 hex of its sha256><ext>`
 * (`img.qcow2` → `img-7f3c1a9b0e2d.qcow2`), or `<stem>-<12 hex>-<n><ext>` (n = 2, 3, …) if
 * that is taken too, stems shortened so that every name and sidecar name fits in 255 bytes.
 * A name is taken when anything has it, or when one of its sidecar paths is an image (a URL
 * may end in `x.source`, which is also the source sidecar path of an image `x`).
 *
 * @module
 */
import { join } from "node:path";
import { MAX_IMAGE_BASENAME_BYTES, SIDECAR_SUFFIX } from "../shared/api/images.ts";
import type { CachedImage } from "../shared/api/nodes.ts";
import { writeAll } from "./fsutil.ts";

/** Suffix of the source sidecar (`<name>.source`): the URL an entry was downloaded from. */
export const SOURCE_SUFFIX = ".source";
/** Hex digits of the content digest in a variant name (`img-<12 hex>.qcow2`). */
export const VARIANT_DIGEST_CHARS = 12;
/** Numbered variants tried after `<stem>-<digest><ext>` (…-2 … -N) before giving up. */
export const MAX_VARIANTS = 99;

const HEX64 = /^[0-9a-f]{64}$/;

/** A published cache entry. */
export interface CacheEntry {
  /** File name inside `images/` (what the VM's `image` is and its overlay refers to). */
  name: string;
  /** Absolute path of the image file. */
  path: string;
  /** Lowercase hex SHA-256 (from `<name>.sha256`). */
  sha256: string;
  /** The source URL (from `<name>.source`); null for an entry written before sources. */
  source: string | null;
  /** Size of the image file, bytes. */
  sizeBytes: number;
  /** Modification time of the image file, ms since the epoch (when it was downloaded). */
  mtimeMs: number;
}

/**
 * The source identity of an image URL: the parsed URL without its fragment (never sent to
 * the server), so `HTTP://H/a.img#x` and `http://h/a.img` are one source; the query counts.
 *
 * @throws TypeError when `url` does not parse (validate it first)
 */
export function normalizeSource(url: string): string {
  const u = new URL(url);
  u.hash = "";
  return u.href;
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

/** Reads `<path>.source` (first line), or null when it is missing or empty. */
async function readSource(path: string): Promise<string | null> {
  try {
    const line = (await Deno.readTextFile(path + SOURCE_SUFFIX)).split("\n")[0].trim();
    return line || null;
  } catch {
    return null;
  }
}

/**
 * The entry named `name` in `dir`, or null when there is none: the image must be a regular
 * file (lstat: a symlink is never an entry, so a planted link never backs a VM disk) with a
 * valid `.sha256` sidecar.
 */
export async function readEntry(dir: string, name: string): Promise<CacheEntry | null> {
  const path = join(dir, name);
  let st: Deno.FileInfo;
  try {
    st = await Deno.lstat(path);
  } catch {
    return null;
  }
  if (!st.isFile) return null;
  const sha256 = await readSidecar(path + SIDECAR_SUFFIX);
  if (sha256 === null) return null;
  return {
    name,
    path,
    sha256,
    source: await readSource(path),
    sizeBytes: st.size,
    mtimeMs: st.mtime?.getTime() ?? 0,
  };
}

/**
 * The names in `dir` that can be entries: not hidden, not `.sha256` sidecars (no image name
 * ends so: shared/api/images.ts). A name ending in `.source` may be an image as well as a
 * sidecar (`http://h/x.source`): {@link readEntry} tells, by its own `.sha256`.
 */
async function candidateNames(dir: string): Promise<string[]> {
  const names: string[] = [];
  try {
    for await (const e of Deno.readDir(dir)) {
      if (!e.isFile || e.name.startsWith(".") || e.name.endsWith(SIDECAR_SUFFIX)) continue;
      names.push(e.name);
    }
  } catch {
    return [];
  }
  return names.sort();
}

/** Every entry in `dir`, by name; [] when the directory is missing. */
export async function listEntries(dir: string): Promise<CacheEntry[]> {
  const out: CacheEntry[] = [];
  for (const name of await candidateNames(dir)) {
    const e = await readEntry(dir, name);
    if (e) out.push(e);
  }
  return out;
}

/**
 * The entries of `dir` downloaded from `source` (normalized), newest first; with `sha256`,
 * only those with that digest.
 */
export async function findEntries(
  dir: string,
  source: string,
  sha256?: string,
): Promise<CacheEntry[]> {
  const found = (await listEntries(dir)).filter((e) =>
    e.source === source && (sha256 === undefined || e.sha256 === sha256)
  );
  return found.sort((a, b) => b.mtimeMs - a.mtimeMs || a.name.localeCompare(b.name));
}

/** The cached images of a pool for heartbeats (every entry, with or without a source). */
export async function listCachedImages(poolPath: string): Promise<CachedImage[]> {
  return (await listEntries(join(poolPath, "images"))).map((e) => ({
    basename: e.name,
    sha256: e.sha256,
    size_bytes: e.sizeBytes,
  }));
}

/** UTF-8 byte length. */
function byteLength(s: string): number {
  return new TextEncoder().encode(s).length;
}

/** Shortens `s` to at most `max` UTF-8 bytes without splitting a character. */
function truncateBytes(s: string, max: number): string {
  let out = "";
  let n = 0;
  for (const ch of s) {
    const b = byteLength(ch);
    if (n + b > max) break;
    out += ch;
    n += b;
  }
  return out;
}

/**
 * A fresh hidden temp file name for a download of `basename` into the cache:
 * `.<basename, cut to 200 bytes>.<8 hex>.part` (at most 215 bytes). Hidden names are never
 * entries; the agent removes `.*.part` / `.*.tmp` leftovers at startup (agent/pools.ts).
 */
export function downloadTempName(basename: string): string {
  return `.${truncateBytes(basename, 200)}.${crypto.randomUUID().slice(0, 8)}.part`;
}

/**
 * The variant name of `basename` for content `sha256`: `<stem>-<12 hex>[-<n>]<ext>`, where
 * `<ext>` is the last `.xyz` of the basename (none for `disk` or `.hidden`); the stem is
 * shortened so the name stays within `MAX_IMAGE_BASENAME_BYTES` (248) bytes.
 *
 * @example
 * ```ts
 * variantName("img.qcow2", "7f3c1a9b0e2d" + "0".repeat(52)); // "img-7f3c1a9b0e2d.qcow2"
 * variantName("img.qcow2", "7f3c1a9b0e2d" + "0".repeat(52), 2); // "img-7f3c1a9b0e2d-2.qcow2"
 * ```
 */
export function variantName(basename: string, sha256: string, n = 1): string {
  const dot = basename.lastIndexOf(".");
  const ext = dot > 0 && basename.length - dot <= 16 ? basename.slice(dot) : "";
  const stem = ext ? basename.slice(0, dot) : basename;
  const tag = `-${sha256.slice(0, VARIANT_DIGEST_CHARS)}${n > 1 ? `-${n}` : ""}`;
  const room = MAX_IMAGE_BASENAME_BYTES - byteLength(tag) - byteLength(ext);
  return truncateBytes(stem, room) + tag + ext;
}

/** The names an entry for (`basename`, `sha256`) may take, in order of preference. */
export function* entryNames(basename: string, sha256: string): Generator<string> {
  yield basename;
  for (let n = 1; n <= MAX_VARIANTS; n++) yield variantName(basename, sha256, n);
}

/**
 * True when an entry may be published as `name`: nothing is called `name`, and its sidecar
 * paths are not images themselves (an image may be called `x.source`: writing the sidecar
 * of `x` would replace it).
 */
async function nameFree(dir: string, name: string): Promise<boolean> {
  if (!await absent(join(dir, name))) return false;
  for (const suffix of [SIDECAR_SUFFIX, SOURCE_SUFFIX]) {
    if (await readEntry(dir, name + suffix)) return false;
  }
  return true;
}

/** True when nothing (file, link, directory) is called `path`. */
async function absent(path: string): Promise<boolean> {
  try {
    await Deno.lstat(path);
    return false;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return true;
    throw e;
  }
}

/**
 * Publishes the finished download `tmp` (in `dir`) as the entry for (`source`, `sha256`):
 * the first free name of {@link entryNames}, sidecars first, then a no-clobber hard link, then
 * `tmp` is removed and the directory fsynced. When that entry already exists (a concurrent
 * download of the same source published it first) it is returned and `tmp` is removed.
 * Callers serialize publications per directory (agent/images.ts): the checks that a name and
 * its sidecar paths are free hold until the link; the no-clobber link is a last guard for
 * the image bytes.
 *
 * @throws Error (the underlying Deno error) when a file cannot be written or linked; Error
 *   when every name is taken
 */
export async function publishEntry(
  dir: string,
  tmp: string,
  basename: string,
  source: string,
  sha256: string,
): Promise<CacheEntry> {
  const existing = (await findEntries(dir, source, sha256))[0];
  if (existing) {
    await Deno.remove(tmp).catch(() => {});
    return existing;
  }
  for (const name of entryNames(basename, sha256)) {
    const path = join(dir, name);
    if (!await nameFree(dir, name)) continue;
    await writeSidecar(dir, path + SIDECAR_SUFFIX, sha256 + "\n");
    await writeSidecar(dir, path + SOURCE_SUFFIX, source + "\n");
    try {
      await Deno.link(tmp, path); // publication: fails rather than replace anything
    } catch (e) {
      if (e instanceof Deno.errors.AlreadyExists) continue;
      throw e;
    }
    await Deno.remove(tmp);
    await syncDir(dir);
    const entry = await readEntry(dir, name);
    if (!entry) throw new Error(`image cache entry ${path} vanished after publication`);
    return entry;
  }
  throw new Error(`image cache ${dir}: no free name for ${basename} (sha256 ${sha256})`);
}

/**
 * Writes a sidecar atomically: a short hidden temp file (`.sc-<random>.tmp`, so a 255-byte
 * sidecar name still leaves room; removed at startup like other leftovers), fsynced, mode
 * 0644, renamed over `path`.
 */
async function writeSidecar(dir: string, path: string, text: string): Promise<void> {
  const tmp = join(dir, `.sc-${crypto.randomUUID()}.tmp`);
  try {
    const f = await Deno.open(tmp, { write: true, createNew: true, mode: 0o644 });
    try {
      await writeAll(f, new TextEncoder().encode(text));
      await f.sync();
    } finally {
      f.close();
    }
    await Deno.chmod(tmp, 0o644); // the creation mode is filtered by the umask
    await Deno.rename(tmp, path);
  } catch (e) {
    await Deno.remove(tmp).catch(() => {});
    throw e;
  }
}

/** fsyncs directory `dir` (so a rename or link in it survives a crash). */
async function syncDir(dir: string): Promise<void> {
  const d = await Deno.open(dir, { read: true });
  try {
    await d.sync();
  } finally {
    d.close();
  }
}
