/**
 * Byte-size formatting for the agent's messages (agent/images.ts, agent/download.ts).
 *
 * @module
 */

/** `1536` → `1.5 KiB`; bytes below 1 KiB as `N bytes` (binary units, one decimal). */
export function formatBytes(n: number): string {
  const units = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
  if (n < 1024) return `${n} bytes`;
  let v = n / 1024;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v.toFixed(1)} ${units[i]}`;
}
