/**
 * Timers a test moves by hand (cp/controllers/workqueue.ts `Timers`): nothing fires until
 * {@link ManualTimers.advance}, so loops driven by them run step by step without sleeps.
 *
 * @module
 */
import type { Timers } from "../cp/controllers/workqueue.ts";

/** Timers that fire only when the test advances them (in due order). */
export class ManualTimers implements Timers {
  #now = 0;
  #seq = 0;
  #due = new Map<number, { at: number; fn: () => void }>();

  setTimeout(fn: () => void, ms: number): unknown {
    const id = ++this.#seq;
    this.#due.set(id, { at: this.#now + ms, fn });
    return id;
  }

  clearTimeout(handle: unknown): void {
    this.#due.delete(handle as number);
  }

  /** Moves time forward `ms` and fires what came due, earliest first. */
  advance(ms: number): void {
    this.#now += ms;
    const due = [...this.#due].filter(([, t]) => t.at <= this.#now)
      .sort((a, b) => a[1].at - b[1].at);
    for (const [id, t] of due) {
      this.#due.delete(id);
      t.fn();
    }
  }

  /** The manual clock, ms since the start. */
  get now(): number {
    return this.#now;
  }

  /** Timers waiting to fire. */
  get pending(): number {
    return this.#due.size;
  }
}
