/**
 * The node monitor loop: nodes whose last heartbeat is older than
 * `nodes.stale_threshold_seconds` flip `ready → unreachable` (logged); they return to `ready`
 * on their next heartbeat (spec: troubleshooting "Node flips ready -> unreachable").
 *
 * @module
 */
import type { CpContext } from "./context.ts";
import { markStaleNodes } from "./nodes.ts";

/** A running monitor. */
export interface NodeMonitor {
  /** Stops the loop; resolves after the tick in progress (if any) ends. */
  stop(): Promise<void>;
}

/** How often the monitor checks, ms: a quarter of the threshold, between 250 ms and 5 s. */
export function monitorIntervalMs(staleThresholdSeconds: number): number {
  return Math.min(5000, Math.max(250, (staleThresholdSeconds * 1000) / 4));
}

/**
 * Starts the monitor loop: {@link markStaleNodes} every {@link monitorIntervalMs} of the
 * stale threshold; a failed tick is logged and the loop goes on. `stop()` waits for the
 * tick in progress.
 */
export function startNodeMonitor(ctx: CpContext): NodeMonitor {
  let stopped = false;
  let timer: ReturnType<typeof setTimeout> | undefined;
  let current: Promise<void> = Promise.resolve();
  const tick = () => {
    current = markStaleNodes(ctx)
      .then(() => undefined)
      .catch((e) => ctx.log.error("node monitor tick failed", { err: e }))
      .finally(() => {
        if (!stopped) {
          timer = setTimeout(tick, monitorIntervalMs(ctx.cfg.nodes.stale_threshold_seconds));
        }
      });
  };
  timer = setTimeout(tick, monitorIntervalMs(ctx.cfg.nodes.stale_threshold_seconds));
  return {
    async stop() {
      stopped = true;
      clearTimeout(timer);
      await current;
    },
  };
}
