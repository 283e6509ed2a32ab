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
    reason: `not under any storage_pools.allowed_path_prefixes entry (${
      allowedPrefixes.join(", ")
    })`,
  };
}

/** `<dir>/<name>` without doubled slashes. */
export function joinPoolPath(dir: string, name: string): string {
  return `${trimSlash(dir) === "/" ? "" : trimSlash(dir)}/${name}`;
}
