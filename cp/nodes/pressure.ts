/**
 * Node-pressure detection (spec 001 "Node-pressure detection"): per node, `memory` (available
 * vs total memory) and `system_disk` (free vs total of the root filesystem), both from
 * heartbeats. A heartbeat with less than `threshold_percent` free counts as low; after
 * `consecutive_required` low heartbeats in a row the condition is set, and the first healthy
 * heartbeat clears it (`placement.pressure.<kind>`). A disabled condition is always clear.
 * Pressured nodes take no new VMs (cp/scheduler.ts).
 *
 * @module
 */
import type { NodePressure, NodeResources, PressureCondition } from "../../shared/api/nodes.ts";
import type { ApiConfig } from "../config.ts";

/** A clear condition. */
export const CLEAR: PressureCondition = {
  under_pressure: false,
  consecutive: 0,
  since: null,
  available_percent: null,
};

/** Both conditions clear. */
export const NO_PRESSURE: NodePressure = { memory: CLEAR, system_disk: CLEAR };

function step(
  prev: PressureCondition,
  available: number,
  total: number,
  cfg: ApiConfig["placement"]["pressure"]["memory"],
  now: string,
): PressureCondition {
  const percent = total > 0 ? Math.round((available / total) * 1000) / 10 : null;
  if (!cfg.enabled || percent === null) return { ...CLEAR, available_percent: percent };
  if (percent >= cfg.threshold_percent) return { ...CLEAR, available_percent: percent };
  const consecutive = prev.consecutive + 1;
  const set = prev.under_pressure || consecutive >= cfg.consecutive_required;
  return {
    under_pressure: set,
    consecutive,
    since: set ? (prev.since ?? now) : null,
    available_percent: percent,
  };
}

/**
 * The pressure state after a heartbeat reporting `r`, from the previous state `prev`
 * (absent: clear). Pure.
 *
 * @example
 * ```ts
 * let p = nextPressure(undefined, lowMemory, cfg, t); // consecutive 1, not yet set
 * p = nextPressure(p, lowMemory, cfg, t); p = nextPressure(p, lowMemory, cfg, t); // set
 * ```
 */
export function nextPressure(
  prev: NodePressure | undefined | null,
  r: NodeResources,
  cfg: ApiConfig["placement"]["pressure"],
  now: string,
): NodePressure {
  const p = prev ?? NO_PRESSURE;
  return {
    memory: step(p.memory, r.memory_available_mib, r.memory_total_mib, cfg.memory, now),
    system_disk: step(
      p.system_disk,
      r.system_disk_available_bytes,
      r.system_disk_total_bytes,
      cfg.system_disk,
      now,
    ),
  };
}

/** The conditions set on `p` (`memory`, `system_disk`). */
export function pressuredKinds(p: NodePressure | undefined | null): (keyof NodePressure)[] {
  if (!p) return [];
  return (["memory", "system_disk"] as const).filter((k) => p[k].under_pressure);
}
