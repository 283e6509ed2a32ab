/**
 * Small filesystem helpers: atomic writes and tolerant removal.
 *
 * @module
 */
import { normalize } from "node:path";

export { exists, writeAll, writeFileAtomic } from "../shared/fs.ts";

/** Removes `path` recursively; a missing path is not an error. */
export async function removeAll(path: string): Promise<void> {
  try {
    await Deno.remove(path, { recursive: true });
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
}

/**
 * True when `child` lies strictly inside `parent` (or is `parent` with `allowEqual`),
 * comparing normalized absolute paths (`..` resolved) on `/` boundaries: `/a/pools` does not
 * contain `/a/pools-evil`, nor `/a/pools/../x`. Both must be absolute.
 */
export function isWithin(parent: string, child: string, allowEqual = false): boolean {
  const norm = (p: string) => normalize(p).replace(/\/+$/, "") || "/";
  const p = norm(parent);
  const c = norm(child);
  if (c === p) return allowEqual;
  return c.startsWith(p === "/" ? "/" : p + "/");
}

/** The message of an unknown thrown value. */
export function errorMessage(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

/**
 * Creates `path` (inside `root`, which must exist) one component at a time with `mode`,
 * refusing to pass through symlinks or non-directories, so a planted symlink can never make
 * the agent create or use directories outside `root`.
 *
 * @throws Error naming the offending component
 */
export async function mkdirBeneath(root: string, path: string, mode: number): Promise<void> {
  if (!isWithin(root, path)) throw new Error(`${path} is not inside ${root}`);
  const rel = normalize(path).slice(normalize(root).replace(/\/+$/, "").length + 1);
  let cur = normalize(root).replace(/\/+$/, "");
  for (const part of rel.split("/").filter(Boolean)) {
    cur = `${cur}/${part}`;
    let st: Deno.FileInfo | null = null;
    try {
      st = await Deno.lstat(cur);
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    }
    if (st === null) {
      try {
        await Deno.mkdir(cur, { mode });
      } catch (e) {
        if (!(e instanceof Deno.errors.AlreadyExists)) throw e;
      }
      st = await Deno.lstat(cur);
    }
    if (st.isSymlink) throw new Error(`${cur} is a symlink`);
    if (!st.isDirectory) throw new Error(`${cur} is not a directory`);
  }
}
