/**
 * How `--wait` shows a task's progress on stderr (cli/wait.ts feeds it every task state it
 * receives and every keep-alive).
 *
 * On a terminal ({@link TtyProgress}):
 * - a `.` per state or keep-alive, as before;
 * - while the task reports byte figures (`progress_bytes`, an image download), a progress
 *   bar drawn by `cli-progress` in place on one line:
 *   `downloading image [████████░░░░…] 42% | 126.0 MiB of 300.0 MiB | ETA: 5s`
 *   (`downloading image: 12.5 MiB received` while the total is unknown); it is finished on
 *   its own line when the step ends, at 100 % when the task went on to its next step.
 *
 * Otherwise ({@link PlainProgress}, logs and pipes):
 * - a line per change of status or progress text, as before:
 *   `task=<id> status=running: creating disk`;
 * - during a byte-counting step, its label once (`task=<id> status=running: downloading
 *   image`), then at most one line per 10 % of the total:
 *   `downloading image: 12.5 MiB of 300.0 MiB (4%)` — with an unknown total, one line each
 *   time the received bytes double: `downloading image: 12.5 MiB received`; when the task
 *   goes on to its next step, the 100 % line if it was not printed yet.
 *
 * The figures arrive throttled (about 4 a second, and each 5 %), so the bar moves in steps.
 *
 * @module
 */
// @ts-types="@types/cli-progress"
import cliProgress from "cli-progress";
import { isTerminal, type ProgressBytes, type Task } from "../shared/api/tasks.ts";
import type { Io } from "./io.ts";

/** Receives what `--wait` sees of a task. */
export interface ProgressRenderer {
  /** The status of the last state received (for timeout messages). */
  readonly lastStatus: string | undefined;
  /** A task state arrived. */
  task(task: Task): void;
  /** Something else arrived (a keep-alive). */
  tick(): void;
  /** The wait is over (success, failure or error): finish the output's last line. */
  end(): void;
}

/** The renderer for `io`: {@link TtyProgress} when stderr is a terminal, else plain lines. */
export function progressRenderer(io: Io): ProgressRenderer {
  return io.stderrIsTerminal() ? new TtyProgress(io) : new PlainProgress(io);
}

/** `13107200` → `12.5 MiB`: binary units, one decimal; below 1 KiB `N B`. */
export function formatSize(n: number): string {
  const units = ["KiB", "MiB", "GiB", "TiB", "PiB"];
  if (n < 1024) return `${n} B`;
  let v = n / 1024;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v.toFixed(1)} ${units[i]}`;
}

/**
 * The label of a byte-counting step: its progress text without a trailing parenthesis
 * (`downloading image (12.5 MiB of 300.0 MiB)` → `downloading image`).
 */
export function stepLabel(progress: string | null): string {
  return (progress ?? "").replace(/\s*\([^()]*\)\s*$/, "").trim() || "downloading";
}

/** Whole percent of `p` done (0–100), or null when the total is unknown. */
export function percentDone(p: ProgressBytes): number | null {
  if (p.total_bytes === null) return null;
  if (p.total_bytes === 0) return 100;
  return Math.min(100, Math.floor((p.done_bytes * 100) / p.total_bytes));
}

/**
 * The plain line of byte progress: `downloading image: 12.5 MiB of 300.0 MiB (4%)`, or
 * `downloading image: 12.5 MiB received` with an unknown total.
 */
export function bytesLine(label: string, p: ProgressBytes): string {
  const pct = percentDone(p);
  return pct === null
    ? `${label}: ${formatSize(p.done_bytes)} received`
    : `${label}: ${formatSize(p.done_bytes)} of ${formatSize(p.total_bytes!)} (${pct}%)`;
}

/** Plain lines (see the module doc). */
export class PlainProgress implements ProgressRenderer {
  lastStatus: string | undefined;
  #io: Io;
  #lastLine = "";
  /** The byte-counting step being shown: its label, total and last line's bucket. */
  #step: { label: string; total: number | null; bucket: number } | null = null;

  constructor(io: Io) {
    this.#io = io;
  }

  task(task: Task): void {
    this.lastStatus = task.status;
    const bytes = isTerminal(task.status) ? null : task.progress_bytes;
    const label = bytes ? stepLabel(task.progress) : null;
    const shown = label ?? (task.progress && !isTerminal(task.status) ? task.progress : null);
    const line = `task=${task.id} status=${task.status}` + (shown ? `: ${shown}` : "");
    if (line !== this.#lastLine) this.#io.err(line + "\n");
    this.#lastLine = line;
    if (!bytes || !label) {
      const step = this.#step;
      this.#step = null;
      // The task moved past the download (or succeeded): it completed.
      if (step && step.total !== null && step.bucket < 10 && task.status !== "failed") {
        this.#io.err(
          bytesLine(step.label, { done_bytes: step.total, total_bytes: step.total }) + "\n",
        );
      }
      return;
    }
    const bucket = bucketOf(bytes);
    if (this.#step?.label === label && bucket <= this.#step.bucket) return;
    this.#step = { label, total: bytes.total_bytes, bucket };
    this.#io.err(bytesLine(label, bytes) + "\n");
  }

  tick(): void {}

  end(): void {}
}

/** 10 % buckets of a known total (0–10); with an unknown total, ⌊log2(MiB received)⌋ + 1. */
function bucketOf(p: ProgressBytes): number {
  const pct = percentDone(p);
  if (pct !== null) return Math.floor(pct / 10);
  const mib = p.done_bytes / (1024 * 1024);
  return mib < 1 ? 0 : Math.floor(Math.log2(mib)) + 1;
}

/** Options of {@link TtyProgress}. */
export interface TtyProgressOptions {
  /** Terminal width, columns (default 80). */
  columns?: number;
  /** Redraws per second at most (default 10). */
  fps?: number;
}

const KNOWN_FORMAT = "{label} [{bar}] {percentage}% | {done} of {size} | ETA: {eta_formatted}";
const UNKNOWN_FORMAT = "{label}: {done} received";

/** Dots and a `cli-progress` bar (see the module doc). */
export class TtyProgress implements ProgressRenderer {
  lastStatus: string | undefined;
  #io: Io;
  #opts: TtyProgressOptions;
  #dotsOpen = false;
  #bar: { bar: cliProgress.SingleBar; label: string; total: number | null } | null = null;

  constructor(io: Io, opts: TtyProgressOptions = {}) {
    this.#io = io;
    this.#opts = opts;
  }

  task(task: Task): void {
    this.lastStatus = task.status;
    const bytes = isTerminal(task.status) ? null : task.progress_bytes;
    if (!bytes) {
      // The task moved past the download (or succeeded): show it completed.
      this.#stopBar(task.status !== "failed");
      return this.tick();
    }
    const label = stepLabel(task.progress);
    if (this.#bar && (this.#bar.label !== label || this.#bar.total !== bytes.total_bytes)) {
      this.#stopBar();
    }
    const payload = {
      label,
      done: formatSize(bytes.done_bytes),
      size: bytes.total_bytes === null ? "?" : formatSize(bytes.total_bytes),
    };
    if (!this.#bar) {
      if (this.#dotsOpen) this.#io.err("\n");
      this.#dotsOpen = false;
      const bar = this.#newBar(bytes.total_bytes !== null);
      bar.start(bytes.total_bytes ?? 0, bytes.done_bytes, payload);
      this.#bar = { bar, label, total: bytes.total_bytes };
    } else {
      this.#bar.bar.update(bytes.done_bytes, payload);
      // Figures arrive throttled (a few a second): draw each at once rather than on the
      // bar's next timer tick (cli-progress skips synchronous redraws within 2 frames).
      this.#bar.bar.render();
    }
  }

  tick(): void {
    if (this.#bar) return; // the bar redraws itself
    this.#io.err(".");
    this.#dotsOpen = true;
  }

  end(): void {
    this.#stopBar();
    if (this.#dotsOpen) this.#io.err("\n");
    this.#dotsOpen = false;
  }

  /** Stops the bar (a final redraw, then a newline); `completed`: at 100 % first. */
  #stopBar(completed = false): void {
    const b = this.#bar;
    if (!b) return;
    if (completed && b.total !== null) {
      b.bar.update(b.total, {
        label: b.label,
        done: formatSize(b.total),
        size: formatSize(b.total),
      });
    }
    b.bar.stop();
    this.#bar = null;
  }

  #newBar(known: boolean): cliProgress.SingleBar {
    const io = this.#io;
    // cli-progress writes to a Node stream; this one forwards to the CLI's stderr.
    const stream = {
      isTTY: true,
      columns: this.#opts.columns ?? 80,
      write(s: string) {
        io.err(s);
        return true;
      },
    };
    return new cliProgress.SingleBar({
      stream: stream as unknown as NodeJS.WritableStream,
      fps: this.#opts.fps ?? 10,
      format: known ? KNOWN_FORMAT : UNKNOWN_FORMAT,
      barCompleteChar: "\u2588",
      barIncompleteChar: "\u2591",
      barsize: 24,
      hideCursor: false,
      gracefulExit: false,
    });
  }
}
