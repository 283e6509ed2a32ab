/**
 * Pool `disk` pressure (spec 001 "Node-pressure detection": "disk — per-pool, scan-driven
 * (15%, single scan default)"): a scan finding less than `threshold_percent` of the pool's
 * filesystem free counts as low; `consecutive_required` low scans in a row set the condition
 * (default 1), the first scan above the threshold clears it. A disabled condition is always
 * clear. The scheduler is to skip instances under disk pressure (`pressure.disk.under_pressure`
 * on the pool record).
 *
 * Settings: `placement.pressure.disk.{enabled,threshold_percent,consecutive_required}`.
 *
 * @module
 */
import type { PressureCondition } from "../../shared/api/nodes.ts";
import type { ApiConfig } from "../config.ts";

/** Settings of the disk condition (`placement.pressure.disk`). */
export type DiskPressureConfig = ApiConfig["placement"]["pressure"]["disk"];

/** A clear condition. */
const CLEAR: PressureCondition = {
  under_pressure: false,
  consecutive: 0,
  since: null,
  available_percent: null,
};

/** The disk-pressure settings of `cfg`. */
export function diskPressureConfig(cfg: ApiConfig): DiskPressureConfig {
  return cfg.placement.pressure.disk;
}

/**
 * The disk condition after a scan finding `availableBytes` free of `totalBytes`, from the
 * previous condition `prev` (absent: clear) at time `now` (ISO). `available_percent` is
 * rounded to 0.1. Pure.
 *
 * @example
 * ```ts
 * nextDiskPressure(null, 10, 100, cfg, t); // 10 % free < 15 %: under_pressure, since t
 * ```
 */
export function nextDiskPressure(
  prev: PressureCondition | null | undefined,
  availableBytes: number,
  totalBytes: number,
  cfg: DiskPressureConfig,
  now: string,
): PressureCondition {
  const p = prev ?? CLEAR;
  const percent = totalBytes > 0 ? Math.round((availableBytes / totalBytes) * 1000) / 10 : null;
  if (!cfg.enabled || percent === null || percent >= cfg.threshold_percent) {
    return { ...CLEAR, available_percent: percent };
  }
  const consecutive = p.consecutive + 1;
  const set = p.under_pressure || consecutive >= cfg.consecutive_required;
  return {
    under_pressure: set,
    consecutive,
    since: set ? (p.since ?? now) : null,
    available_percent: percent,
  };
}
