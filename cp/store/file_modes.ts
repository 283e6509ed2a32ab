/**
 * The control plane's data directory is private to its user: the directory and every
 * directory in it 0700, every file 0600, set at start whatever existed before (the store holds
 * the cluster CA key and the JWT signing keys, so any local user who reads it could sign admin
 * tokens and node certificates). When a mode cannot be fixed (another owner, a read-only
 * mount) and the entry is group- or world-accessible, startup is refused with a message
 * naming the path — as ssh refuses a private key others can read. Symbolic links are not
 * followed (their targets are not the control plane's to change).
 *
 * The store file is created 0600 before the store opens it, so SQLite's `-wal` and `-shm`
 * files, which take the database file's mode, are 0600 too.
 *
 * @module
 */
import { join } from "node:path";

/** Mode of directories in the data dir. */
export const DIR_MODE = 0o700;
/** Mode of files in the data dir. */
export const FILE_MODE = 0o600;

/** The data dir (or something in it) is open to other users and cannot be fixed. */
export class DataDirPermissionError extends Error {
  /** The offending path. */
  readonly path: string;
  constructor(path: string, mode: number, cause: unknown) {
    super(
      `${path} is accessible by other users (mode ${mode.toString(8).padStart(4, "0")}) and ` +
        `its mode cannot be changed (${(cause as Error)?.message ?? cause}); otherix-api ` +
        `refuses to start: make it ${
          mode & 0o40000 ? "0700" : "0600"
        } and owned by the user running otherix-api`,
    );
    this.name = "DataDirPermissionError";
    this.path = path;
  }
}

/** File-system calls {@link secureDataDir} uses (tests inject failures). */
export interface ModeFs {
  lstat(path: string): Promise<Deno.FileInfo>;
  chmod(path: string, mode: number): Promise<void>;
  readDir(path: string): AsyncIterable<Deno.DirEntry>;
}

const denoFs: ModeFs = {
  lstat: (p) => Deno.lstat(p),
  chmod: (p, m) => Deno.chmod(p, m),
  readDir: (p) => Deno.readDir(p),
};

/** What {@link secureDataDir} changed. */
export interface SecureReport {
  /** Paths whose mode was changed, with the mode they had (octal string). */
  fixed: { path: string; from: string }[];
}

/**
 * Creates `dir` (0700) when missing and brings it and everything under it to 0700 (dirs) /
 * 0600 (files); creates `storeFile` (a path inside `dir`) empty with 0600 when it is absent.
 *
 * @throws DataDirPermissionError when an entry open to group or others cannot be fixed
 */
export async function secureDataDir(
  dir: string,
  storeFile?: string,
  fs: ModeFs = denoFs,
): Promise<SecureReport> {
  await Deno.mkdir(dir, { recursive: true, mode: DIR_MODE });
  if (storeFile) {
    try {
      await Deno.writeFile(storeFile, new Uint8Array(), { createNew: true, mode: FILE_MODE });
    } catch (e) {
      if (!(e instanceof Deno.errors.AlreadyExists)) throw e;
    }
  }
  const report: SecureReport = { fixed: [] };
  await fix(dir, true, fs, report);
  return report;
}

async function fix(path: string, isDir: boolean, fs: ModeFs, report: SecureReport) {
  const info = await fs.lstat(path);
  if (info.isSymlink) return;
  const want = isDir ? DIR_MODE : FILE_MODE;
  const mode = (info.mode ?? 0) & 0o7777;
  if (mode !== want) {
    try {
      await fs.chmod(path, want);
      report.fixed.push({ path, from: mode.toString(8).padStart(4, "0") });
    } catch (e) {
      // A stricter mode than wanted (e.g. 0400) is fine; anything open to others is not.
      if (mode & 0o077) throw new DataDirPermissionError(path, mode | (isDir ? 0o40000 : 0), e);
    }
  }
  if (!isDir) return;
  for await (const e of fs.readDir(path)) {
    if (e.isSymlink) continue;
    await fix(join(path, e.name), e.isDirectory, fs, report);
  }
}
