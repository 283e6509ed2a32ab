/**
 * File helpers, one home for them: atomic writes (agent state files, the control plane's PKI
 * and join state), existence checks and reads of files that may be missing.
 *
 * @module
 */
import { basename, dirname, join } from "node:path";

/**
 * Writes `data` to `path` atomically: a hidden temp file in the same directory
 * (`.<name>.<random>.tmp`, created with `mode`, fsynced) renamed over `path`.
 *
 * @throws the underlying Deno error; the temp file is removed on failure
 */
export async function writeFileAtomic(
  path: string,
  data: string | Uint8Array,
  mode: number,
): Promise<void> {
  const tmp = join(dirname(path), `.${basename(path)}.${crypto.randomUUID().slice(0, 8)}.tmp`);
  const bytes = typeof data === "string" ? new TextEncoder().encode(data) : data;
  try {
    const file = await Deno.open(tmp, { write: true, createNew: true, mode });
    try {
      await writeAll(file, bytes);
      await file.sync();
    } finally {
      file.close();
    }
    // The creation mode is filtered by the umask; set it exactly.
    await Deno.chmod(tmp, mode);
    await Deno.rename(tmp, path);
  } catch (e) {
    await Deno.remove(tmp).catch(() => {});
    throw e;
  }
}

/** Writes all of `data` to `file` (`write` may accept fewer bytes than offered). */
export async function writeAll(file: Deno.FsFile, data: Uint8Array): Promise<void> {
  let off = 0;
  while (off < data.length) off += await file.write(data.subarray(off));
}

/** True when `path` exists (lstat: a dangling symlink exists). @throws other errors than NotFound */
export async function exists(path: string): Promise<boolean> {
  try {
    await Deno.lstat(path);
    return true;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return false;
    throw e;
  }
}

/** The text of `path`; null when it does not exist. @throws other errors than NotFound */
export async function readTextIfExists(path: string): Promise<string | null> {
  try {
    return await Deno.readTextFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return null;
    throw e;
  }
}
