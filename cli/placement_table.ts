/**
 * The `vm create --dry-run` rendering of a placement decision (shared/api/placement.ts): a
 * header line naming the pool, the algorithm and the winner, then one row per candidate with
 * its verdict, score, what it holds of CPU (vCPUs), memory (MiB) and disk before the
 * placement, and why it was rejected.
 *
 * @module
 */
import type { PlacementDecision } from "../shared/api/placement.ts";
import { formatBytes, renderTable } from "./render.ts";

/** The decision as text. */
export function renderPlacement(d: PlacementDecision): string {
  const head = d.node
    ? `placement: pool ${d.pool}, ${d.algorithm}: would place on ${d.node}\n`
    : `placement: pool ${d.pool}, ${d.algorithm}: no eligible node\n`;
  const rows = d.candidates.map((c) => {
    const u = c.utilization;
    const disk = u.disk_used_bytes === null || u.disk_total_bytes === null
      ? "-"
      : `${formatBytes(u.disk_used_bytes)}/${formatBytes(u.disk_total_bytes)}`;
    return [
      c.node,
      c.winner ? "winner" : c.eligible ? "eligible" : "rejected",
      c.score === null ? "-" : c.score.toFixed(1),
      `${u.cpu_used}/${u.cpu_total}`,
      `${u.memory_used_mib}/${u.memory_total_mib}`,
      disk,
      String(u.vm_count),
      c.reasons.join("; "),
    ];
  });
  return head + renderTable(
    ["node", "verdict", "score", "cpu", "memory_mib", "disk", "vms", "rejected_because"],
    rows,
  );
}
