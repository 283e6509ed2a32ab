/**
 * The one throttle for byte progress (an image download's `progress_bytes`), used where each
 * update costs something: the agent's task changes (each one is reported to the control
 * plane and written to its store) and the control plane worker's task writes.
 *
 * Rule (issue 7, "Image cache"): publish an update when it is the first, the last
 * (`done_bytes === total_bytes`), at least {@link PROGRESS_MIN_INTERVAL_MS} after the last
 * published one, or when it enters a new {@link PROGRESS_STEP_PERCENT} % step of a known
 * total. So a download causes at most 2 + 100 / 5 + 4 per second updates, however fast it
 * runs and however small its chunks.
 *
 * @module
 */
import type { ProgressBytes } from "./api/tasks.ts";

/** Shortest interval between published updates, ms (at most ~4 a second). */
export const PROGRESS_MIN_INTERVAL_MS = 250;
/** Every crossing of a multiple of this percentage of the total is published. */
export const PROGRESS_STEP_PERCENT = 5;

/** Decides which byte-progress updates to publish (see the module doc). */
export class ProgressThrottle {
  #clock: () => number;
  #minIntervalMs: number;
  #last: { at: number; p: ProgressBytes } | null = null;

  /**
   * @param clock milliseconds, monotonic enough for intervals (tests inject one)
   * @param minIntervalMs default {@link PROGRESS_MIN_INTERVAL_MS}
   */
  constructor(clock: () => number, minIntervalMs = PROGRESS_MIN_INTERVAL_MS) {
    this.#clock = clock;
    this.#minIntervalMs = minIntervalMs;
  }

  /** True when `p` is to be published; it then counts as the last published update. */
  offer(p: ProgressBytes): boolean {
    const now = this.#clock();
    const last = this.#last;
    const publish = last === null ||
      p.total_bytes !== last.p.total_bytes ||
      (p.total_bytes !== null && p.done_bytes === p.total_bytes &&
        last.p.done_bytes !== p.done_bytes) ||
      now - last.at >= this.#minIntervalMs ||
      step(p) > step(last.p);
    if (publish && (last === null || !sameProgress(last.p, p))) {
      this.#last = { at: now, p: { ...p } };
      return true;
    }
    return false;
  }

  /** Forgets the last published update (a new step begins: its first update is published). */
  reset(): void {
    this.#last = null;
  }
}

/** The {@link PROGRESS_STEP_PERCENT} % step `p` is in (0 when the total is unknown). */
function step(p: ProgressBytes): number {
  if (!p.total_bytes) return 0;
  return Math.floor((p.done_bytes * 100) / p.total_bytes / PROGRESS_STEP_PERCENT);
}

/** True when `a` and `b` are the same figures (both may be null). */
export function sameProgress(a: ProgressBytes | null, b: ProgressBytes | null): boolean {
  if (a === null || b === null) return a === b;
  return a.done_bytes === b.done_bytes && a.total_bytes === b.total_bytes;
}
