/**
 * cloud-init readiness from the serial console (issue 8 "Reachability"): the agent reads what
 * each VM's QEMU appends to `<state>/vms/<id>/serial.log` (the serial chardev's `logfile=`,
 * agent/serial_log.ts) and turns cloud-init's console lines into the VM's `cloud_init`
 * condition (shared/api/vm_runtime.ts `CloudInitConditionSchema`), reported on the observed VM:
 *
 * - `pending` from each QEMU start ({@link CloudInitWatcher.boot}: only what the log gains
 *   after it counts, so an earlier boot's lines never decide the new one);
 * - `done` on cloud-init's final line, `Cloud-init v. <version> finished at <date>. …`;
 * - `error` on an error line — `Cloud-init v. … ERROR …`, or `… Failed to run module …`
 *   (cloud-init's wording for a config module that raised) — and it stays `error` when the
 *   final line follows (cloud-init always prints it).
 *
 * The condition of each VM's boot is persisted in `<state>/cloud-init.json` (with the log
 * offset the boot started at), so an agent restart resumes where it was. Lines are matched
 * after removing ANSI escapes and carriage returns; a line longer than
 * {@link MAX_LINE_BYTES} is cut there. Limits: a guest reboot inside one QEMU (`vm reboot`,
 * `reset`) keeps the condition of the first boot; output written between the last poll and a
 * trim of the log (at `qemu.serial_log_max_bytes`) is not seen.
 *
 * @module
 */
import type { CloudInitCondition, CloudInitStatus } from "../shared/api/vm_runtime.ts";
import type { Logger } from "../shared/log.ts";
import { errorMessage, writeFileAtomic } from "./fsutil.ts";

/** cloud-init's final console line. */
export const CLOUD_INIT_FINAL_RE = /Cloud-init v\. \S+ finished at /;
/** cloud-init's error lines on the console. */
export const CLOUD_INIT_ERROR_RES: readonly RegExp[] = [
  /Cloud-init v\. \S+.*\bERROR\b/,
  /\bFailed to run module\b/,
];
/** Longest line kept for matching, bytes (the rest of a longer line is dropped). */
export const MAX_LINE_BYTES = 4096;
/** Longest `detail` reported, characters. */
export const MAX_DETAIL_CHARS = 512;
/** How often the watcher reads the logs, ms. */
export const CLOUD_INIT_POLL_MS = 500;
/** Name of the agent-wide state file (in the agent's state directory). */
export const CLOUD_INIT_STATE_FILE = "cloud-init.json";

// deno-lint-ignore no-control-regex
const ANSI_RE = /\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-Z\\-_]/g;

/**
 * The status a console line decides, or null for any other line.
 *
 * @example
 * ```ts
 * lineVerdict("Cloud-init v. 24.1 finished at Mon, 01 Jan 2024 00:00:00 +0000."); // "done"
 * ```
 */
export function lineVerdict(line: string): Exclude<CloudInitStatus, "pending"> | null {
  if (CLOUD_INIT_ERROR_RES.some((re) => re.test(line))) return "error";
  if (CLOUD_INIT_FINAL_RE.test(line)) return "done";
  return null;
}

/**
 * Follows one boot's console output, in chunks split anywhere (mid-line, mid-UTF-8).
 */
export class CloudInitScanner {
  #condition: CloudInitCondition;
  #partial: Uint8Array[] = [];
  #partialBytes = 0;
  #decoder = new TextDecoder();

  constructor(initial: CloudInitCondition = { status: "pending", detail: null, at: null }) {
    this.#condition = { ...initial };
  }

  /** The condition so far. */
  get condition(): CloudInitCondition {
    return { ...this.#condition };
  }

  /**
   * Feeds console bytes; complete lines are matched, a trailing partial line is kept for the
   * next chunk.
   *
   * @param now when the bytes were read (the `at` of a decision)
   * @returns true when the condition changed
   */
  feed(bytes: Uint8Array, now: Date): boolean {
    let changed = false;
    let start = 0;
    for (;;) {
      const nl = bytes.indexOf(0x0a, start);
      if (nl < 0) break;
      changed = this.#line(this.#take(bytes.subarray(start, nl)), now) || changed;
      start = nl + 1;
    }
    this.#keep(bytes.subarray(start));
    return changed;
  }

  /** The pending partial line plus `tail`, decoded; the partial buffer is emptied. */
  #take(tail: Uint8Array): string {
    const parts = [
      ...this.#partial,
      tail.subarray(0, Math.max(0, MAX_LINE_BYTES - this.#partialBytes)),
    ];
    this.#partial = [];
    this.#partialBytes = 0;
    const buf = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
    let off = 0;
    for (const p of parts) {
      buf.set(p, off);
      off += p.length;
    }
    return this.#decoder.decode(buf);
  }

  #keep(rest: Uint8Array): void {
    const room = MAX_LINE_BYTES - this.#partialBytes;
    if (room <= 0 || rest.length === 0) return;
    const part = rest.slice(0, room);
    this.#partial.push(part);
    this.#partialBytes += part.length;
  }

  #line(raw: string, now: Date): boolean {
    const line = raw.replace(ANSI_RE, "").replaceAll("\r", "").trim();
    const verdict = lineVerdict(line);
    if (verdict === null) return false;
    const cur = this.#condition.status;
    // `error` is final for the boot; `done` only decides a pending boot.
    if (cur === "error" || (verdict === "done" && cur === "done")) return false;
    this.#condition = {
      status: verdict,
      detail: line.slice(0, MAX_DETAIL_CHARS),
      at: now.toISOString(),
    };
    return true;
  }
}

/** What the state file holds per VM. */
interface PersistedState {
  condition: CloudInitCondition;
  /** Size of `serial.log` when the boot started (where its output begins). */
  boot_offset: number;
}

/** One watched VM. */
interface Watched {
  serialLog: string;
  scanner: CloudInitScanner;
  /** How far the log has been read, bytes. */
  offset: number;
  bootOffset: number;
}

/** Dependencies of {@link CloudInitWatcher}. */
export interface CloudInitWatcherOptions {
  log: Logger;
  /**
   * The agent-wide state file, `<state>/cloud-init.json` ({@link CLOUD_INIT_STATE_FILE}): every
   * watched VM's condition and boot offset, by VM id.
   */
  stateFile: string;
  /** Called after VM `id`'s condition changed (the VM manager announces the VM). */
  onChange: (id: string) => void;
  /** The clock (tests inject one). */
  now?: () => Date;
}

/** Watches the serial logs of the agent's running VMs (see the module doc). */
export class CloudInitWatcher {
  #vms = new Map<string, Watched>();
  #o: CloudInitWatcherOptions;
  #polling: Promise<void> | null = null;
  /** The state file as read at the first resume (VMs not resumed yet). */
  #saved: Record<string, PersistedState> | null = null;
  #writes: Promise<void> = Promise.resolve();

  constructor(opts: CloudInitWatcherOptions) {
    this.#o = opts;
  }

  /** VM `id`'s condition (undefined: not watched since this agent started). */
  condition(id: string): CloudInitCondition | undefined {
    return this.#vms.get(id)?.scanner.condition;
  }

  /**
   * A boot of VM `id` starts (call right before QEMU is launched): its condition is `pending`
   * and only what `serialLog` gains from now on counts.
   */
  async boot(id: string, serialLog: string): Promise<void> {
    const offset = await sizeOf(serialLog);
    const w: Watched = { serialLog, scanner: new CloudInitScanner(), offset, bootOffset: offset };
    const changed = JSON.stringify(this.condition(id)) !== JSON.stringify(w.scanner.condition);
    this.#vms.set(id, w);
    await this.#persist();
    if (changed) this.#o.onChange(id);
  }

  /**
   * VM `id`'s QEMU was re-adopted after an agent restart: resumes its boot from the state file
   * (a pending boot is read again from where it began; a log trimmed since then from its
   * start). Without saved state (a VM from before this watcher), the whole log is read.
   * Synchronous (small reads), so the VM is never reported without its condition.
   */
  resume(id: string, serialLog: string): void {
    if (this.#vms.has(id)) return;
    this.#saved ??= this.#readSaved();
    const state = this.#saved[id] ?? null;
    let size = 0;
    try {
      size = Deno.statSync(serialLog).size;
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    }
    const bootOffset = state && state.boot_offset <= size ? state.boot_offset : 0;
    this.#vms.set(id, {
      serialLog,
      scanner: new CloudInitScanner(state?.condition),
      offset: state?.condition.status === "pending" || !state ? bootOffset : size,
      bootOffset,
    });
  }

  #readSaved(): Record<string, PersistedState> {
    try {
      const v = JSON.parse(Deno.readTextFileSync(this.#o.stateFile));
      return typeof v === "object" && v !== null ? v : {};
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) {
        this.#o.log.warn("cloud-init: unreadable state; reading whole logs", {
          err: errorMessage(e),
        });
      }
      return {};
    }
  }

  /** Stops watching VM `id` (deleted); its saved state goes too. */
  forget(id: string): void {
    const had = this.#vms.delete(id);
    if (had || (this.#saved && id in this.#saved)) {
      if (this.#saved) delete this.#saved[id];
      void this.#persist();
    }
  }

  /**
   * Reads what every pending VM's log gained since the last poll and updates the conditions
   * (one pass; never throws: an unreadable log is logged and retried next time).
   */
  poll(): Promise<void> {
    this.#polling ??= this.#pollAll().finally(() => (this.#polling = null));
    return this.#polling;
  }

  async #pollAll(): Promise<void> {
    let changed = false;
    for (const [id, w] of [...this.#vms]) {
      if (w.scanner.condition.status === "error") continue;
      try {
        if (await this.#read(w) && this.#vms.get(id) === w) {
          changed = true;
          const c = w.scanner.condition;
          this.#o.log.info(`cloud-init: ${c.status}`, { vm_id: id, detail: c.detail });
          this.#o.onChange(id);
        }
      } catch (e) {
        this.#o.log.warn("cloud-init: cannot read the serial log", {
          vm_id: id,
          err: errorMessage(e),
        });
      }
    }
    if (changed) await this.#persist();
  }

  /** Reads `w`'s new bytes into its scanner; true when the condition changed. */
  async #read(w: Watched): Promise<boolean> {
    let file: Deno.FsFile;
    try {
      file = await Deno.open(w.serialLog, { read: true });
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) return false;
      throw e;
    }
    try {
      const size = (await file.stat()).size;
      // Trimmed (agent/serial_log.ts keeps the newest half): continue at the new end.
      if (size < w.offset) w.offset = size;
      if (size === w.offset) return false;
      await file.seek(w.offset, Deno.SeekMode.Start);
      const buf = new Uint8Array(Math.min(size - w.offset, 1024 * 1024));
      let changed = false;
      while (w.offset < size) {
        const n = await file.read(buf.subarray(0, Math.min(buf.length, size - w.offset)));
        if (n === null) break;
        w.offset += n;
        changed = w.scanner.feed(buf.subarray(0, n), this.#now()) || changed;
      }
      return changed;
    } finally {
      file.close();
    }
  }

  /** Resolves once every state-file write begun so far is done (agent shutdown). */
  flush(): Promise<void> {
    return this.#writes;
  }

  /** Writes the state file (watched VMs, plus saved ones not resumed yet), in order. */
  #persist(): Promise<void> {
    this.#writes = this.#writes.then(async () => {
      const out: Record<string, PersistedState> = { ...(this.#saved ?? {}) };
      for (const [id, w] of this.#vms) {
        out[id] = { condition: w.scanner.condition, boot_offset: w.bootOffset };
      }
      try {
        await writeFileAtomic(this.#o.stateFile, JSON.stringify(out) + "\n", 0o640);
      } catch (e) {
        this.#o.log.warn("cloud-init: cannot write state", { err: errorMessage(e) });
      }
    });
    return this.#writes;
  }

  #now(): Date {
    return this.#o.now?.() ?? new Date();
  }

  /** Polls every `intervalMs` until stopped. */
  start(intervalMs = CLOUD_INIT_POLL_MS): { stop(): Promise<void> } {
    let stopped = false;
    const timer = setInterval(() => {
      if (!stopped) void this.poll();
    }, intervalMs);
    return {
      stop: async () => {
        stopped = true;
        clearInterval(timer);
        await this.#polling;
        await this.#writes;
      },
    };
  }
}

/** Size of `path`, 0 when it does not exist yet. */
async function sizeOf(path: string): Promise<number> {
  try {
    return (await Deno.stat(path)).size;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return 0;
    throw e;
  }
}
