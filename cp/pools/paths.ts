/**
 * The allowed-path gate for pool paths (spec: storage pools, "The allowed-path gate"): a pool
 * path must be absolute, at most {@link MAX_POOL_PATH_BYTES} bytes, normalized (no `.`/`..`
 * segments, no `//`), and lie strictly under one of `storage_pools.allowed_path_prefixes`.
 * The prefix match is boundary-safe: `/var/lib/otherix/pools` does not admit
 * `/var/lib/otherix/pools-evil/x`.
 *
 * @module
 */
import { MAX_POOL_PATH_BYTES } from "../../shared/constants.ts";
import { ApiError } from "../../shared/errors.ts";

/** Result of {@link checkPoolPath}. */
export type PathCheck = { ok: true } | { ok: false; reason: string };

/** Drops trailing slashes (but keeps `/`). */
function trimSlash(p: string): string {
  const t = p.replace(/\/+$/, "");
  return t === "" ? "/" : t;
}

/** Checks `path` against the gate (see the module doc). */
export function checkPoolPath(path: string, allowedPrefixes: readonly string[]): PathCheck {
  if (!path.startsWith("/")) return { ok: false, reason: "must be an absolute path" };
  if (new TextEncoder().encode(path).length > MAX_POOL_PATH_BYTES) {
    return { ok: false, reason: `must be at most ${MAX_POOL_PATH_BYTES} bytes` };
  }
  if (path.includes("\0")) return { ok: false, reason: "must not contain NUL" };
  const p = trimSlash(path);
  if (p !== "/" && p.split("/").slice(1).some((s) => s === "" || s === "." || s === "..")) {
    return { ok: false, reason: "must be a normalized path (no '.', '..' or '//')" };
  }
  for (const raw of allowedPrefixes) {
    const prefix = trimSlash(raw);
    const under = prefix === "/" ? p !== "/" : p.startsWith(prefix + "/");
    if (under) return { ok: true };
  }
  return {
    ok: false,
    reason: `is not under any storage_pools.allowed_path_prefixes entry (${
      allowedPrefixes.join(", ")
    })`,
  };
}

/** `path` without trailing slashes (`/` stays `/`): the form pool records keep. */
export function normalizePoolPath(path: string): string {
  return trimSlash(path);
}

/**
 * True when the (normalized) paths `a` and `b` are equal or one lies inside the other,
 * on `/` boundaries: two pools of one node must not share a directory.
 */
export function pathsOverlap(a: string, b: string): boolean {
  const x = trimSlash(a), y = trimSlash(b);
  return x === y || x.startsWith(y === "/" ? "/" : y + "/") ||
    y.startsWith(x === "/" ? "/" : x + "/");
}

/**
 * Throws `path_not_allowed` unless `path` passes the gate (see the module doc).
 *
 * @throws ApiError 400 `path_not_allowed` (details `{path, reason, allowed_path_prefixes}`)
 */
export function assertPoolPathAllowed(path: string, allowedPrefixes: readonly string[]): void {
  const check = checkPoolPath(path, allowedPrefixes);
  if (check.ok) return;
  throw new ApiError("path_not_allowed", `pool path ${JSON.stringify(path)} ${check.reason}`, {
    path,
    reason: check.reason,
    allowed_path_prefixes: [...allowedPrefixes],
  });
}

/** `<dir>/<name>` without doubled slashes. */
export function joinPoolPath(dir: string, name: string): string {
  return `${trimSlash(dir) === "/" ? "" : trimSlash(dir)}/${name}`;
}
