/**
 * Bounded serial console logs.
 *
 * QEMU writes each VM's serial console to `<state>/vms/<id>/serial.log` (the `logfile=` of
 * the serial chardev, see {@link ./qemu.ts}). The chardev also sets `logappend=on`, so QEMU
 * opens the log with `O_APPEND`: every write lands at the current end of the file, also after
 * the agent has truncated it (without `O_APPEND` QEMU would keep writing at its old offset,
 * leaving a sparse file that starts with a hole of NUL bytes as large as the old log).
 *
 * The agent caps the log (config `qemu.serial_log_max_bytes`) with copytruncate semantics:
 * when the file exceeds the cap, {@link trimSerialLog} reads its newest half into memory,
 * truncates the file to zero and writes that half back at offset 0. QEMU keeps its file
 * descriptor throughout. Limits:
 *
 * - Console output QEMU writes between the agent's last read and the write-back (normally a
 *   few microseconds) is lost: it lands at offset 0 of the truncated file and is overwritten.
 * - Readers (the `console-log` endpoint) racing a trim may briefly see an empty or partial
 *   file.
 * - The cap is checked periodically, so between two checks the file can exceed it by what
 *   the guest writes in one check interval.
 *
 * @module
 */
import { writeAll } from "./fsutil.ts";

/** Smallest accepted `qemu.serial_log_max_bytes` (64 KiB). */
export const MIN_SERIAL_LOG_MAX_BYTES = 64 * 1024;
/** Default `qemu.serial_log_max_bytes` (8 MiB). */
export const DEFAULT_SERIAL_LOG_MAX_BYTES = 8 * 1024 * 1024;
/** Largest accepted `qemu.serial_log_max_bytes` (1 GiB; a trim holds half of it in memory). */
export const MAX_SERIAL_LOG_MAX_BYTES = 1024 * 1024 * 1024;
/** How often the agent checks the serial logs of its VMs, ms. */
export const SERIAL_LOG_CHECK_INTERVAL_MS = 2000;
/** The kept part starts after the first newline found within this many bytes. */
const LINE_ALIGN_BYTES = 4096;

/** What {@link trimSerialLog} did. */
export interface SerialLogTrim {
  /** Size of the log when it was trimmed (including bytes appended during the read), bytes. */
  beforeBytes: number;
  /** Size written back, bytes (at most half of the cap). */
  afterBytes: number;
}

/**
 * Caps the log at `path`: when it is larger than `maxBytes` bytes, keeps only its newest
 * `floor(maxBytes / 2)` bytes (read the tail, truncate to zero, write the tail back at offset
 * 0). When a newline occurs within the first 4 KiB of the kept part, the part starts after
 * it, so the trimmed log begins with a whole line. The file keeps its inode, so a writer that
 * opened it with `O_APPEND` (QEMU with `logappend=on`) continues at the new end; bytes that
 * writer appends between the final read and the write-back are lost.
 *
 * @param maxBytes the cap, bytes (> 0)
 * @returns what was trimmed, or null when the file is missing, not a regular file (a symlink
 *   is not followed), or within the cap
 * @throws the underlying Deno error on any other I/O failure (callers log it)
 */
export async function trimSerialLog(path: string, maxBytes: number): Promise<SerialLogTrim | null> {
  let st: Deno.FileInfo;
  try {
    st = await Deno.lstat(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return null;
    throw e;
  }
  if (!st.isFile || st.size <= maxBytes) return null;
  let file: Deno.FsFile;
  try {
    file = await Deno.open(path, { read: true, write: true });
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return null;
    throw e;
  }
  try {
    const size = (await file.stat()).size;
    if (size <= maxBytes) return null;
    const keep = Math.floor(maxBytes / 2);
    // Read from the newest `keep` bytes to EOF: the writer may append meanwhile, and those
    // bytes are newer still. Bounded, so a fast writer cannot keep the loop going.
    const buf = new Uint8Array(keep + Math.min(keep, 1024 * 1024));
    await file.seek(size - keep, Deno.SeekMode.Start);
    let len = 0;
    while (len < buf.length) {
      const n = await file.read(buf.subarray(len));
      if (n === null) break;
      len += n;
    }
    let tail = buf.subarray(Math.max(0, len - keep), len);
    const nl = tail.subarray(0, Math.min(LINE_ALIGN_BYTES, tail.length - 1)).indexOf(0x0a);
    if (nl >= 0) tail = tail.subarray(nl + 1);
    await file.truncate(0);
    await file.seek(0, Deno.SeekMode.Start);
    await writeAll(file, tail);
    return { beforeBytes: size - keep + len, afterBytes: tail.length };
  } finally {
    file.close();
  }
}
