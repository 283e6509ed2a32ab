/**
 * Human durations for flags (`90s`, `10m`, `1h30m`, `2d`) and ages for tables (`20s`, `5m`, `7d`).
 *
 * @module
 */

const UNIT_SECONDS = { d: 86400, h: 3600, m: 60, s: 1 } as const;
const DURATION_RE = /^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$/;

/**
 * Parses a duration into whole seconds. Accepts unit components in decreasing order, each at
 * most once (`1d2h3m4s`, `1h30m`, `90s`), or a bare non-negative integer meaning seconds.
 *
 * @returns the number of seconds, or `null` when `text` is not a valid duration
 * @example
 * ```ts
 * parseDuration("1h30m"); // 5400
 * parseDuration("10x");   // null
 * ```
 */
export function parseDuration(text: string): number | null {
  const s = text.trim();
  if (/^\d+$/.test(s)) return safe(Number(s));
  const m = DURATION_RE.exec(s);
  if (!m || s === "") return null;
  const [, d, h, min, sec] = m;
  const total = Number(d ?? 0) * UNIT_SECONDS.d + Number(h ?? 0) * UNIT_SECONDS.h +
    Number(min ?? 0) * UNIT_SECONDS.m + Number(sec ?? 0);
  return safe(total);
}

function safe(n: number): number | null {
  return Number.isSafeInteger(n) ? n : null;
}

/** Formats whole seconds compactly: `0s`, `45s`, `10m`, `1h30m`, `2d3h`. */
export function formatDuration(seconds: number): string {
  let rest = Math.max(0, Math.floor(seconds));
  if (rest === 0) return "0s";
  let out = "";
  for (const [unit, size] of Object.entries(UNIT_SECONDS)) {
    const n = Math.floor(rest / size);
    if (n > 0) out += `${n}${unit}`;
    rest -= n * size;
  }
  return out;
}

/**
 * The age of `since` relative to `now`, in the single largest unit, kubectl-style:
 * `20s`, `5m`, `3h`, `7d`. Future timestamps (clock skew) render as `0s`.
 */
export function formatAge(since: Date | string, now: Date | number = Date.now()): string {
  const from = typeof since === "string" ? Date.parse(since) : since.getTime();
  const to = typeof now === "number" ? now : now.getTime();
  if (Number.isNaN(from)) return "-";
  const secs = Math.max(0, Math.floor((to - from) / 1000));
  if (secs < 60) return `${secs}s`;
  if (secs < 3600) return `${Math.floor(secs / 60)}m`;
  if (secs < 86400) return `${Math.floor(secs / 3600)}h`;
  return `${Math.floor(secs / 86400)}d`;
}
