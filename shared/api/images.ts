/**
 * The one rule for image URLs, shared by the control plane's request schema and the agent's
 * image cache (so what the agent would refuse, the control plane refuses first).
 *
 * An image URL is an `http:` or `https:` URL of at most 2048 characters whose last path
 * segment (the cache basename, kept percent-encoded so it never contains `/`) names a file
 * the cache may use: not empty, `.` or `..`; not hidden (`.x`, reserved for temp files); not
 * ending in `.sha256` (reserved for checksum sidecars); no NUL; at most
 * {@link MAX_IMAGE_BASENAME_BYTES} bytes so the sidecar name still fits in 255 bytes.
 *
 * @module
 */

/** Suffix of the image cache's checksum sidecars (`<basename>.sha256`). */
export const SIDECAR_SUFFIX = ".sha256";
/** Longest image basename, bytes: the sidecar name must fit in 255 bytes too. */
export const MAX_IMAGE_BASENAME_BYTES = 255 - SIDECAR_SUFFIX.length;
/** Longest image URL, characters. */
export const MAX_IMAGE_URL_LENGTH = 2048;

/** Why `url` is not an acceptable image URL, or null when it is. */
export function imageUrlProblem(url: string): string | null {
  if (url.length > MAX_IMAGE_URL_LENGTH) {
    return `must be at most ${MAX_IMAGE_URL_LENGTH} characters`;
  }
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    return "must be an http(s) URL";
  }
  if (parsed.protocol !== "http:" && parsed.protocol !== "https:") return "must be an http(s) URL";
  return basenameProblem(parsed.pathname.split("/").pop() ?? "");
}

/** Why `base` cannot be an image cache basename, or null when it can. */
export function basenameProblem(base: string): string | null {
  if (base === "" || base === "." || base === "..") {
    return "must name a file (the path must not end in '/')";
  }
  if (base.startsWith(".")) return "file name must not start with '.'";
  if (base.includes("/") || base.includes("\0")) return "file name must not contain '/' or NUL";
  if (base.endsWith(SIDECAR_SUFFIX)) return `file name must not end in '${SIDECAR_SUFFIX}'`;
  if (new TextEncoder().encode(base).length > MAX_IMAGE_BASENAME_BYTES) {
    return `file name must be at most ${MAX_IMAGE_BASENAME_BYTES} bytes`;
  }
  return null;
}

/**
 * The cache basename of an image URL: its last path segment as written (not decoded).
 *
 * @example
 * ```ts
 * imageBasenameOf("https://h/a/noble.img?x=1"); // "noble.img"
 * ```
 * @throws TypeError when `url` is not a URL (check {@link imageUrlProblem} first)
 */
export function imageBasenameOf(url: string): string {
  return new URL(url).pathname.split("/").pop() ?? "";
}
